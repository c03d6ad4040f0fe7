"""The calibration pass behind the gradient scorers: labels, and one gradient per batch.

Targets: with ``labels='auto'`` the dataset's labels are used when the dataset has exactly as many
classes as the model's classifier (``'true'``), otherwise the unpruned model's own predictions
(argmax, ``'pseudo'``), so any model can be scored on any images. ``labels='true'`` or
``'pseudo'`` forces one of them.

``batch_gradients`` yields, for every calibration batch ``b``, the gradient ``g_b`` of that batch's
mean cross-entropy with respect to the requested parameters (model in eval mode: no dropout or
drop-path; parameters, ``requires_grad`` flags and the train/eval mode are restored afterwards).

Memory: the backward pass keeps every activation of the images it runs on, so a batch is run in
micro-batches whose gradients are accumulated (each micro-batch's summed cross-entropy divided by
the batch size: the same ``g_b``, up to float summation order). ``micro_batch_size`` sizes them
to a memory budget (``max_memory`` GiB; default: see ``micro_batch_size``), from the bytes one
image's forward pass saves for backward (measured with ``saved_tensors_hooks``), the parameters
and their gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitCompressError
from ..groups import Group
from ..logits import logits_of
from ..progress import tqdm

LABEL_MODES = ("auto", "true", "pseudo")


def label_source(model: nn.Module, loader, labels: str = "auto") -> str:
    """``'true'`` or ``'pseudo'``: which targets a gradient scorer uses for this model and data."""
    if labels not in LABEL_MODES:
        raise VitCompressError(f"labels must be auto, true or pseudo, got {labels!r}")
    if labels != "auto":
        return labels
    n_cls = getattr(getattr(loader, "dataset", None), "num_classes", None)
    return "true" if n_cls is not None and n_cls == getattr(model, "num_classes", None) else "pseudo"


def member_params(groups: Iterable[Group]) -> list[str]:
    """Names of the parameters any group reads, in first-seen order."""
    return list(dict.fromkeys(m.param for g in groups for m in g.members))


GIB = 2**30
#: activations one backward pass may keep on the CPU by default (GiB)
DEFAULT_ACTIVATIONS_GIB = 0.5


def free_memory(device: torch.device) -> int:
    """Bytes free now: on a CUDA device its free memory, else ``MemAvailable`` of the host (Linux;
    elsewhere 8 GiB is assumed)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


def saved_bytes_per_image(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes the forward pass of one image saves for backward (distinct storages), parameters excluded."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in param_ptrs:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits_of(model(x[:1]))
    return sum(seen.values())


def micro_batch_size(
    model: nn.Module, x: torch.Tensor, wanted: Iterable[torch.Tensor], max_memory: float | None = None
) -> int:
    """The most images per backward pass that fit ``max_memory`` GiB: the budget less the parameters
    and the gradients kept, over one image's saved activations (times 1.5 for the temporaries of
    backward); at least 1. Default budget: those fixed bytes plus ``DEFAULT_ACTIVATIONS_GIB`` of
    activations on the CPU (more images per pass barely speed a CPU up), at most half the free
    memory; on a GPU half its free memory."""
    fixed = sum(p.numel() * p.element_size() for p in model.parameters())
    fixed += sum(p.numel() * p.element_size() for p in wanted)  # their gradients
    if max_memory is not None:
        budget = max_memory * GIB
    else:
        budget = free_memory(x.device) / 2
        if x.device.type == "cpu":
            budget = min(budget, fixed + DEFAULT_ACTIVATIONS_GIB * GIB)
    per_image = 1.5 * max(saved_bytes_per_image(model, x), 1)
    return max(1, int((budget - fixed) // per_image))


def batch_gradients(
    model: nn.Module,
    loader,
    names: Iterable[str],
    labels: str = "auto",
    progress: bool = False,
    desc: str = "scores",
    max_memory: float | None = None,
    micro_batch: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Per calibration batch: ``{name: d(mean CE of the batch)/d(param)}`` for the named parameters.

    Each batch runs in micro-batches of ``micro_batch`` images (default: ``micro_batch_size`` for
    ``max_memory`` GiB, measured on the first batch) whose gradients are accumulated.
    The yielded tensors are the parameters' ``.grad`` buffers and are overwritten by the next
    batch: use (or copy) them before asking for the next one.
    """
    if loader is None:
        raise VitCompressError("this scorer needs calibration data; pass data=digits|mnist10k|DIR", params=["data"])
    use_true = label_source(model, loader, labels) == "true"
    params = dict(model.named_parameters())
    wanted = {n: params[n] for n in names}
    was_training = model.training
    req = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
            p.grad = None
        ref = next(iter(wanted.values())) if wanted else next(model.parameters())
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x = x.to(device=ref.device, dtype=ref.dtype)
            if micro_batch is None:
                micro_batch = micro_batch_size(model, x, wanted.values(), max_memory)
            for p in wanted.values():
                p.grad = None
            n_images = len(x)
            for i in range(0, n_images, micro_batch):
                logits = logits_of(model(x[i : i + micro_batch]))
                target = y[i : i + micro_batch].to(ref.device) if use_true else logits.detach().argmax(-1)
                if micro_batch >= n_images:  # the whole batch in one pass: its mean, as before
                    loss = F.cross_entropy(logits, target)
                else:  # this micro-batch's share of the batch's mean
                    loss = F.cross_entropy(logits, target, reduction="sum") / n_images
                loss.backward()
                del logits, loss
            yield {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in wanted.items()}
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(req[n])
        model.train(was_training)
