"""The exact reference a sliced model must match: the original with removed structures zeroed.

For heads, q/k dims, v dims, MLP neurons and blocks, zeroing the group's slices (``groups.py``)
gives a model whose output equals the sliced model's output exactly (up to float rounding).

Embedding channels are different: a LayerNorm's mean and variance are taken over all channels, so
zeroing channels alone changes the statistics. The reference for embedding pruning is therefore
defined as: removed channels zeroed everywhere **and every LayerNorm on the residual stream
normalising over the kept channels only** (``KeptChannelLayerNorm``), which is what the sliced
model computes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .groups import Group, build_groups
from .plan import Plan


class KeptChannelLayerNorm(nn.Module):
    """LayerNorm over a subset of channels; the other channels are output as zero."""

    def __init__(self, norm: nn.LayerNorm, kept: list[int]):
        super().__init__()
        self.norm = norm
        self.register_buffer("kept", torch.as_tensor(kept, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.index_select(-1, self.kept)
        w = self.norm.weight.index_select(0, self.kept) if self.norm.weight is not None else None
        b = self.norm.bias.index_select(0, self.kept) if self.norm.bias is not None else None
        y = F.layer_norm(xs, (len(self.kept),), w, b, self.norm.eps)
        out = torch.zeros_like(x)
        return out.index_copy(-1, self.kept, y)


def keep_masks(model: nn.Module, plan: Plan, group: Group) -> torch.Tensor:
    """Boolean tensor of ``group.shape``: True where the plan keeps the element."""
    keep = torch.zeros(group.shape, dtype=torch.bool)
    if group.kind == "embed":
        keep[plan.embed] = True
    elif group.kind == "depth":
        keep[plan.blocks] = True
    elif group.layer not in plan.blocks:
        pass  # block removed: nothing of it is kept
    else:
        lp = plan.layers[group.layer]
        if group.kind == "heads":
            keep[lp.heads] = True
        elif group.kind == "mlp":
            keep[lp.mlp] = True
        else:
            dims = lp.qk if group.kind == "qk" else lp.v
            for h, ds in zip(lp.heads, dims):
                keep[h, ds] = True
    return keep


def mask_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with everything the plan removes zeroed (see module docstring)."""
    ref = copy.deepcopy(model).eval()
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for g in build_groups(ref, ("heads", "qk", "v", "mlp", "embed", "depth")):
            drop = ~keep_masks(ref, plan, g).reshape(-1)
            if not drop.any():
                continue
            for m in g.members:
                t = params[m.param]
                if m.dim is None:
                    if drop[m.element]:
                        t.zero_()
                    continue
                rows = m.index[drop].reshape(-1).to(t.device)
                t.index_fill_(m.dim, rows, 0.0)
        if len(plan.embed) < ref.embed_dim:
            for mod in list(ref.modules()):
                for child_name, child in list(mod.named_children()):
                    if isinstance(child, nn.LayerNorm) and child.normalized_shape == (ref.embed_dim,):
                        setattr(mod, child_name, KeptChannelLayerNorm(child, plan.embed))
    return ref
