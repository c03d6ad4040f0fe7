"""The process group of a ``torchrun`` job: this process's rank, world size and local rank.

Training, evaluation and the width-then-depth recipe all ask the same three questions; outside a
process group every answer is the single-process one (rank 0 of 1).
"""

from __future__ import annotations

import os

import torch


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
