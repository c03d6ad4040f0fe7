"""Runtime keep rate: one ONNX graph whose token keep rate is a second, integer input.

``export_onnx(..., runtime_keep=True)`` (CLI ``--runtime-keep``) exports a token-reduced model with
the inputs ``pixel_values [batch, 3, height, width]`` and ``keep_permille [1]`` (int64), so that a
deployment trades accuracy for speed without re-exporting. Every reducing block of the schedule
keeps

    K = ceil(a * n / 1000),  a = keep_permille clipped to [1, 1000]  (EViT: [1, 999])

of the ``n`` patch tokens entering it: the input *replaces* the keep rate of every reducing block
(as ``vitcompress.tokens.set_keep(model, a / 1000)`` does), whatever the schedule's own rates were;
the schedule still decides *which* blocks reduce. ``rate=R`` schedules keep ``a / 1000`` in every
block from their start block. EViT always appends its fused token in such a graph (rates are capped
at 0.999; at 1.0 a static EViT would not fuse). ToMe merges a count of pairs, not a fraction, and is
refused. Static schedules round their keep rates to 1/1000 too (``tokens.arithmetic.keep_fraction``),
so the graph fed ``a`` equals the PyTorch model after ``set_keep(model, a / 1000)`` exactly.

Why an integer: TensorRT takes a ``TopK``'s ``K`` only from an INT32/INT64 *shape tensor*, a value
computed from shapes, constants and integer inputs that the engine reads on the host. ``K`` here is
integer arithmetic on ``keep_permille`` and the token count, so the input is such a shape-tensor input
of the engine: its range goes into the optimisation profile (``IOptimizationProfile.set_shape_input``,
``keep_profile``) and its value is bound on the host at run time (``exporters.trt_runner``).

How: the reducers compute ``K`` from the tensor with ``.item()`` and ``torch._check(1 <= K <= n)``
(``tokens.arithmetic.runtime_keep_count``); ``torch.export`` turns ``K`` into an unbacked symbol and
the ONNX ``TopK`` takes its ``K`` from a computation on the ``keep_permille`` input. Later token
counts are those symbols, so the graph stays exact at every image size of a dynamic-size export.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from vitcompress.errors import VitCompressError
from vitcompress.tokens import schedule_of, set_keep
from vitcompress.tokens.arithmetic import keep_fraction

from .profiles import Profile

KEEP_INPUT = "keep_permille"
KEEP_SHAPE = (1,)
KEEP_DTYPE = "int64"
#: Reducers whose amount is a keep fraction (the ones a runtime keep rate can drive).
RUNTIME_METHODS = ("topk", "topk-vpa", "evit", "etps")
#: Second keep rate of the parity check (the first is the schedule's own); 0.8 if that is 0.5.
PARITY_SECOND_KEEP = 0.5
RULE = (
    "K = ceil(a * n / 1000) patch tokens kept of n in every reducing block, "
    "a = keep_permille clipped to [1, 1000] (evit: [1, 999])"
)


def check_runtime_keep(model: nn.Module):
    """The model's token schedule, or a one-line error when a runtime keep rate cannot drive it."""
    sched = schedule_of(model)
    if sched is None:
        raise VitCompressError(
            "runtime_keep needs a token-reduced model and this one has no token schedule; "
            "apply one first (a topk-vpa token reduction) or export without runtime_keep",
            params=["runtime_keep"],
        )
    if sched.kind == "merge" or sched.method not in RUNTIME_METHODS:
        raise VitCompressError(
            f"runtime_keep does not apply to {sched.method} (it merges a fixed number of token pairs per "
            f"block, not a fraction); export it without runtime_keep or use {', '.join(RUNTIME_METHODS)}",
            params=["runtime_keep"],
        )
    return sched


def _reducers(model: nn.Module) -> list:
    return [r for r in model.blocks.reducers if r is not None]


def schedule_keep(model: nn.Module) -> float:
    """Keep rate of the first reducing block of the model's schedule."""
    red = _reducers(model)[0]
    keep = red.keep if red.keep is not None else 1.0 - schedule_of(model).rate
    return float(keep)


def permille(keep: float) -> int:
    """A keep rate as the integer ``keep_permille`` input (rounded to 1/1000 like static schedules)."""
    a, c = keep_fraction(keep)
    return a * (1000 // c)


def keep_profile(model: nn.Module) -> Profile:
    """MIN:OPT:MAX of ``keep_permille`` for an engine: 1, the schedule's own rate, the highest rate
    every reducer takes (1000; 999 with EViT)."""
    top = min(r.max_keep_permille for r in _reducers(model))
    return Profile(1, min(permille(schedule_keep(model)), top), top)


def parity_keeps(model: nn.Module) -> list[float]:
    """The two keep rates the parity check runs: the schedule's own, then 0.5 (0.8 if that is 0.5)."""
    own = permille(schedule_keep(model)) / 1000
    return [own, PARITY_SECOND_KEEP if own != PARITY_SECOND_KEEP else 0.8]


def keep_tensor(keep: float) -> torch.Tensor:
    """The ``keep_permille`` input for a keep rate: ``int64 [1]``."""
    return torch.tensor([permille(keep)], dtype=torch.int64)


class RuntimeKeep(nn.Module):
    """``forward(pixel_values, keep_permille)``: the wrapped token-reduced model with every reducer's
    keep rate taken from ``keep_permille`` (``[1]`` int64, in 1/1000) for this call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_runtime_keep(model)
        self.model = model
        self.train(model.training)

    def forward(self, pixel_values: torch.Tensor, keep_permille: torch.Tensor) -> torch.Tensor:
        reducers = _reducers(self.model)
        for r in reducers:
            r.runtime_keep = keep_permille
        try:
            return self.model(pixel_values)
        finally:
            for r in reducers:
                r.runtime_keep = None


def with_keep(model: nn.Module, keep: float) -> nn.Module:
    """A copy of ``model`` whose reducers all keep ``keep`` (the PyTorch reference of a runtime-keep
    graph fed ``keep_permille = permille(keep)``)."""
    ref = copy.deepcopy(model)
    set_keep(ref, keep)
    return ref


def metadata(model: nn.Module) -> dict:
    """The ``export.runtime_keep`` metadata entry: input name, shape, dtype, range and rule."""
    return {
        "input": KEEP_INPUT,
        "shape": list(KEEP_SHAPE),
        "dtype": KEEP_DTYPE,
        "profile": keep_profile(model).to_dict(),
        "rule": RULE,
    }


def feeds(keep: float | None) -> dict:
    """Extra ONNX Runtime feeds for a keep rate (empty for a graph without the input)."""
    return {} if keep is None else {KEEP_INPUT: np.array([permille(keep)], dtype=np.int64)}


__all__ = [
    "KEEP_DTYPE",
    "KEEP_INPUT",
    "KEEP_SHAPE",
    "RULE",
    "RUNTIME_METHODS",
    "RuntimeKeep",
    "check_runtime_keep",
    "feeds",
    "keep_profile",
    "keep_tensor",
    "metadata",
    "parity_keeps",
    "permille",
    "schedule_keep",
    "with_keep",
]
