"""How a plain ViT's tensors are cut: one block at a time, then everything outside the blocks.

The row/column layout is the one ``groups.py`` couples (fused ``qkv`` rows ``[q | k | v]``,
head-major); it is written out here a second time on purpose, so that the tests comparing a
sliced model with the masked reference check both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...layers import attention_dims
from ...plan import LayerPlan
from ..base import take

# Parameters outside the blocks and the axis that runs along the residual stream (None: copied whole).
STEM_AXES = {
    "patch_embed.proj.weight": 0,
    "patch_embed.proj.bias": 0,
    "patch_embed.norm.weight": 0,
    "patch_embed.norm.bias": 0,
    "cls_token": 2,
    "reg_token": 2,
    "dist_token": 2,
    "pos_embed": 2,
    "norm_pre.weight": 0,
    "norm_pre.bias": 0,
    "norm.weight": 0,
    "norm.bias": 0,
    "fc_norm.weight": 0,
    "fc_norm.bias": 0,
    "head.weight": 1,
    "head.bias": None,
    "head_dist.weight": 1,
    "head_dist.bias": None,
}


def qkv_rows(num_heads: int, qk_dim: int, v_dim: int, lp: LayerPlan) -> tuple[list[int], list[int]]:
    """Kept rows of the fused qkv projection, and kept input columns of ``proj``.

    Layout of the qkv rows: q of head h dim d at ``h*qk + d``, k at ``H*qk + h*qk + d``, v at
    ``2*H*qk + h*v + d``; ``proj`` column of head h value dim d at ``h*v + d``.
    """
    q = [h * qk_dim + d for h, dims in zip(lp.heads, lp.qk) for d in dims]
    k = [num_heads * qk_dim + i for i in q]
    v = [2 * num_heads * qk_dim + h * v_dim + d for h, dims in zip(lp.heads, lp.v) for d in dims]
    proj_cols = [h * v_dim + d for h, dims in zip(lp.heads, lp.v) for d in dims]
    return q + k + v, proj_cols


def slice_block(block: nn.Module, lp: LayerPlan, embed: list[int]) -> dict[str, torch.Tensor]:
    """State dict entries (block-relative names) of one block cut to ``lp`` and ``embed``."""
    h, qk, v, _ = attention_dims(block.attn)
    rows, proj_cols = qkv_rows(h, qk, v, lp)
    attn, mlp = block.attn, block.mlp
    out: dict[str, torch.Tensor] = {}
    for name in ("norm1", "norm2"):
        norm = getattr(block, name)
        out[f"{name}.weight"] = take(norm.weight, 0, embed)
        if norm.bias is not None:
            out[f"{name}.bias"] = take(norm.bias, 0, embed)
    out["attn.qkv.weight"] = take(take(attn.qkv.weight, 0, rows), 1, embed)
    if attn.qkv.bias is not None:
        out["attn.qkv.bias"] = take(attn.qkv.bias, 0, rows)
    if not isinstance(attn.q_norm, nn.Identity):
        if any(list(d) != list(range(qk)) for d in lp.qk):
            raise ValueError("q/k dims of a model with qk_norm cannot be pruned exactly")
        for n, t in list(attn.q_norm.state_dict(prefix="attn.q_norm.").items()) + list(
            attn.k_norm.state_dict(prefix="attn.k_norm.").items()
        ):
            out[n] = t.detach().clone()
    out["attn.proj.weight"] = take(take(attn.proj.weight, 1, proj_cols), 0, embed)
    if attn.proj.bias is not None:
        out["attn.proj.bias"] = take(attn.proj.bias, 0, embed)
    out["mlp.fc1.weight"] = take(take(mlp.fc1.weight, 0, lp.mlp), 1, embed)
    if mlp.fc1.bias is not None:
        out["mlp.fc1.bias"] = take(mlp.fc1.bias, 0, lp.mlp)
    out["mlp.fc2.weight"] = take(take(mlp.fc2.weight, 1, lp.mlp), 0, embed)
    if mlp.fc2.bias is not None:
        out["mlp.fc2.bias"] = take(mlp.fc2.bias, 0, embed)
    for name in ("ls1", "ls2"):
        ls = getattr(block, name)
        if hasattr(ls, "gamma"):
            out[f"{name}.gamma"] = take(ls.gamma, 0, embed)
    return out


def slice_stem(model: nn.Module, embed: list[int], stem_axis: Callable[[str], int | None]) -> dict[str, torch.Tensor]:
    """Every state entry outside the blocks (embeddings, prefix tokens, final norms, classifier
    heads) cut to ``embed`` channels along the axis ``stem_axis`` names (None: copied whole)."""
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name.startswith("blocks."):
            continue
        axis = stem_axis(name)
        out[name] = t.detach().clone() if axis is None else take(t, axis, embed)
    return out
