"""The exact reference a sliced model must match: the original with removed structures zeroed.

For heads, q/k dims, v dims, MLP neurons and blocks, zeroing the group's slices (the family's
``groups``) gives a model whose output equals the sliced model's output exactly (up to float
rounding).

Embedding channels are different: a LayerNorm's mean and variance are taken over all channels, so
zeroing channels alone changes the statistics. The reference for embedding pruning is therefore
defined as: removed channels zeroed everywhere **and every norm on the residual stream
normalising over the kept channels only** (``layers.KeptChannelLayerNorm`` for a LayerNorm; a
family supplies its own replacements through ``Family.reference_norms``), which is what the
sliced model computes.
"""

from __future__ import annotations

import copy

from torch import nn

from .families import family_of
from .families.base import replace_module
from .groups import zero_removed
from .layers import KeptChannelLayerNorm
from .plan import Plan

__all__ = ["KeptChannelLayerNorm", "mask_model"]


def mask_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with everything the plan removes zeroed (see module docstring)."""
    ref = copy.deepcopy(model).eval()
    fam = family_of(ref)
    zero_removed(dict(ref.named_parameters()), fam.groups(ref, fam.kinds), plan)
    for path, norm in fam.reference_norms(ref, plan).items():
        replace_module(ref, path, norm)
    return ref
