"""How a Swin Transformer's tensors are cut: the patch embedding, each stage's patch merging and blocks,
the final norm and the classifier.

The layout is the one ``groups.py`` couples; it is written out here a second time on purpose, so
that the tests comparing a sliced model with the masked reference check both. A patch merging's
input is the 2x2 neighbours concatenated (``[x0 | x1 | x2 | x3]``, each C wide): kept channel c of
the previous stage keeps positions ``q*C + c`` for q = 0..3, in that order, so the sliced model's
own concatenation lines up with the kept columns.
"""

from __future__ import annotations

import torch
from torch import nn

from ...plan import LayerPlan, Plan
from ..base import take
from ..vit.slicing import qkv_rows
from .attention import window_attention_dims
from .groups import block_paths, stage_dims


def merge_columns(kept: list[int], channels: int) -> list[int]:
    """Kept positions of a patch merging's 4C input for kept channels ``kept`` of C."""
    return [q * channels + c for q in range(4) for c in kept]


def _norm(norm: nn.Module, prefix: str, index: list[int]) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("weight", "bias"):
        t = getattr(norm, name, None)
        if t is not None:
            out[f"{prefix}.{name}"] = take(t, 0, index)
    return out


def slice_block(block: nn.Module, lp: LayerPlan, embed: list[int]) -> dict[str, torch.Tensor]:
    """State dict entries (block-relative names) of one Swin block cut to ``lp`` and ``embed``."""
    h, qk, v, _ = window_attention_dims(block.attn)
    rows, proj_cols = qkv_rows(h, qk, v, lp)
    attn, mlp = block.attn, block.mlp
    out = {**_norm(block.norm1, "norm1", embed), **_norm(block.norm2, "norm2", embed)}
    out["attn.relative_position_bias_table"] = take(attn.relative_position_bias_table, 1, lp.heads)
    out["attn.qkv.weight"] = take(take(attn.qkv.weight, 0, rows), 1, embed)
    if attn.qkv.bias is not None:
        out["attn.qkv.bias"] = take(attn.qkv.bias, 0, rows)
    out["attn.proj.weight"] = take(take(attn.proj.weight, 1, proj_cols), 0, embed)
    if attn.proj.bias is not None:
        out["attn.proj.bias"] = take(attn.proj.bias, 0, embed)
    out["mlp.fc1.weight"] = take(take(mlp.fc1.weight, 0, lp.mlp), 1, embed)
    if mlp.fc1.bias is not None:
        out["mlp.fc1.bias"] = take(mlp.fc1.bias, 0, lp.mlp)
    out["mlp.fc2.weight"] = take(take(mlp.fc2.weight, 1, lp.mlp), 0, embed)
    if mlp.fc2.bias is not None:
        out["mlp.fc2.bias"] = take(mlp.fc2.bias, 0, embed)
    return out


def slice_state(model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` cut by ``plan`` (kept blocks renumbered within their stage)."""
    e = plan.embeds
    dims = stage_dims(model)
    pe = model.patch_embed
    state = {"patch_embed.proj.weight": take(pe.proj.weight, 0, e[0])}
    if pe.proj.bias is not None:
        state["patch_embed.proj.bias"] = take(pe.proj.bias, 0, e[0])
    if not isinstance(pe.norm, nn.Identity):
        state.update(_norm(pe.norm, "patch_embed.norm", e[0]))
    for s in range(1, len(model.layers)):
        ds = model.layers[s].downsample
        cols = merge_columns(e[s - 1], dims[s - 1])
        state.update(_norm(ds.norm, f"layers.{s}.downsample.norm", cols))
        state[f"layers.{s}.downsample.reduction.weight"] = take(take(ds.reduction.weight, 1, cols), 0, e[s])
    paths = block_paths(model)
    kept_in_stage = [0] * len(model.layers)
    for i in plan.blocks:
        s, path = paths[i]
        for name, t in slice_block(model.get_submodule(path), plan.layers[i], e[s]).items():
            state[f"layers.{s}.blocks.{kept_in_stage[s]}.{name}"] = t
        kept_in_stage[s] += 1
    state.update(_norm(model.norm, "norm", e[-1]))
    fc = model.head.fc
    if isinstance(fc, nn.Linear):
        state["head.fc.weight"] = take(fc.weight, 1, e[-1])
        if fc.bias is not None:
            state["head.fc.bias"] = fc.bias.detach().clone()
    return state
