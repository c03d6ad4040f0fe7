"""Runtime keep rate: one ONNX graph whose token keep rate is a second input.

``export_onnx(..., runtime_keep=True)`` (CLI ``--runtime-keep``) exports a token-reduced model with
the inputs ``pixel_values [batch, 3, height, width]`` and ``keep_rate [1]`` (float32), so that a
deployment trades accuracy for speed without re-exporting. Every reducing block of the schedule
keeps

    K = ceil(a * n / 1000),  a = round(1000 * keep_rate) clipped to [1, 1000]  (EViT: [1, 999])

of the ``n`` patch tokens entering it: the input *replaces* the keep rate of every reducing block
(as ``vitcompress.tokens.set_keep`` does), whatever the schedule's own rates were; the schedule
still decides *which* blocks reduce. ``rate=R`` schedules keep ``keep_rate`` in every block from
their start block. EViT always appends its fused token in such a graph (rates are capped at
0.999; at 1.0 a static EViT would not fuse). ToMe merges a count of pairs, not a fraction, and is
refused. The rounding to 1/1000 is the one static schedules use (``tokens.schedule.keep_fraction``),
so the graph at rate ``r`` equals the PyTorch model after ``set_keep(model, r)`` exactly.

How: the reducers compute ``K`` from the tensor with ``.item()`` and ``torch._check(1 <= K <= n)``
(``tokens.schedule.runtime_keep_count``); ``torch.export`` turns ``K`` into an unbacked symbol and
the ONNX ``TopK`` takes its ``K`` from a computation on the ``keep_rate`` input. Later token counts
are those symbols, so the graph stays exact at every image size of a dynamic-size export.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitcompress.errors import VitCompressError

KEEP_INPUT = "keep_rate"
KEEP_SHAPE = (1,)
#: Reducers whose amount is a keep fraction (the ones a runtime keep rate can drive).
RUNTIME_METHODS = ("topk", "topk-vpa", "evit", "etps")
#: Second keep rate of the parity check (the first is the schedule's own); 0.8 if that is 0.5.
PARITY_SECOND_KEEP = 0.5
RULE = (
    "K = ceil(a * n / 1000) patch tokens kept of n in every reducing block, "
    "a = round(1000 * keep_rate) clipped to [1, 1000] (evit: [1, 999])"
)


def check_runtime_keep(model: nn.Module):
    """The model's token schedule, or a one-line error when a runtime keep rate cannot drive it."""
    from vitcompress.tokens import schedule_of

    sched = schedule_of(model)
    if sched is None:
        raise VitCompressError(
            "--runtime-keep needs a token-reduced model and this one has no token schedule; "
            "apply one first (vitcompress tokens ... --method topk-vpa) or export without --runtime-keep"
        )
    if sched.kind == "merge" or sched.method not in RUNTIME_METHODS:
        raise VitCompressError(
            f"--runtime-keep does not apply to {sched.method} (it merges a fixed number of token pairs per "
            f"block, not a fraction); export it without --runtime-keep or use {', '.join(RUNTIME_METHODS)}"
        )
    return sched


def schedule_keep(model: nn.Module) -> float:
    """Keep rate of the first reducing block of the model's schedule."""
    from vitcompress.tokens import schedule_of

    red = next(r for r in model.blocks.reducers if r is not None)
    keep = red.keep if red.keep is not None else 1.0 - schedule_of(model).rate
    return float(keep)


def parity_keeps(model: nn.Module) -> list[float]:
    """The two keep rates the parity check runs: the schedule's own, then 0.5 (0.8 if that is 0.5)."""
    own = round(schedule_keep(model), 3)
    return [own, PARITY_SECOND_KEEP if own != PARITY_SECOND_KEEP else 0.8]


def keep_tensor(keep: float) -> torch.Tensor:
    """The ``keep_rate`` input for a keep rate: ``float32 [1]``."""
    return torch.tensor([float(keep)], dtype=torch.float32)


class RuntimeKeep(nn.Module):
    """``forward(pixel_values, keep_rate)``: the wrapped token-reduced model with every reducer's
    keep rate taken from ``keep_rate`` (``[1]`` float) for this call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_runtime_keep(model)
        self.model = model
        self.train(model.training)

    def forward(self, pixel_values: torch.Tensor, keep_rate: torch.Tensor) -> torch.Tensor:
        reducers = [r for r in self.model.blocks.reducers if r is not None]
        for r in reducers:
            r.runtime_keep = keep_rate
        try:
            return self.model(pixel_values)
        finally:
            for r in reducers:
                r.runtime_keep = None


def with_keep(model: nn.Module, keep: float) -> nn.Module:
    """A copy of ``model`` whose reducers all keep ``keep`` (the PyTorch reference of a runtime-keep
    graph fed ``keep_rate = keep``)."""
    from vitcompress.tokens import set_keep

    ref = copy.deepcopy(model)
    set_keep(ref, keep)
    return ref


def metadata() -> dict:
    """The ``export.runtime_keep`` metadata entry: input name, shape, dtype and rule."""
    return {"input": KEEP_INPUT, "shape": list(KEEP_SHAPE), "dtype": "float32", "rule": RULE}


def feeds(keep: float | None) -> dict:
    """Extra ONNX Runtime feeds for a keep rate (empty for a graph without the input)."""
    return {} if keep is None else {KEEP_INPUT: keep_tensor(keep).numpy()}


__all__ = [
    "KEEP_INPUT",
    "KEEP_SHAPE",
    "RULE",
    "RUNTIME_METHODS",
    "RuntimeKeep",
    "check_runtime_keep",
    "feeds",
    "keep_tensor",
    "metadata",
    "parity_keeps",
    "schedule_keep",
    "with_keep",
]
