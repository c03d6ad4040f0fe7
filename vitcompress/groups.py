"""What is coupled to what: the dependency groups of a ViT.

A ``Group`` lists, for every *element* it contains (a head, a q/k dim of a head, an MLP neuron, a
residual channel, a block), the slices of every parameter that belong to that element and must be
removed together. Scorers reduce parameter (and gradient) values over these slices to one score
per element; ``reference.mask_model`` zeroes them to build the exact reference a sliced model must
match. The slicers in ``slicers.py`` cut tensors from the same layout independently, so the tests
comparing the two check both.

Kinds and their coupling (H heads, qk/v per-head widths, M MLP width, D embedding width):

- ``heads``  (H,)     q, k and v rows of the head in ``qkv`` (+ bias), its columns of ``proj``
- ``qk``     (H, qk)  q row and k row of that dim of that head (q and k must shrink together)
- ``v``      (H, v)   v row of that dim (+ bias) and the matching ``proj`` input column
- ``mlp``    (M,)     ``fc1`` row and bias, ``fc2`` column
- ``embed``  (D,)     every tensor on the residual stream: patch embedding, position embedding,
                      prefix tokens, all norms, qkv/fc1 inputs, proj/fc2 outputs, layer scales,
                      final norm, classifier input columns
- ``depth``  (L,)     every parameter of the block (removal leaves the residual identity)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import VitCompressError
from .layers import attention_dims
from .slicers import _STEM_AXES

KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")
LAYER_KINDS = ("heads", "qk", "v", "mlp")


@dataclass
class Member:
    """One parameter's share of a group.

    ``index[e]`` are the positions along ``dim`` owned by element ``e`` (elements in row-major
    order of the group shape). With ``dim=None`` the whole tensor belongs to element ``element``.
    """

    param: str
    dim: int | None
    index: torch.Tensor | None = None
    element: int | None = None


@dataclass
class Group:
    kind: str
    layer: int | None
    shape: tuple[int, ...]
    members: list[Member] = field(default_factory=list)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def describe(self) -> str:
        where = f"block {self.layer}" if self.layer is not None else "model"
        return f"{self.kind} @ {where}: {self.shape} -> " + ", ".join(
            f"{m.param}[{'all' if m.dim is None else f'dim {m.dim}'}]" for m in self.members
        )


def parse_kinds(granularity: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(g.strip() for g in granularity if g.strip()))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise VitCompressError(f"unknown granularity {', '.join(bad)}; choose from {','.join(KINDS)}")
    if not kinds:
        raise VitCompressError(f"no granularity given; choose from {','.join(KINDS)}")
    return kinds


def _ar(*shape: int) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n).reshape(*shape)


def layer_groups(model: nn.Module, layer: int, kinds: Iterable[str]) -> list[Group]:
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


# block parameters that run along the residual stream, and their axis
_BLOCK_EMBED_AXES = {
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


def embed_group(model: nn.Module) -> Group:
    d = model.embed_dim
    idx = _ar(d, 1)
    g = Group("embed", None, (d,))
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            rel = name.split(".", 2)[2]
            axis = _BLOCK_EMBED_AXES.get(rel)
        else:
            axis = _STEM_AXES.get(name)
        if axis is not None:
            g.members.append(Member(name, axis, idx))
    return g


def depth_group(model: nn.Module) -> Group:
    g = Group("depth", None, (len(model.blocks),))
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            g.members.append(Member(name, None, element=int(name.split(".")[1])))
    return g


def build_groups(model: nn.Module, kinds: Iterable[str]) -> list[Group]:
    """All groups of the requested kinds, layer groups in block order."""
    kinds = tuple(kinds)
    groups: list[Group] = []
    for layer in range(len(model.blocks)):
        groups.extend(layer_groups(model, layer, [k for k in LAYER_KINDS if k in kinds]))
    if "embed" in kinds:
        groups.append(embed_group(model))
    if "depth" in kinds:
        groups.append(depth_group(model))
    return groups


def reduce_group(group: Group, fn: Callable[..., torch.Tensor], *tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum ``fn(*slices)`` over every member slice of every element; returns ``group.shape``.

    ``tensors`` are name -> tensor maps (e.g. parameters, gradients) read in parallel.
    """
    out = None
    for m in group.members:
        ts = [t[m.param].detach() for t in tensors]
        if m.dim is None:
            val = fn(*ts).sum().to(torch.float64)
            if out is None:
                out = torch.zeros(group.numel, dtype=torch.float64, device=val.device)
            out[m.element] += val
            continue
        e, k = m.index.shape
        flat = m.index.reshape(-1).to(ts[0].device)
        sl = [t.index_select(m.dim, flat).movedim(m.dim, 0).reshape(e, -1) for t in ts]
        val = fn(*sl).to(torch.float64).sum(1)
        out = val if out is None else out + val
    return out.reshape(group.shape)
