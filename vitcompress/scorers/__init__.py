"""How important each element of each group is.

A scorer is a callable ``scorer(model, groups, *, loader, seed, progress) -> list[Tensor]``
returning one score tensor of ``group.shape`` per group (higher = more important, >= 0).
Scorers are registered in ``SCORERS``; ``vitcompress prune --importance NAME`` picks one.
"""

from __future__ import annotations

from ..registry import Registry

SCORERS: Registry = Registry("scorer")

from . import magnitude, random, taylor  # noqa: E402,F401  (explicit registration below)

SCORERS.register("l1")(magnitude.l1)
SCORERS.register("l2")(magnitude.l2)
SCORERS.register("magnitude")(magnitude.l1)
SCORERS.register("taylor")(taylor.taylor)
SCORERS.register("random")(random.random_scores)


def needs_data(name: str) -> bool:
    """Whether the scorer reads calibration images."""
    return bool(getattr(SCORERS.get(name), "needs_data", False))
