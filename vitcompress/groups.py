"""What is coupled to what: the dependency groups of a model, and the kinds they come in.

A ``Group`` lists, for every *element* it contains (a head, a q/k dim of a head, an MLP neuron, a
residual channel, a block), the slices of every parameter that belong to that element and must be
removed together. Scorers reduce parameter (and gradient) values over these slices to one score
per element; ``reference.mask_model`` zeroes them to build the exact reference a sliced model must
match. Each model family (``vitcompress.families``) builds its groups (``Family.groups``) and
cuts tensors in its slicers from the same layout independently, so the tests comparing the two
check both.

Kinds and their coupling in a plain ViT (H heads, qk/v per-head widths, M MLP width, D embedding
width); other families couple more tensors into the same kinds (a hybrid's stem projection, a
Swin stage's patch merging):

- ``heads``  (H,)     q, k and v rows of the head in ``qkv`` (+ bias), its columns of ``proj``
- ``qk``     (H, qk)  q row and k row of that dim of that head (q and k must shrink together)
- ``v``      (H, v)   v row of that dim (+ bias) and the matching ``proj`` input column
- ``mlp``    (M,)     ``fc1`` row and bias, ``fc2`` column
- ``embed``  (D,)     every tensor on the residual stream: patch embedding, position embedding,
                      prefix tokens, all norms, qkv/fc1 inputs, proj/fc2 outputs, layer scales,
                      final norm, classifier input columns
- ``depth``  (L,)     every parameter of the block (removal leaves the residual identity)

``Group.layer`` is the block index for the per-block kinds, the stage index for ``embed`` (``None``
for a model with one residual stream) and ``None`` for ``depth`` (its elements are the blocks).
An element may own several rows of a tensor (``Member.index`` is ``[elements, k]``): a gated MLP's
neuron owns two ``fc1`` rows, a Swin patch merging's input owns four columns per channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from .errors import VitCompressError

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
        if self.layer is None:
            where = "model"
        else:
            where = f"{'stage' if self.kind == 'embed' else 'block'} {self.layer}"
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


def keep_mask(plan, group: Group) -> torch.Tensor:
    """Boolean tensor of ``group.shape``: True where ``plan`` keeps the element."""
    keep = torch.zeros(group.shape, dtype=torch.bool)
    if group.kind == "embed":
        keep[plan.embeds[group.layer or 0]] = True
    elif group.kind == "depth":
        keep[plan.blocks] = True
    elif group.layer not in plan.blocks:
        pass  # block removed: nothing of it is kept
    else:
        lp = plan.layers[group.layer]
        if group.kind == "heads":
            keep[lp.heads] = True
        elif group.kind == "mlp":
            keep[lp.mlp] = True
        else:
            dims = lp.qk if group.kind == "qk" else lp.v
            for h, ds in zip(lp.heads, dims):
                keep[h, ds] = True
    return keep


def zero_removed(tensors: dict[str, torch.Tensor], groups: Iterable[Group], plan) -> None:
    """Set, in place, every slice of ``tensors`` that belongs to an element ``plan`` removes to zero
    (members whose tensor is not in ``tensors`` are skipped)."""
    with torch.no_grad():
        for g in groups:
            drop = ~keep_mask(plan, g).reshape(-1)
            if not drop.any():
                continue
            for m in g.members:
                t = tensors.get(m.param)
                if t is None:
                    continue
                if m.dim is None:
                    if drop[m.element]:
                        t.zero_()
                    continue
                t.index_fill_(m.dim, m.index[drop].reshape(-1).to(t.device), 0.0)
