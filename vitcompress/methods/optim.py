"""A few optimisation steps on calibration images: the training stage shared by the methods.

``optimise`` cycles over a (fixed-order) calibration loader for ``steps`` steps, minimising
cross-entropy plus an optional method penalty (IHP's L1 on the scales, GOHSP's ADMM proximity term,
AMAP's resource term), and calls ``after_step`` after each step (ADMM's Z/U updates).

Targets follow the scorers' rule: with ``labels='auto'`` the dataset's labels are used when the
dataset has as many classes as the model's classifier, otherwise the predictions of ``reference``
(the unpruned input model, frozen) are the targets. The model runs in eval mode (no dropout or
drop-path), so a stage is reproducible for a seed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitCompressError
from ..logits import logits_of
from ..progress import tqdm


def uses_true_labels(model: nn.Module, loader, labels: str = "auto") -> bool:
    n_cls = getattr(loader.dataset, "num_classes", None)
    return labels == "true" or (labels == "auto" and n_cls == model.num_classes)


def optimise(
    model: nn.Module,
    loader,
    steps: int,
    optimizer: torch.optim.Optimizer,
    *,
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    labels: str = "auto",
    reference: nn.Module | None = None,
    progress: bool = False,
    desc: str = "optimise",
) -> dict:
    """Run ``steps`` optimiser steps; returns ``{'task_loss': [first, last], 'penalty': [first, last]}``."""
    if loader is None or len(loader) == 0:
        raise VitCompressError(
            "this method trains on calibration images; pass data=digits|mnist10k|DIR", params=["data"]
        )
    use_true = uses_true_labels(model, loader, labels)
    if not use_true and reference is None:
        reference = model
    batches = list(loader)
    targets = []
    if not use_true:
        was = reference.training
        reference.eval()
        with torch.no_grad():
            rdev = next(reference.parameters()).device
            targets = [logits_of(reference(x.to(rdev))).argmax(-1).cpu() for x, _ in batches]
        reference.train(was)
    device = next(model.parameters()).device
    model.eval()
    hist = {"task_loss": [], "penalty": []}
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        i = step % len(batches)
        x, y = batches[i]
        y = y if use_true else targets[i]
        x, y = x.to(device), y.to(device)
        task = F.cross_entropy(logits_of(model(x)), y)
        pen = penalty() if penalty is not None else None
        loss = task if pen is None else task + pen
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(step)
        if step in (0, steps - 1):
            hist["task_loss"].append(float(task.detach()))
            hist["penalty"].append(float(pen.detach()) if pen is not None else 0.0)
    return hist


def frozen_except(model: nn.Module, train_weights: bool) -> list[nn.Parameter]:
    """Set ``requires_grad`` on the model's own parameters; return them when they train."""
    ps = list(model.parameters())
    for p in ps:
        p.requires_grad_(train_weights)
    return ps if train_weights else []
