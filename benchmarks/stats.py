"""Uncertainty of the bench's ratios: 95% confidence intervals from the interleaved rounds.

Every round times all variants back to back, so round ``i`` gives one paired ratio
``r_i = median(variant's passes in round i) / median(baseline's passes in round i)``; machine drift
between rounds cancels in each ``r_i``. The reported latency ratio is the median of the ``r_i``
(``timing.paired_ratio``); its interval is a percentile bootstrap over rounds: resample the ``r_i``
with replacement ``BOOTSTRAP`` times (fixed seed, so a report is reproducible from its raw samples),
take the median of each resample, and keep the 2.5th and 97.5th percentiles.

Speedup (``1 / ratio``) and efficiency (``(1 - ratio) / (1 - MACs ratio)``) are monotone functions
of the ratio, and percentile intervals carry through monotone functions, so their intervals are the
ratio's ends mapped (and swapped where the function decreases).

With few rounds the interval is coarse: with 5 distinct round ratios it is their minimum and
maximum. ``--until-stable`` adds rounds until every interval is within ``STABLE`` of its ratio.
"""

from __future__ import annotations

import numpy as np

#: bootstrap resamples and their seed
BOOTSTRAP = 2000
SEED = 0
#: a ratio whose 95% interval reaches further than this fraction of it is flagged ``wide-ci``
WIDE = 0.05
#: ``--until-stable`` stops adding rounds when every interval is within this fraction of its ratio
STABLE = 0.02


def round_ratios(rounds_ms: list, base_rounds_ms: list) -> np.ndarray:
    """Per-round paired ratios: round median / baseline round median."""
    return np.asarray(
        [float(np.median(a)) / float(np.median(b)) for a, b in zip(rounds_ms, base_rounds_ms)], dtype=np.float64
    )


def bootstrap_ci(values, level: float = 0.95, n: int = BOOTSTRAP, seed: int = SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values`` (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to bootstrap")
    if v.size == 1 or np.all(v == v[0]):
        return float(v[0]), float(v[0])
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n, v.size))
    meds = np.median(v[idx], axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(meds, [a, 1.0 - a])
    return float(lo), float(hi)


def ratio_ci(rounds_ms: list, base_rounds_ms: list) -> tuple[float, float]:
    """95% interval of the paired latency ratio (``timing.paired_ratio``) over the rounds."""
    return bootstrap_ci(round_ratios(rounds_ms, base_rounds_ms))


def speedup_ci(ci: tuple[float, float]) -> tuple[float, float]:
    """The speedup's interval from the latency ratio's (1 / ratio decreases: the ends swap)."""
    return 1.0 / ci[1], 1.0 / ci[0]


def efficiency_ci(macs_ratio: float, ci: tuple[float, float]) -> tuple[float, float] | None:
    """The efficiency's interval from the latency ratio's; None where efficiency is undefined."""
    if macs_ratio >= 1.0 - 1e-9:
        return None
    return (1.0 - ci[1]) / (1.0 - macs_ratio), (1.0 - ci[0]) / (1.0 - macs_ratio)


def relative_width(value: float, ci) -> float:
    """How far the interval reaches from ``value``, as a fraction of it (the larger side)."""
    if ci is None or value == 0:
        return 0.0
    return max(value - ci[0], ci[1] - value) / abs(value)


def fmt_ci(value, ci, fmt: str = ".3f") -> str:
    """``0.812 [0.801, 0.825]``; ``-`` for a missing value."""
    if value is None:
        return "-"
    if ci is None:
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"
