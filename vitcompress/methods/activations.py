"""Calibration activations the methods read: attention/MLP inputs per block, per-head outputs.

``block_inputs`` runs the model with each block's attention and MLP (the family's ``parts``)
temporarily replaced by a recording wrapper (restored afterwards) and yields, per batch, the
normalised input of every attention and MLP. ``head_outputs`` recomputes one attention's per-head
contributions to the residual stream from such an input (for the fused ``qkv`` layout of timm's
``Attention`` and ``PrunedAttention``: ``[q | k | v]``, head-major; a family with another layout
overrides ``Family.head_outputs``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..families import Family, family_of
from ..families.base import replace_module
from ..layers import head_outputs, qkv_heads

__all__ = ["block_inputs", "cosine_from_gram", "head_outputs", "qkv_heads", "redundancy_weight"]


class _Tap(nn.Module):
    def __init__(self, module: nn.Module, store: list):
        super().__init__()
        self.module = module
        self.store = store

    def forward(self, x, *args, **kwargs):
        self.store.append(x.detach())
        return self.module(x, *args, **kwargs)


@contextlib.contextmanager
def _tapped(model: nn.Module, family: Family | None = None):
    parts = (family or family_of(model)).parts(model)
    attn_in = [[] for _ in parts]
    mlp_in = [[] for _ in parts]
    saved = [(model.get_submodule(p.attn), model.get_submodule(p.mlp)) for p in parts]
    try:
        for p, (a, m), ai, mi in zip(parts, saved, attn_in, mlp_in):
            replace_module(model, p.attn, _Tap(a, ai))
            replace_module(model, p.mlp, _Tap(m, mi))
        yield attn_in, mlp_in
    finally:
        for p, (a, m) in zip(parts, saved):
            replace_module(model, p.attn, a)
            replace_module(model, p.mlp, m)


def block_inputs(
    model: nn.Module, loader, family: Family | None = None
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per batch: (attention inputs, MLP inputs), one [B, N, D] tensor per block (``family``: the
    model's, when the caller already knows it; else asked with ``family_of``)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for x, _ in loader:
            with _tapped(model, family) as (attn_in, mlp_in), torch.no_grad():
                model(x.to(device))
            yield [a[0] for a in attn_in], [m[0] for m in mlp_in]
    finally:
        model.train(was)


def cosine_from_gram(g: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarities from a Gram matrix ``g[..., i, j] = <a_i, a_j>``."""
    d = g.diagonal(dim1=-2, dim2=-1).clamp_min(eps).sqrt()
    return g / (d[..., :, None] * d[..., None, :])


def redundancy_weight(g: torch.Tensor) -> torch.Tensor:
    """1 - mean |cosine similarity| of each channel to the *other* channels of its set.

    ``g`` is a Gram matrix [..., C, C] over calibration activations; returns [..., C] in [0, 1]
    (1: orthogonal to every other channel; 0: a copy, up to sign and scale, of all of them).
    """
    c = cosine_from_gram(g).abs()
    n = c.shape[-1]
    if n < 2:
        return torch.ones(c.shape[:-1], dtype=c.dtype, device=c.device)
    off = c.sum(-1) - c.diagonal(dim1=-2, dim2=-1)
    return (1 - off / (n - 1)).clamp(0, 1)
