"""The coupling groups of a plain ViT (the layout is documented in ``vitcompress.groups``).

Per block: ``heads``, ``qk``, ``v`` and ``mlp`` groups over the fused ``qkv`` rows
(``[q | k | v]``, head-major: q of head h dim d at ``h*qk + d``, k at ``H*qk + h*qk + d``, v at
``2*H*qk + h*v + d``), the ``proj`` input columns (``h*v + d``) and the MLP's ``fc1`` rows /
``fc2`` columns. ``embed`` couples every tensor on the residual stream: the block tensors listed
in ``BLOCK_EMBED_AXES`` and the tensors outside the blocks whose residual axis ``stem_axis`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ...groups import LAYER_KINDS, Group, Member
from ...layers import attention_dims

# block parameters that run along the residual stream, and their axis
BLOCK_EMBED_AXES = {
    "norm1.weight": 0,
    "norm1.bias": 0,
    "attn.qkv.weight": 1,
    "attn.proj.weight": 0,
    "attn.proj.bias": 0,
    "ls1.gamma": 0,
    "norm2.weight": 0,
    "norm2.bias": 0,
    "mlp.fc1.weight": 1,
    "mlp.fc2.weight": 0,
    "mlp.fc2.bias": 0,
    "ls2.gamma": 0,
}


def _ar(*shape: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n).reshape(*shape)


def layer_groups(model: nn.Module, layer: int, kinds: Iterable[str]) -> list[Group]:
    """The per-block groups of block ``layer``, in the order of ``kinds``."""
    blk = model.blocks[layer]
    h, qk, v, _ = attention_dims(blk.attn)
    m = blk.mlp.fc1.out_features
    p = f"blocks.{layer}."
    has_qkv_bias = blk.attn.qkv.bias is not None
    out = []

    def qkv_members(index: torch.Tensor) -> list[Member]:
        mem = [Member(p + "attn.qkv.weight", 0, index)]
        if has_qkv_bias:
            mem.append(Member(p + "attn.qkv.bias", 0, index))
        return mem

    heads = torch.arange(h)[:, None]
    q_rows = heads * qk + torch.arange(qk)  # [H, qk]
    k_rows = h * qk + q_rows
    v_rows = 2 * h * qk + heads * v + torch.arange(v)  # [H, v]
    v_cols = heads * v + torch.arange(v)
    for kind in kinds:
        if kind == "heads":
            g = Group("heads", layer, (h,), qkv_members(torch.cat([q_rows, k_rows, v_rows], 1)))
            g.members.append(Member(p + "attn.proj.weight", 1, v_cols))
        elif kind == "qk":
            g = Group("qk", layer, (h, qk), qkv_members(torch.stack([q_rows, k_rows], -1).reshape(h * qk, 2)))
        elif kind == "v":
            g = Group("v", layer, (h, v), qkv_members(v_rows.reshape(-1, 1)))
            g.members.append(Member(p + "attn.proj.weight", 1, v_cols.reshape(-1, 1)))
        elif kind == "mlp":
            idx = _ar(m, 1)
            g = Group("mlp", layer, (m,), [Member(p + "mlp.fc1.weight", 0, idx)])
            if blk.mlp.fc1.bias is not None:
                g.members.append(Member(p + "mlp.fc1.bias", 0, idx))
            g.members.append(Member(p + "mlp.fc2.weight", 1, idx))
        else:
            continue
        out.append(g)
    return out


def embed_group(model: nn.Module, stem_axis: Callable[[str], int | None]) -> Group:
    """Every parameter on the residual stream; ``stem_axis(name)`` gives the residual axis of a
    parameter outside the blocks (None: not on the stream)."""
    d = model.embed_dim
    idx = _ar(d, 1)
    g = Group("embed", None, (d,))
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            axis = BLOCK_EMBED_AXES.get(name.split(".", 2)[2])
        else:
            axis = stem_axis(name)
        if axis is not None:
            g.members.append(Member(name, axis, idx))
    return g


def depth_group(model: nn.Module) -> Group:
    """One element per block: every parameter of the block."""
    g = Group("depth", None, (len(model.blocks),))
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            g.members.append(Member(name, None, element=int(name.split(".")[1])))
    return g


def build_groups(model: nn.Module, kinds: Iterable[str], stem_axis: Callable[[str], int | None]) -> list[Group]:
    """All groups of the requested kinds, per-block groups in block order, then embed, then depth."""
    kinds = tuple(kinds)
    groups: list[Group] = []
    for layer in range(len(model.blocks)):
        groups.extend(layer_groups(model, layer, [k for k in LAYER_KINDS if k in kinds]))
    if "embed" in kinds:
        groups.append(embed_group(model, stem_axis))
    if "depth" in kinds:
        groups.append(depth_group(model))
    return groups
