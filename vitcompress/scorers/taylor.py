"""First-order Taylor importance on the parameters: how much the loss moves when an element goes.

Removing an element sets its parameter slices ``S`` to zero. With ``g_b`` the gradient of the mean
cross-entropy of calibration batch ``b`` (``gradients.batch_gradients``; true labels or the model's
own predictions), the three weight formulations differ in where the absolute value (or square) is
taken:

- ``taylor-sum``: ``|sum_S w * G|`` with ``G = sum_b g_b``: the first-order loss change of scaling
  the whole element by a gate, on all calibration images at once. Positive and negative
  contributions (parameters, batches) cancel.
- ``taylor-abs``: ``sum_S sum_b |w * g_b|``: each parameter's first-order contribution, per batch,
  in absolute value, then summed over the element.
- ``taylor-sq``: ``sum_S sum_b (w * g_b)^2``: the same with squares (Molchanov et al. 2019, "Taylor
  FO on weights").
"""

from __future__ import annotations

import torch
from torch import nn

from ..groups import Group, reduce_group
from .gradients import batch_gradients, member_params


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _accumulate(
    model: nn.Module, groups: list[Group], loader, labels, progress, fn, desc, max_memory=None, micro_batch=None
) -> dict[str, torch.Tensor]:
    """``sum_b fn(w * g_b)`` per parameter (the parameters the groups read), in at least float32,
    accumulated in place."""
    names = member_params(groups)
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n], dtype=torch.promote_types(params[n].dtype, torch.float32)) for n in names}
    for grads in batch_gradients(model, loader, names, labels, progress, desc, max_memory, micro_batch):
        with torch.no_grad():
            for n in names:
                g = grads[n].to(acc[n].dtype)  # the .grad buffer itself when float32: reused in place
                g.mul_(params[n].detach())
                acc[n] += fn(g) if fn is not _identity else g
    return acc


def taylor_sum(
    model: nn.Module,
    groups: list[Group],
    *,
    loader=None,
    labels: str = "auto",
    progress: bool = False,
    max_memory: float | None = None,
    micro_batch: int | None = None,
    **_,
) -> list[torch.Tensor]:
    """|sum over the element's slices of w * G|, G = dL/dw summed over all calibration batches."""
    acc = _accumulate(
        model, groups, loader, labels, progress, _identity, "taylor-sum scores", max_memory, micro_batch
    )  # w * G
    return [reduce_group(g, _identity, acc).abs() for g in groups]


def taylor_abs(
    model: nn.Module,
    groups: list[Group],
    *,
    loader=None,
    labels: str = "auto",
    progress: bool = False,
    max_memory: float | None = None,
    micro_batch: int | None = None,
    **_,
) -> list[torch.Tensor]:
    """sum over the element's slices of sum over batches of |w * dL_b/dw|."""
    acc = _accumulate(model, groups, loader, labels, progress, torch.abs, "taylor-abs scores", max_memory, micro_batch)
    return [reduce_group(g, _identity, acc) for g in groups]


def taylor_sq(
    model: nn.Module,
    groups: list[Group],
    *,
    loader=None,
    labels: str = "auto",
    progress: bool = False,
    max_memory: float | None = None,
    micro_batch: int | None = None,
    **_,
) -> list[torch.Tensor]:
    """sum over the element's slices of sum over batches of (w * dL_b/dw)^2."""
    acc = _accumulate(
        model, groups, loader, labels, progress, torch.square, "taylor-sq scores", max_memory, micro_batch
    )
    return [reduce_group(g, _identity, acc) for g in groups]


for _f in (taylor_sum, taylor_abs, taylor_sq):
    _f.needs_data = True
