"""The process group of a ``torchrun`` job: this process's rank, world size and local rank.

Training, evaluation and the width-then-depth recipe all ask the same three questions; outside a
process group every answer is the single-process one (rank 0 of 1).
"""

from __future__ import annotations

import os
import re

import torch

from .errors import VitCompressError


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process; (0, 1, 0) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return 0, 1, 0


def init_distributed() -> bool:
    """Initialise the process group from torchrun's environment (NCCL on GPU, gloo on CPU).

    Returns True when this call created the group (the caller should destroy it at the end).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend=backend)
    return True


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist_info()[1] > 1:
        torch.distributed.barrier()


def launch_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 outside torchrun), readable before
    the process group exists: the rank that writes outputs (and holds their locks)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def check_device(device: str | None, param: str = "device") -> None:
    """One-line error unless ``device`` is None (automatic), ``cpu``, or a CUDA device this machine
    has (``cuda``, ``cuda:N``)."""
    if device is None:
        return
    m = re.fullmatch(r"(cpu|cuda)(?::(\d{1,4}))?", str(device).strip())
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise VitCompressError(f"unknown {param} {device!r}; use cpu, cuda or cuda:N", params=[param])
    if m.group(1) == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(m.group(2) or 0)
        if index >= n:
            have = f"this machine has {n} CUDA GPU(s)" if n else "this machine has no CUDA GPU"
            raise VitCompressError(f"{param} {device!r} is not available ({have}); use cpu", params=[param])
