"""Pruning methods beyond the one-shot scorer-driven prune: IHP, GOHSP and AMAP.

Each method is registered in ``METHODS`` as a ``Method`` (runner, options dataclass, supported
granularities). ``vitcompress.prune(..., method=NAME, method_options={...})`` and
``vitcompress prune --method NAME --method-opt KEY=VALUE`` dispatch here. Every method reuses the
core through the model's family: groups (``Family.groups``), the blocks' modules (``Family.parts``),
budget and alignment (``budget.select``) and slicing (``slicers.slice_model``, run by the pruner); what it adds is how elements are scored and how the
weights are prepared (trained, scaled, folded) before slicing.
"""

from __future__ import annotations

from ..registry import Registry
from . import amap, gohsp, ihp
from .base import Method, MethodOptions, MethodOutput, parse_option_pairs

METHODS: Registry = Registry("method")

METHODS.register("ihp")(
    Method(
        "ihp",
        ihp.run,
        ihp.IHPOptions,
        ihp.KIND_SUPPORT,
        "learnable q/k/v (+MLP, embedding) row scales with L1 sparse training; coupled groups; scales folded",
    )
)
METHODS.register("gohsp")(
    Method(
        "gohsp",
        gohsp.run,
        gohsp.GOHSPOptions,
        gohsp.KIND_SUPPORT,
        "head graph + stationary distribution ranking, heterogeneous budgets, ADMM, hard prune",
    )
)
METHODS.register("amap")(
    Method(
        "amap",
        amap.run,
        amap.AMAPOptions,
        amap.KIND_SUPPORT,
        "similarity-weighted channel indicator, even removal across heads, resource penalty, reweight",
    )
)

ONESHOT = "oneshot"
CHOICES = (ONESHOT, *METHODS.list())


def get(name: str) -> Method:
    """The registered method ``name`` (a one-line error with suggestions when unknown)."""
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "MethodOptions", "MethodOutput", "ONESHOT", "CHOICES", "get", "parse_option_pairs"]
