"""The coupling groups of a Swin Transformer (v1).

Blocks are numbered in order over all stages (``layers.{s}.blocks.{j}``). Per block: ``heads``,
``qk``, ``v`` and ``mlp`` as in a plain ViT (fused ``qkv`` rows ``[q | k | v]``, head-major;
``proj`` input columns; ``fc1`` rows / ``fc2`` columns), and a head also owns its column of the
relative-position bias table. The shifted-window masks are buffers computed from the geometry and
are not touched.

``embed`` is one group per stage (``Group.layer`` = stage). Stage s's residual stream runs through:
the patch embedding (``proj`` rows, bias, its norm) for stage 0, or the output rows of stage s's
patch-merging ``reduction``; every tensor of the stage's blocks on the residual stream (norms,
``qkv``/``fc1`` input columns, ``proj``/``fc2`` output rows and biases); and what reads the stream at
its end: the next stage's patch merging (its LayerNorm over 4C and its ``reduction``'s input columns,
where channel c owns the four positions ``q*C + c``, one per merged 2x2 neighbour) or, after the last
stage, the final norm and the classifier's input columns.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ...groups import LAYER_KINDS, Group, Member
from .attention import window_attention_dims

# block parameters that run along the residual stream, and their axis
BLOCK_EMBED_AXES = {
    "norm1.weight": 0,
    "norm1.bias": 0,
    "attn.qkv.weight": 1,
    "attn.proj.weight": 0,
    "attn.proj.bias": 0,
    "norm2.weight": 0,
    "norm2.bias": 0,
    "mlp.fc1.weight": 1,
    "mlp.fc2.weight": 0,
    "mlp.fc2.bias": 0,
}


def block_paths(model: nn.Module) -> list[tuple[int, str]]:
    """(stage, module path) of every block, in order."""
    return [(s, f"layers.{s}.blocks.{j}") for s, stage in enumerate(model.layers) for j in range(len(stage.blocks))]


def stage_dims(model: nn.Module) -> list[int]:
    """Residual width of every stage."""
    return [
        model.patch_embed.proj.out_channels if s == 0 else stage.downsample.reduction.out_features
        for s, stage in enumerate(model.layers)
    ]


def merge_index(channels: int) -> torch.Tensor:
    """[C, 4]: the positions of channel c in a patch merging's 4C input (``q*C + c``)."""
    return torch.arange(4)[None, :] * channels + torch.arange(channels)[:, None]


def layer_groups(model: nn.Module, layer: int, path: str, kinds: Iterable[str]) -> list[Group]:
    """The per-block groups of block ``layer`` (at ``path``), in the order of ``kinds``."""
    blk = model.get_submodule(path)
    h, qk, v, _ = window_attention_dims(blk.attn)
    m = blk.mlp.fc1.out_features
    p = path + "."
    out = []

    def qkv_members(index: torch.Tensor) -> list[Member]:
        mem = [Member(p + "attn.qkv.weight", 0, index)]
        if blk.attn.qkv.bias is not None:
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
            g.members.append(Member(p + "attn.relative_position_bias_table", 1, heads))
        elif kind == "qk":
            g = Group("qk", layer, (h, qk), qkv_members(torch.stack([q_rows, k_rows], -1).reshape(h * qk, 2)))
        elif kind == "v":
            g = Group("v", layer, (h, v), qkv_members(v_rows.reshape(-1, 1)))
            g.members.append(Member(p + "attn.proj.weight", 1, v_cols.reshape(-1, 1)))
        elif kind == "mlp":
            idx = torch.arange(m)[:, None]
            g = Group("mlp", layer, (m,), [Member(p + "mlp.fc1.weight", 0, idx)])
            if blk.mlp.fc1.bias is not None:
                g.members.append(Member(p + "mlp.fc1.bias", 0, idx))
            g.members.append(Member(p + "mlp.fc2.weight", 1, idx))
        else:
            continue
        out.append(g)
    return out


def embed_group(model: nn.Module, stage: int) -> Group:
    """Every parameter on stage ``stage``'s residual stream (see the module docstring)."""
    d = stage_dims(model)[stage]
    one, four = torch.arange(d)[:, None], merge_index(d)
    params = dict(model.named_parameters())
    g = Group("embed", stage, (d,))

    def add(name: str, axis: int, index: torch.Tensor) -> None:
        if name in params:
            g.members.append(Member(name, axis, index))

    if stage == 0:
        for n in (
            "patch_embed.proj.weight",
            "patch_embed.proj.bias",
            "patch_embed.norm.weight",
            "patch_embed.norm.bias",
        ):
            add(n, 0, one)
    else:
        add(f"layers.{stage}.downsample.reduction.weight", 0, one)
    for s, path in block_paths(model):
        if s == stage:
            for n, axis in BLOCK_EMBED_AXES.items():
                add(f"{path}.{n}", axis, one)
    if stage + 1 < len(model.layers):
        nxt = f"layers.{stage + 1}.downsample"
        add(f"{nxt}.norm.weight", 0, four)
        add(f"{nxt}.norm.bias", 0, four)
        add(f"{nxt}.reduction.weight", 1, four)
    else:
        add("norm.weight", 0, one)
        add("norm.bias", 0, one)
        add("head.fc.weight", 1, one)
    return g


def depth_group(model: nn.Module) -> Group:
    """One element per block: every parameter of the block."""
    paths = block_paths(model)
    g = Group("depth", None, (len(paths),))
    for i, (_, path) in enumerate(paths):
        for n, _ in model.get_submodule(path).named_parameters():
            g.members.append(Member(f"{path}.{n}", None, element=i))
    return g


def build_groups(model: nn.Module, kinds: Iterable[str]) -> list[Group]:
    """All groups of the requested kinds: per-block groups in block order, then ``embed`` per stage,
    then ``depth``."""
    kinds = tuple(kinds)
    groups: list[Group] = []
    for layer, (_, path) in enumerate(block_paths(model)):
        groups.extend(layer_groups(model, layer, path, [k for k in LAYER_KINDS if k in kinds]))
    if "embed" in kinds:
        groups.extend(embed_group(model, s) for s in range(len(model.layers)))
    if "depth" in kinds:
        groups.append(depth_group(model))
    return groups
