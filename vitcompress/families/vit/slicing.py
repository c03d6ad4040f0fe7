"""How a ViT's tensors are cut: one block at a time, then everything outside the blocks.

The row/column layout is the one ``groups.py`` couples (fused ``qkv`` rows ``[q | k | v]``,
head-major; a parallel block's ``in_proj`` rows ``[mlp | q | k | v]``); it is written out here a
second time on purpose, so that the tests comparing a sliced model with the masked reference check
both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...plan import LayerPlan
from ..base import take
from .blocks import block_dims, fc1_names, fc1_rows, is_parallel

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
    # attention pooling (global_pool='map'): the latent query and the pool's input, output and MLP
    # follow the residual stream; its inner (head) width stays whole
    "attn_pool.latent": 2,
    "attn_pool.q.weight": 1,
    "attn_pool.q.bias": None,
    "attn_pool.kv.weight": 1,
    "attn_pool.kv.bias": None,
    "attn_pool.q_norm.weight": None,
    "attn_pool.q_norm.bias": None,
    "attn_pool.k_norm.weight": None,
    "attn_pool.k_norm.bias": None,
    "attn_pool.proj.weight": 0,
    "attn_pool.proj.bias": 0,
    "attn_pool.norm.weight": 0,
    "attn_pool.norm.bias": 0,
    "attn_pool.mlp.fc1.weight": 1,
    "attn_pool.mlp.fc1.bias": None,
    "attn_pool.mlp.fc2.weight": 0,
    "attn_pool.mlp.fc2.bias": 0,
}


def qkv_rows(num_heads: int, qk_dim: int, v_dim: int, lp: LayerPlan, offset: int = 0) -> tuple[list[int], list[int]]:
    """Kept rows of a fused q/k/v projection whose q rows start at ``offset``, and the kept output
    columns (``proj`` inputs) of the attention.

    Layout of the rows: q of head h dim d at ``offset + h*qk + d``, k at ``offset + H*qk + h*qk + d``,
    v at ``offset + 2*H*qk + h*v + d``; output column of head h value dim d at ``h*v + d``.
    """
    q = [offset + h * qk_dim + d for h, dims in zip(lp.heads, lp.qk) for d in dims]
    k = [num_heads * qk_dim + i for i in q]
    v = [offset + 2 * num_heads * qk_dim + h * v_dim + d for h, dims in zip(lp.heads, lp.v) for d in dims]
    cols = [h * v_dim + d for h, dims in zip(lp.heads, lp.v) for d in dims]
    return q + k + v, cols


def _copy(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in module.state_dict(prefix=prefix).items()}


def _norm(norm: nn.Module, prefix: str, kept: list[int]) -> dict[str, torch.Tensor]:
    """A norm's affine parameters at the kept channels (nothing for an Identity)."""
    return {f"{prefix}.{n}": take(t, 0, kept) for n, t in norm.named_parameters()}


def _qk_norms(q_norm: nn.Module, k_norm: nn.Module, prefix: str, lp: LayerPlan, qk: int) -> dict[str, torch.Tensor]:
    if isinstance(q_norm, nn.Identity):
        return {}
    if any(list(d) != list(range(qk)) for d in lp.qk):
        raise ValueError("q/k dims of a model with qk_norm cannot be pruned exactly")
    return {**_copy(q_norm, prefix + "q_norm."), **_copy(k_norm, prefix + "k_norm.")}


def slice_block(block: nn.Module, lp: LayerPlan, embed: list[int]) -> dict[str, torch.Tensor]:
    """State dict entries (block-relative names) of one block cut to ``lp`` and ``embed``."""
    if is_parallel(block):
        return _slice_parallel(block, lp, embed)
    h, qk, v, _, m = block_dims(block)
    rows, cols = qkv_rows(h, qk, v, lp)
    attn, mlp = block.attn, block.mlp
    out: dict[str, torch.Tensor] = {}
    for name in ("norm1", "norm2"):
        out.update(_norm(getattr(block, name), name, embed))
    out["attn.qkv.weight"] = take(take(attn.qkv.weight, 0, rows), 1, embed)
    if attn.qkv.bias is not None:
        out["attn.qkv.bias"] = take(attn.qkv.bias, 0, rows)
    out.update(_qk_norms(attn.q_norm, attn.k_norm, "attn.", lp, qk))
    out.update(_norm(attn.norm, "attn.norm", cols))
    out["attn.proj.weight"] = take(take(attn.proj.weight, 1, cols), 0, embed)
    if attn.proj.bias is not None:
        out["attn.proj.bias"] = take(attn.proj.bias, 0, embed)
    fc1 = lp.mlp + [m + j for j in lp.mlp] if fc1_rows(mlp) == 2 and fc1_names(mlp) == ("fc1",) else lp.mlp
    for name in fc1_names(mlp):
        fc = getattr(mlp, name)
        out[f"mlp.{name}.weight"] = take(take(fc.weight, 0, fc1), 1, embed)
        if fc.bias is not None:
            out[f"mlp.{name}.bias"] = take(fc.bias, 0, fc1)
    out.update(_norm(mlp.norm, "mlp.norm", lp.mlp))
    out["mlp.fc2.weight"] = take(take(mlp.fc2.weight, 1, lp.mlp), 0, embed)
    if mlp.fc2.bias is not None:
        out["mlp.fc2.bias"] = take(mlp.fc2.bias, 0, embed)
    for name in ("ls1", "ls2"):
        ls = getattr(block, name, None)
        if hasattr(ls, "gamma"):
            out[f"{name}.gamma"] = take(ls.gamma, 0, embed)
    return out


def _slice_parallel(block: nn.Module, lp: LayerPlan, embed: list[int]) -> dict[str, torch.Tensor]:
    """A parallel block: ``in_proj`` rows ``[mlp | q | k | v]``, the two output projections."""
    h, qk, v, _, m = block_dims(block)
    rows, cols = qkv_rows(h, qk, v, lp, offset=m)
    out = _norm(block.in_norm, "in_norm", embed)
    rows = lp.mlp + rows
    out["in_proj.weight"] = take(take(block.in_proj.weight, 0, rows), 1, embed)
    if block.in_proj.bias is not None:
        out["in_proj.bias"] = take(block.in_proj.bias, 0, rows)
    if block.mlp_bias is not None:
        out["mlp_bias"] = take(block.mlp_bias, 0, lp.mlp)
    out.update(_qk_norms(block.q_norm, block.k_norm, "", lp, qk))
    if block.out_proj is not None:
        out_cols = cols + [h * v + j for j in lp.mlp]
        out["out_proj.weight"] = take(take(block.out_proj.weight, 1, out_cols), 0, embed)
        if block.out_proj.bias is not None:
            out["out_proj.bias"] = take(block.out_proj.bias, 0, embed)
    else:
        for name, kept in (("attn_out_proj", cols), ("mlp_out_proj", lp.mlp)):
            fc = getattr(block, name)
            out[f"{name}.weight"] = take(take(fc.weight, 1, kept), 0, embed)
            if fc.bias is not None:
                out[f"{name}.bias"] = take(fc.bias, 0, embed)
    if hasattr(block.ls, "gamma"):
        out["ls.gamma"] = take(block.ls.gamma, 0, embed)
    return out


def slice_stem(model: nn.Module, embed: list[int], stem_axis: Callable[[str], int | None]) -> dict[str, torch.Tensor]:
    """Every state entry outside the blocks (embeddings, prefix tokens, final norms, pooling,
    classifier heads) cut to ``embed`` channels along the axis ``stem_axis`` names (None: copied
    whole)."""
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if name.startswith("blocks."):
            continue
        axis = stem_axis(name)
        out[name] = t.detach().clone() if axis is None else take(t, axis, embed)
    return out
