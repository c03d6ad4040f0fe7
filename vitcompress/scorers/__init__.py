"""How important each element of each group is.

A scorer is a callable ``scorer(model, groups, *, loader, seed, labels, progress) -> list[Tensor]``
returning one score tensor of ``group.shape`` per group (higher = more important, >= 0).
Scorers are registered in ``SCORERS``; ``vitcompress prune --importance NAME`` picks one.
Each scorer's docstring states its formula; ``docs/methods.md`` (scorer study) compares them.
"""

from __future__ import annotations

from ..registry import Registry

SCORERS: Registry = Registry("scorer")

from . import gate, magnitude, random, taylor  # noqa: E402  (explicit registration below)
from .gradients import label_source  # noqa: E402

SCORERS.register("taylor-sum")(taylor.taylor_sum)
SCORERS.register("taylor-abs")(taylor.taylor_abs)
SCORERS.register("taylor-sq")(taylor.taylor_sq)
SCORERS.register("taylor-act")(gate.taylor_act)
SCORERS.register("fisher")(gate.fisher)
SCORERS.register("l1")(magnitude.l1)
SCORERS.register("l2")(magnitude.l2)
SCORERS.register("random")(random.random_scores)

# names kept for users: ``magnitude`` is ``l1``; ``taylor`` is the Taylor formulation the scorer
# study measured best (see docs/methods.md)
ALIASES = {"magnitude": "l1", "taylor": "taylor-abs"}
for _alias, _target in ALIASES.items():
    SCORERS.register(_alias)(SCORERS.get(_target))


def needs_data(name: str) -> bool:
    """Whether the scorer reads calibration images."""
    return bool(getattr(SCORERS.get(name), "needs_data", False))


def labels_used(name: str, model, loader, labels: str = "auto") -> str | None:
    """``'true'`` or ``'pseudo'``: the targets scorer ``name`` uses on ``loader`` (None: no data)."""
    return label_source(model, loader, labels) if needs_data(name) and loader is not None else None
