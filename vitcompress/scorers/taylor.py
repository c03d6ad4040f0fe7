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
) -> list[torch.Tensor]:
    """``sum_b sum_S fn(w * g_b)`` per group (float64), accumulated per group in place, batch by
    batch: the products ``w * g_b`` are formed in the gradient buffers (at least float32), so no
    parameter-sized accumulator is kept beside the gradients."""
    names = member_params(groups)
    params = dict(model.named_parameters())
    total: list[torch.Tensor] | None = None
    for grads in batch_gradients(model, loader, names, labels, progress, desc, max_memory, micro_batch):
        with torch.no_grad():
            prod = {}
            for n in names:
                g = grads[n].to(torch.promote_types(params[n].dtype, torch.float32))  # the buffer itself if float32
                prod[n] = g.mul_(params[n].detach())
            per_group = [reduce_group(g, fn, prod) for g in groups]
            if total is None:
                total = per_group
            else:
                for a, v in zip(total, per_group):
                    a += v
            del prod
    return total if total is not None else [torch.zeros(g.shape, dtype=torch.float64) for g in groups]


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
    sums = _accumulate(  # sum_S w * G
        model, groups, loader, labels, progress, _identity, "taylor-sum scores", max_memory, micro_batch
    )
    return [t.abs() for t in sums]


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
    return _accumulate(model, groups, loader, labels, progress, torch.abs, "taylor-abs scores", max_memory, micro_batch)


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
    return _accumulate(
        model, groups, loader, labels, progress, torch.square, "taylor-sq scores", max_memory, micro_batch
    )


for _f in (taylor_sum, taylor_abs, taylor_sq):
    _f.needs_data = True
