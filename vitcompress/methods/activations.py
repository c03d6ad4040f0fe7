"""Calibration activations the methods read: attention/MLP inputs per block, per-head outputs.

``block_inputs`` runs the model with each block's ``attn`` and ``mlp`` temporarily replaced by a
recording wrapper (restored afterwards) and yields, per batch, the normalised input of every
attention and MLP. ``head_outputs`` recomputes one attention's per-head contributions to the
residual stream from such an input, for timm's ``Attention`` and ``PrunedAttention`` alike (same
fused ``qkv`` layout: ``[q | k | v]``, head-major).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import attention_dims


class _Tap(nn.Module):
    def __init__(self, module: nn.Module, store: list):
        super().__init__()
        self.module = module
        self.store = store

    def forward(self, x, *args, **kwargs):
        self.store.append(x.detach())
        return self.module(x, *args, **kwargs)


@contextlib.contextmanager
def _tapped(model: nn.Module):
    attn_in = [[] for _ in model.blocks]
    mlp_in = [[] for _ in model.blocks]
    saved = [(b.attn, b.mlp) for b in model.blocks]
    try:
        for i, b in enumerate(model.blocks):
            b.attn = _Tap(b.attn, attn_in[i])
            b.mlp = _Tap(b.mlp, mlp_in[i])
        yield attn_in, mlp_in
    finally:
        for b, (a, m) in zip(model.blocks, saved):
            b.attn, b.mlp = a, m


def block_inputs(model: nn.Module, loader) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per batch: (attention inputs, MLP inputs), one [B, N, D] tensor per block."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        for x, _ in loader:
            with _tapped(model) as (attn_in, mlp_in), torch.no_grad():
                model(x.to(device))
            yield [a[0] for a in attn_in], [m[0] for m in mlp_in]
    finally:
        model.train(was)


def qkv_heads(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [B, H, N, qk] (after q/k norms) and v [B, H, N, v] of an attention for input ``x``."""
    h, qk, v, _ = attention_dims(attn)
    B, N, _ = x.shape
    q, k, vv = attn.qkv(x).split([h * qk, h * qk, h * v], dim=-1)
    q = q.reshape(B, N, h, qk).transpose(1, 2)
    k = k.reshape(B, N, h, qk).transpose(1, 2)
    vv = vv.reshape(B, N, h, v).transpose(1, 2)
    return attn.q_norm(q), attn.k_norm(k), vv


def head_outputs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each head's contribution to the attention output (before the proj bias): [H, B, N, D].

    Summing over heads and adding ``proj.bias`` gives the attention's output.
    """
    h, qk, v, scale = attention_dims(attn)
    q, k, vv = qkv_heads(attn, x)
    a = F.softmax((q * scale) @ k.transpose(-2, -1), dim=-1)
    o = a @ vv  # [B, H, N, v]
    w = attn.proj.weight.reshape(-1, h, v)  # [D, H, v]: column h*v+d
    return torch.einsum("bhnv,dhv->hbnd", o, w)


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
