"""Calibration search: the largest token-pruning amount whose accuracy drop stays within a tolerance.

No training. The model runs on ``images`` held-out images (the ``val`` split of ``data``) without
token reduction, then at amounts (pruning rates, or merges for ``tome``) on a coarse grid and a fine
grid just above the last amount that passed. An amount passes when its score is at most
``tolerance`` (absolute, 0.01 = one point) below the unreduced model's: top-1 on the labels
(``metric="top1"``), or top-1 agreement with the unreduced model's predictions
(``metric="agreement"``, label-free; the unreduced model scores 1.0). The result is the
largest passing amount (accuracy is not strictly monotone in the rate, so the whole coarse grid up
to ``max_amount`` is scanned rather than bisected), and the table of every amount tried. When the
largest passing amount removes no MACs (on few tokens the first token pruned per block can cost more
than the tolerance), the search is a one-line error naming the tolerance that would accept the smallest
amount that removes MACs, instead of a no-op schedule.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import check_fields, setting
from .data import DataConfig
from .datapipe import check_data, val_dataset
from .errors import VitCompressError
from .evaluate import check_classes
from .logits import logits_of
from .progress import tqdm
from .tokens.amount import macs_reduction, max_amount, with_amount
from .tokens.apply import apply_tokens, remove_tokens
from .tokens.schedule import TokenSchedule


@dataclass
class SearchConfig:
    """What the search measures on which images (the keyword arguments of ``search_amount``)."""

    data: str = setting("digits", "Calibration search: digits, mnist10k or an ImageFolder directory (val split).")
    images: int = setting(512, "Calibration search: held-out images.", ge=1, le=2**24)
    tolerance: float = setting(0.01, "Calibration search: allowed top-1 drop (0.01 = 1 point).", ge=0, le=1)
    metric: str = setting(
        "top1",
        "Calibration search: top1 on the labels, or agreement with the unreduced model's predictions.",
        choices=("top1", "agreement"),
    )

    def validate(self) -> SearchConfig:
        """One-line ``VitCompressError`` for a value out of range (see the fields) or missing data."""
        check_fields(self)
        check_data(self.data)
        return self


@dataclass
class SearchResult:
    schedule: TokenSchedule  # the chosen schedule
    amount: float  # its rate (or merges)
    baseline_top1: float  # top-1 without token reduction
    top1: float  # top-1 at the chosen amount
    macs_reduction: float  # MACs removed at the chosen amount
    images: int
    tolerance: float
    table: list[dict] = field(default_factory=list)  # every amount tried
    metric: str = "top1"  # what the tolerance applies to: top1 or agreement

    def to_dict(self) -> dict:
        return {
            "schedule": self.schedule.to_dict(),
            "amount": self.amount,
            "baseline_top1": self.baseline_top1,
            "top1": self.top1,
            "macs_reduction": self.macs_reduction,
            "images": self.images,
            "tolerance": self.tolerance,
            "metric": self.metric,
            "table": self.table,
        }

    def format(self) -> str:
        unit = "merges" if self.schedule.kind == "merge" else "rate"
        rows = [f"{unit:>7}  MACs removed   top-1  agreement    drop", "-" * 48]
        for r in self.table:
            rows.append(
                f"{r['amount']:7.3g}  {r['macs_reduction']:11.1%}  {r['top1']:6.2%}  {r['agreement']:9.2%}  "
                f"{r['drop']:+6.2%}" + ("  <- chosen" if r["amount"] == self.amount else "")
            )
        rows.append(
            f"chosen: {self.schedule.describe()} (top-1 {self.top1:.2%} vs {self.baseline_top1:.2%} "
            f"unreduced; {self.metric} drop within {self.tolerance:.2%} on {self.images} held-out images)"
        )
        return "\n".join(rows)


def held_out(model: nn.Module, data: str, images: int, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``images`` images of ``data``'s ``split`` in the model's geometry, as tensors."""
    if images < 1:
        raise VitCompressError(f"images must be at least 1, got {images}", params=["images"])
    ds = val_dataset(data, DataConfig.from_model(model), split)
    if len(ds) == 0:
        raise VitCompressError(
            f"data {data!r} split {split!r} is empty; point data at a folder with images", params=["data"]
        )
    n = min(images, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)))
    return torch.stack(xs), torch.as_tensor(ys)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Top-1 class of every image in ``x``, in batches of ``batch_size``."""
    return torch.cat([logits_of(model(x[i : i + batch_size])).argmax(-1) for i in range(0, len(x), batch_size)])


def search_amount(
    model: nn.Module,
    schedule: TokenSchedule,
    *,
    data: str = SearchConfig.data,
    images: int = SearchConfig.images,
    tolerance: float = SearchConfig.tolerance,
    metric: str = SearchConfig.metric,
    coarse: float | None = None,
    fine: float | None = None,
    batch_size: int = 128,
    progress: bool = False,
) -> SearchResult:
    """Search the largest amount of ``schedule``'s kind within ``tolerance`` top-1 of the unreduced model.

    ``metric`` is ``top1`` (accuracy on the labels) or ``agreement`` (top-1 agreement with the
    unreduced model's own predictions, which needs no labels: the unreduced model scores 1.0).

    ``model`` is a plain or token-reduced model; it is not changed (the search works on a copy and
    builds its schedules from ``schedule``). ``coarse``/``fine`` are the grid steps (defaults: 0.05/0.01 for rates,
    max(1, n/16) and 1 merges for ``tome``).
    """
    if not 0.0 <= tolerance <= 1.0:
        raise VitCompressError(
            f"tolerance={tolerance} is outside [0, 1]; use e.g. tolerance=0.01 for one point of top-1",
            params=["tolerance"],
        )
    if metric not in ("top1", "agreement"):
        raise VitCompressError(f"unknown search metric {metric!r}; use top1 or agreement")
    net = remove_tokens(copy.deepcopy(model)).eval()
    x, y = held_out(net, data, images)
    check_classes(net, int(y.max()) + 1, exact=False)
    ref = predict(net, x, batch_size)
    score = {"top1": lambda p: float((p == y).float().mean()), "agreement": lambda p: float((p == ref).float().mean())}[
        metric
    ]
    base = score(ref)
    top = max_amount(schedule, net)
    merge = schedule.kind == "merge"
    coarse = coarse or (max(1.0, float(int(top) // 8)) if merge else 0.05)
    fine = fine or (1.0 if merge else 0.01)
    table: dict[float, dict] = {}

    def run(amount: float) -> dict:
        amount = round(min(top, amount), 6)
        if amount not in table:
            s = with_amount(schedule, amount)
            pred = predict(apply_tokens(net, s), x, batch_size)
            acc = score(pred)
            table[amount] = {
                "amount": amount,
                "spec": s.spec,
                "macs_reduction": macs_reduction(net, s),
                "top1": float((pred == y).float().mean()),
                "agreement": float((pred == ref).float().mean()),
                "drop": acc - base,
                "passed": base - acc <= tolerance + 1e-12,
            }
        return table[amount]

    grid = [0.0]
    while grid[-1] + coarse < top - 1e-9:
        grid.append(round(grid[-1] + coarse, 6))
    grid.append(top)
    for a in tqdm(grid, desc="token search (coarse)", disable=not progress, leave=False):
        run(a)
    best = max(a for a, r in table.items() if r["passed"])
    a = best + fine
    while a < min(top, best + coarse) - 1e-9:
        run(a)
        a = round(a + fine, 6)
    best = max(a for a, r in table.items() if r["passed"])
    if table[best]["macs_reduction"] <= 0.0:
        raise _nothing_passed(table, base, tolerance, metric, len(x))
    chosen = with_amount(schedule, best)
    rows = [table[a] for a in sorted(table)]
    return SearchResult(
        chosen,
        best,
        float((ref == y).float().mean()),
        table[best]["top1"],
        table[best]["macs_reduction"],
        len(x),
        tolerance,
        rows,
        metric,
    )


def _nothing_passed(table: dict[float, dict], base: float, tolerance: float, metric: str, n: int) -> VitCompressError:
    """The error when no amount that removes MACs stays within the tolerance (the search would be a no-op).

    It names the smallest amount tried that removes MACs, its drop, and the tolerance that would accept it.
    """
    cutting = [table[a] for a in sorted(table) if table[a]["macs_reduction"] > 0.0]
    first = cutting[0]
    drop = base - first[metric]
    need = math.ceil(drop * 1000 - 1e-9) / 1000
    return VitCompressError(
        f"calibration search: no amount that removes MACs stays within tolerance={tolerance:g} of {metric} on {n} "
        f"images (the smallest tried, {first['spec']}, removes {first['macs_reduction']:.1%} of the MACs and drops "
        f"{metric} by {drop:.2%}); pass tolerance={need:g} or more, or choose the amount with flops_reduction",
        params=["tolerance", "flops_reduction"],
    )


__all__ = ["SearchConfig", "SearchResult", "search_amount", "held_out", "predict"]
