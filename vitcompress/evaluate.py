"""Evaluation: top-1, top-5, cross-entropy loss and agreement with a teacher's predictions.

Works single-process and inside a ``torchrun`` job: each rank evaluates a disjoint shard
(``indices[rank::world]``, no padding, so no image is counted twice) and the sums are all-reduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from .config import MAX_INT, check_number
from .data import SPLITS, DataConfig, check_teacher
from .datapipe import check_data, make_loader, num_classes_of, val_dataset
from .distributed import check_device, dist_info
from .errors import VitCompressError
from .logits import logits_of
from .progress import tqdm


@dataclass
class EvalResult:
    """Accuracy in [0, 1], mean cross-entropy, image count and (with a teacher) top-1 agreement."""

    top1: float
    top5: float
    loss: float
    images: int
    agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        s = f"top-1 {self.top1:.2%}  top-5 {self.top5:.2%}  loss {self.loss:.4f}  ({self.images} images)"
        if self.agreement is not None:
            s += f"  agreement with teacher {self.agreement:.2%}"
        return s


def check_classes(model: nn.Module, num_classes: int | None, what: str = "data", exact: bool = True) -> None:
    """One-line error when the data's classes are not the model's: labels are the data's class
    indices (an ImageFolder's sorted class folders), so label ``i`` means the model's class ``i``
    only when both have the same number of classes. A data set with more classes has labels the
    classifier cannot output; one with fewer trains and scores a classifier whose other outputs
    have no data, and its labels are usually not the classes the model was trained on. ``exact=False``
    (``num_classes`` is the largest label of a sample plus one) refuses only more classes."""
    mc = getattr(model, "num_classes", None)
    if num_classes is None or mc is None or num_classes == mc or (not exact and num_classes < mc):
        return
    raise VitCompressError(
        f"the {what} has {num_classes} classes but the model's classifier has {mc}; pass data with {mc} "
        f"classes or use a model with num_classes={num_classes}",
        params=["num_classes"],
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    teacher: nn.Module | None = None,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Top-1/top-5/loss of ``model`` over ``loader`` (and agreement with ``teacher``'s argmax).

    Inside an initialised process group the per-rank sums are all-reduced, so every rank returns
    the same numbers; give each rank a disjoint shard of the data.
    """
    ref = next(model.parameters())
    dev = torch.device(device) if device is not None else ref.device
    was = model.training
    model.eval()
    if teacher is not None:
        check_teacher(model, teacher)
        teacher.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=dev)  # n, top1, top5, loss, agree
    try:
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = logits_of(model(x)).float()
                t_logits = logits_of(teacher(x)).float() if teacher is not None else None
            if int(y.max()) >= logits.shape[-1]:
                raise VitCompressError(
                    f"the data has label {int(y.max())} but the model's classifier has {logits.shape[-1]} "
                    "classes; use a model with as many classes as the data"
                )
            k = min(5, logits.shape[-1])
            topk = logits.topk(k, dim=-1).indices
            sums[0] += len(y)
            sums[1] += (topk[:, 0] == y).sum()
            sums[2] += (topk == y[:, None]).any(-1).sum()
            sums[3] += F.cross_entropy(logits, y, reduction="sum")
            if t_logits is not None:
                sums[4] += (t_logits.argmax(-1) == topk[:, 0]).sum()
    finally:
        model.train(was)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl" and sums.device.type != "cuda":
            # a model evaluated on the CPU inside a GPU run (the pipeline's teacher row): NCCL reduces CUDA tensors only
            local = sums.to(f"cuda:{torch.cuda.current_device()}")
            torch.distributed.all_reduce(local)
            sums = local.cpu()
        else:
            torch.distributed.all_reduce(sums)
    n = max(1.0, float(sums[0]))
    return EvalResult(
        float(sums[1]) / n,
        float(sums[2]) / n,
        float(sums[3]) / n,
        int(sums[0]),
        float(sums[4]) / n if teacher is not None else None,
    )


def evaluate_data(
    model: nn.Module,
    data: str,
    *,
    split: str = "val",
    teacher: nn.Module | None = None,
    batch_size: int = 128,
    workers: int = 0,
    device: str | None = None,
    progress: bool = False,
    limit: int | None = None,
) -> EvalResult:
    """Evaluate on a dataset by name (``digits``, ``mnist10k``) or ImageFolder folder.

    ``limit`` evaluates the first ``limit`` images only (at least 1); ``batch_size`` at least 1,
    ``workers`` at least 0, ``device`` None, cpu or an existing CUDA device: anything else is a
    one-line ``VitCompressError`` before any image is read."""
    check_number("batch_size", batch_size, {"ge": 1, "le": 2**20}, integer=True)
    check_number("workers", workers, {"ge": 0, "le": 256}, integer=True)
    if limit is not None:
        check_number("limit", limit, {"ge": 1, "le": MAX_INT}, integer=True)
    if split not in SPLITS:
        raise VitCompressError(f"unknown split {split!r}; use {', '.join(SPLITS)}", params=["split"])
    check_device(device)
    check_data(data)
    if teacher is not None:
        check_teacher(model, teacher)
    ds = val_dataset(data, DataConfig.from_model(model), split)
    if len(ds) == 0:
        raise VitCompressError(
            f"data {data!r} split {split!r} is empty; point data at a folder with images", params=["data"]
        )
    check_classes(model, num_classes_of(ds))
    if limit:
        ds = Subset(ds, list(range(min(limit, len(ds)))))
    rank, world, _ = dist_info()
    loader = make_loader(ds, batch_size, train=False, rank=rank, world=world, workers=workers)
    if device is not None:
        model.to(device)
        if teacher is not None:
            teacher.to(device)
    return evaluate(model, loader, teacher=teacher, progress=progress and rank == 0)
