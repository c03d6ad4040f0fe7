"""One number per schedule: how hard it reduces, and the MACs it leaves.

The automatic rate controller and the calibration search move a single quantity, the *amount*:

* ``keep``/``rate`` schedules: the per-block pruning rate ``r`` (keep fraction ``1 - r``), applied
  at every block the schedule reduces at (a ``KEEP@BLOCKS`` schedule with several keep values
  becomes one keep value at the same blocks);
* ``merge`` schedules (``tome``): the merges per block ``r`` (a whole number).

``with_amount`` builds the schedule for an amount, ``macs_reduction`` counts what it removes
relative to the same model without token reduction, ``amount_for_reduction`` finds the smallest
amount that removes a target share of MACs (the counts fall monotonically in the amount),
``closest_amount`` the one whose reduction is nearest to it (comparisons at matched MACs), and
``amount_for_target`` that nearest amount checked to lie within 1.5 points of the target (the rule
of every ``--flops-reduction``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

from torch import nn

from ..errors import VitCompressError
from .counting import macs_with, patch_tokens
from .schedule import TokenSchedule

TOLERANCE = 0.015  # a MACs target lands within 1.5 points, as for width budgets (budget.TOLERANCE)
MAX_RATE = 0.999  # a keep fraction of 0.001: every reducer still keeps ceil(0.001 n) >= 1 token


def current_amount(schedule: TokenSchedule) -> float:
    """The amount a schedule runs at now (for a keep schedule: ``1 - min keep``)."""
    if schedule.kind == "merge":
        return float(schedule.merge)
    if schedule.kind == "rate":
        return float(schedule.rate)
    return 1.0 - min(schedule.keep.values())


def with_amount(schedule: TokenSchedule, amount: float) -> TokenSchedule:
    """A copy of ``schedule`` that reduces by ``amount`` (a rate, or merges for ``merge``)."""
    s = copy.deepcopy(schedule)
    if s.kind == "merge":
        s.merge = int(round(amount))
        s.spec = f"merge={s.merge}@{s.start}"
    elif s.kind == "rate":
        s.rate = float(amount)
        s.spec = f"rate={s.rate:g}@{s.start}"
    else:
        keep = round(1.0 - float(amount), 6)
        s.keep = {b: keep for b in s.keep}
        s.spec = f"{keep:g}@{','.join(str(b) for b in s.keep)}"
    return s


def macs_reduction(model: nn.Module, schedule: TokenSchedule, img_size: Sequence[int] | None = None) -> float:
    """Share of ``model``'s MACs (widths as they are, no token reduction) that ``schedule`` removes."""
    return 1.0 - macs_with(model, schedule, img_size) / macs_with(model, None, img_size)


def max_amount(schedule: TokenSchedule, model: nn.Module) -> float:
    """The largest meaningful amount: rate 0.999, or half the patch tokens as merges."""
    if schedule.kind == "merge":
        return float(patch_tokens(model) // 2)
    return MAX_RATE


def amount_for_reduction(
    model: nn.Module, schedule: TokenSchedule, target: float, img_size: Sequence[int] | None = None
) -> float:
    """Smallest amount whose schedule removes at least ``target`` of the MACs (bisection).

    Raises a one-line error when even the largest amount falls short.
    """
    if not 0.0 < target < 1.0:
        raise VitCompressError(f"target MACs reduction {target} is outside (0, 1); use e.g. 0.3")
    hi = max_amount(schedule, model)
    best = macs_reduction(model, with_amount(schedule, hi), img_size)
    if best < target:
        raise VitCompressError(
            f"schedule {schedule.describe()} removes at most {best:.1%} of the MACs, short of the target "
            f"{target:.1%}; reduce at more (or earlier) blocks or lower the target"
        )
    lo = 0.0
    if schedule.kind == "merge":
        lo_i, hi_i = 0, int(hi)
        while hi_i - lo_i > 1:
            mid = (lo_i + hi_i) // 2
            if macs_reduction(model, with_amount(schedule, mid), img_size) >= target:
                hi_i = mid
            else:
                lo_i = mid
        return float(hi_i)
    for _ in range(30):
        mid = (lo + hi) / 2
        if macs_reduction(model, with_amount(schedule, mid), img_size) >= target:
            hi = mid
        else:
            lo = mid
    return min(MAX_RATE, math.ceil(hi * 1000 - 1e-9) / 1000)  # keep fractions are exact to 1/1000


def amount_for_target(
    model: nn.Module, schedule: TokenSchedule, target: float, img_size: Sequence[int] | None = None
) -> float:
    """The amount whose MACs reduction is nearest ``target``, which must lie within 1.5 points of it.

    Token counts move in whole tokens, so on a model with few tokens the steps of the reduction can be
    coarse: when neither the step at or above the target nor the one below it lands within
    ``TOLERANCE``, a one-line error names both, as a width budget that cannot be met does.
    """
    amount = closest_amount(model, schedule, target, img_size)
    got = macs_reduction(model, with_amount(schedule, amount), img_size)
    if abs(got - target) > TOLERANCE + 1e-12:
        hi = amount_for_reduction(model, schedule, target, img_size)
        lo = max(0.0, hi - (1.0 if schedule.kind == "merge" else 0.001))
        near = sorted({round(macs_reduction(model, with_amount(schedule, a), img_size), 4) for a in (lo, hi)})
        raise VitCompressError(
            f"schedule {schedule.describe()} cannot remove within 1.5 points of {target:.1%} of the MACs: token "
            f"counts move in whole tokens and the nearest steps remove {' and '.join(f'{r:.2%}' for r in near)}; "
            f"pass flops_reduction={near[-1]:.4g}, or reduce at more (or earlier) blocks for finer steps",
            params=["flops_reduction", "schedule"],
        )
    return amount


def closest_amount(
    model: nn.Module, schedule: TokenSchedule, target: float, img_size: Sequence[int] | None = None
) -> float:
    """The amount whose MACs reduction is closest to ``target`` (for comparisons at matched MACs)."""
    hi = amount_for_reduction(model, schedule, target, img_size)
    lo = max(0.0, hi - (1.0 if schedule.kind == "merge" else 0.001))
    err = {a: abs(macs_reduction(model, with_amount(schedule, a), img_size) - target) for a in (lo, hi)}
    return min(err, key=err.get)
