"""How tensors are cut: apply a ``Plan`` to a model and get a smaller dense model.

Each function here knows one module's tensor layout. ``slice_model`` derives the new ``ViTSpec``
from the plan, builds an empty model of that spec (so every module's metadata - heads, q/k and v
widths, softmax scale, features - comes from one place and cannot go stale), and fills it with the
selected rows and columns of the original tensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .layers import attention_dims
from .models import infer_source
from .plan import LayerPlan, Plan
from .spec import BlockSpec, ViTSpec, build_model, spec_from_model


def _idx(indices: Iterable[int], device) -> torch.Tensor:
    return torch.as_tensor(list(indices), dtype=torch.long, device=device)


def take(t: torch.Tensor, dim: int, indices) -> torch.Tensor:
    """Rows/columns ``indices`` of ``t`` along ``dim``, as a new contiguous tensor."""
    return t.detach().index_select(dim, _idx(indices, t.device)).contiguous()


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


# Parameters outside the blocks and the axis that runs along the residual stream.
_STEM_AXES = {
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


def slice_stem(model: nn.Module, embed: list[int]) -> dict[str, torch.Tensor]:
    """Embeddings, prefix tokens, final norms and classifier heads cut to ``embed`` channels."""
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("blocks."):
            continue
        if name not in _STEM_AXES:
            raise ValueError(f"don't know how to slice parameter {name!r}")
        axis = _STEM_AXES[name]
        out[name] = p.detach().clone() if axis is None else take(p, axis, embed)
    return out


def spec_after(model: nn.Module, plan: Plan) -> ViTSpec:
    """The spec of ``model`` cut by ``plan``."""
    old = spec_from_model(model)
    blocks = []
    for b in plan.blocks:
        lp, bs = plan.layers[b], old.blocks[b]
        blocks.append(BlockSpec(bs.source_index, len(lp.heads), len(lp.qk[0]), len(lp.v[0]), len(lp.mlp), bs.scale))
    return ViTSpec(len(plan.embed), blocks)


def slice_model(model: nn.Module, plan: Plan) -> nn.Module:
    """A new dense model: ``model`` with everything the plan does not keep removed.

    The original is left untouched. The result is in eval mode on the original's device/dtype.
    """
    plan.validate()
    source = infer_source(model)
    spec = spec_after(model, plan)
    state = slice_stem(model, plan.embed)
    for new_i, old_i in enumerate(plan.blocks):
        for k, t in slice_block(model.blocks[old_i], plan.layers[old_i], plan.embed).items():
            state[f"blocks.{new_i}.{k}"] = t
    new = build_model(source, spec)
    new.load_state_dict(state, strict=True, assign=True)
    for attr in ("pretrained_cfg", "default_cfg"):
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    return new.train(model.training)
