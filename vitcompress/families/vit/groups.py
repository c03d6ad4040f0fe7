"""The coupling groups of a ViT of the family (the kinds are documented in ``vitcompress.groups``).

Per block (layouts in ``blocks.py``; H heads, qk/v per-head widths, M MLP neurons):

- serial block: q of head h dim d at ``qkv`` row ``h*qk + d``, k at ``H*qk + h*qk + d``, v at
  ``2*H*qk + h*v + d``; the v dim's ``proj`` input column (and attention output norm channel) at
  ``h*v + d``; MLP neuron j: ``fc1`` row j (a gated MLP: rows j and M + j of the packed ``fc1``, or
  row j of ``fc1_g`` and of ``fc1_x``), its hidden norm channel and ``fc2`` column j;
- parallel block: the same q/k/v rows shifted by M in ``in_proj`` (whose first M rows are the MLP's),
  ``mlp_bias`` j, ``attn_out_proj`` column ``h*v + d`` and ``mlp_out_proj`` column j (in a fused
  ``out_proj``: ``h*v + d`` and ``H*v + j``).

``embed`` couples every tensor on the residual stream: the block tensors of ``blocks.embed_axes``
and the tensors outside the blocks whose residual axis ``stem_axis`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ...groups import LAYER_KINDS, Group, Member
from .blocks import block_dims, embed_axes, fc1_names, fc1_rows, is_parallel


def _rows(h: int, qk: int, v: int, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q rows [H, qk], k rows [H, qk], v rows [H, v] of a fused q/k/v projection starting at row
    ``offset``, and the v dims' output columns [H, v]."""
    heads = torch.arange(h)[:, None]
    q = offset + heads * qk + torch.arange(qk)
    v_cols = heads * v + torch.arange(v)
    return q, q + h * qk, offset + 2 * h * qk + v_cols, v_cols


def layer_groups(model: nn.Module, layer: int, kinds: Iterable[str]) -> list[Group]:
    """The per-block groups of block ``layer``, in the order of ``kinds``."""
    blk = model.blocks[layer]
    h, qk, v, _, m = block_dims(blk)
    p = f"blocks.{layer}."
    parallel = is_parallel(blk)
    if parallel:
        proj, offset = ("out_proj" if blk.out_proj is not None else "attn_out_proj"), m
        qkv, bias = p + "in_proj", blk.in_proj.bias is not None
    else:
        proj, offset = "attn.proj", 0
        qkv, bias = p + "attn.qkv", blk.attn.qkv is not None and blk.attn.qkv.bias is not None
    q_rows, k_rows, v_rows, v_cols = _rows(h, qk, v, offset)
    out_norm = None if parallel or isinstance(blk.attn.norm, nn.Identity) else blk.attn.norm

    def qkv_members(index: torch.Tensor) -> list[Member]:
        return [Member(qkv + ".weight", 0, index)] + ([Member(qkv + ".bias", 0, index)] if bias else [])

    def v_members(cols: torch.Tensor) -> list[Member]:
        mem = [Member(p + proj + ".weight", 1, cols)]
        if out_norm is not None:
            mem += [Member(p + f"attn.norm.{n}", 0, cols) for n, _ in out_norm.named_parameters()]
        return mem

    out = []
    for kind in kinds:
        if kind == "heads":
            g = Group("heads", layer, (h,), qkv_members(torch.cat([q_rows, k_rows, v_rows], 1)) + v_members(v_cols))
        elif kind == "qk":
            g = Group("qk", layer, (h, qk), qkv_members(torch.stack([q_rows, k_rows], -1).reshape(h * qk, 2)))
        elif kind == "v":
            g = Group("v", layer, (h, v), qkv_members(v_rows.reshape(-1, 1)) + v_members(v_cols.reshape(-1, 1)))
        elif kind == "mlp":
            g = Group("mlp", layer, (m,), mlp_members(blk, p, m, h * v))
        else:
            continue
        out.append(g)
    return out


def mlp_members(blk: nn.Module, p: str, m: int, attn_dim: int) -> list[Member]:
    """Every slice of MLP neuron j of block ``blk`` (prefix ``p``): ``[m, k]`` indices per tensor."""
    idx = torch.arange(m)[:, None]
    if is_parallel(blk):
        mem = [Member(p + "in_proj.weight", 0, idx)]
        if blk.in_proj.bias is not None:
            mem.append(Member(p + "in_proj.bias", 0, idx))
        if blk.mlp_bias is not None:
            mem.append(Member(p + "mlp_bias", 0, idx))
        if blk.out_proj is not None:
            return [*mem, Member(p + "out_proj.weight", 1, attn_dim + idx)]
        return [*mem, Member(p + "mlp_out_proj.weight", 1, idx)]
    mlp, mem = blk.mlp, []
    rows = torch.cat([idx, m + idx], 1) if fc1_rows(mlp) == 2 and fc1_names(mlp) == ("fc1",) else idx
    for name in fc1_names(mlp):
        fc = getattr(mlp, name)
        mem.append(Member(p + f"mlp.{name}.weight", 0, rows))
        if fc.bias is not None:
            mem.append(Member(p + f"mlp.{name}.bias", 0, rows))
    mem += [Member(p + f"mlp.norm.{n}", 0, idx) for n, _ in mlp.norm.named_parameters()]
    return [*mem, Member(p + "mlp.fc2.weight", 1, idx)]


def embed_group(model: nn.Module, stem_axis: Callable[[str], int | None]) -> Group:
    """Every parameter on the residual stream; ``stem_axis(name)`` gives the residual axis of a
    parameter outside the blocks (None: not on the stream)."""
    d = model.embed_dim
    idx = torch.arange(d)[:, None]
    g = Group("embed", None, (d,))
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            axis = embed_axes(model.blocks[int(i)]).get(rest)
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
