"""Insert token reducers into a ViT according to a ``TokenSchedule``.

``model.blocks`` (an ``nn.Sequential`` of timm ``Block``) becomes a ``TokenBlocks`` holding the
same blocks at the same indices, so parameter names and state dicts are unchanged. A block with a
reducer runs ``attention -> reduce -> MLP``; blocks after a size-tracking reducer with
proportional attention add ``log(size)`` to their attention logits; all other blocks run timm's
own forward. Reducers hold no parameters. The ``TokenBlocks`` holds the schedule
(``schedule_of``): the one place a model's token schedule is kept (an artifact's ``tokens`` field
is written from it). Token reduction applies to the families that declare it
(``Family.token_reduction``: the plain and the hybrid ViT).
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import VitCompressError
from ..families import Family, family_of
from .attention import attend
from .base import Reducer
from .registry import REDUCERS
from .schedule import TokenSchedule, parse_schedule


class TokenBlocks(nn.Sequential):
    """The block stack with reducers between attention and MLP of the scheduled blocks."""

    def __init__(
        self,
        blocks,
        reducers: list[Reducer | None],
        prefix: int,
        has_cls: bool,
        prop_attn: bool,
        schedule: TokenSchedule | None = None,
    ):
        super().__init__(*blocks)
        self.reducers = list(reducers)  # plain list: parameter-free, not part of the state dict
        self.schedule = schedule
        self.prefix = prefix
        self.has_cls = has_cls
        self.prop_attn = prop_attn
        self.record: list | None = None  # set to [] to record (tokens, sizes) after each block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = None
        for i, blk in enumerate(self):
            red = self.reducers[i]
            bias = size[..., 0].log() if (size is not None and self.prop_attn) else None
            if red is None and bias is None:
                x = blk(x)
            else:
                if red is not None and red.tracks_size and size is None:
                    size = x.new_ones(x.shape[0], x.shape[1], 1)
                out, s, m = attend(
                    blk.attn,
                    blk.norm1(x),
                    bias,
                    scores=red is not None and red.needs_scores,
                    has_cls=self.has_cls,
                    prefix=self.prefix,
                    metric=red is not None and red.needs_metric,
                )
                x = x + blk.drop_path1(blk.ls1(out))
                if red is not None:
                    x, size = red(x, size, s, m)
                x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
            if self.record is not None:
                self.record.append((x.shape[1], None if size is None else size.detach().clone()))
        return x

    def extra_repr(self) -> str:
        red = {i: r for i, r in enumerate(self.reducers) if r is not None}
        first = next(iter(red.values()), None)
        what = f"{first.name} at blocks {list(red)}" if first is not None else "no reducers"
        return f"token reduction: {what}, prefix={self.prefix}, prop_attn={self.prop_attn}"


def build_reducers(schedule: TokenSchedule, depth: int, prefix: int) -> list[Reducer | None]:
    """One reducer (or None) per block."""
    cls = REDUCERS.get(schedule.method)
    out: list[Reducer | None] = []
    keeps, merges = schedule.block_keep(depth), schedule.block_merge(depth)
    for i in range(depth):
        if schedule.kind == "merge":
            out.append(cls(prefix=prefix, merge=merges[i], **schedule.options) if merges[i] > 0 else None)
        else:
            out.append(None if keeps[i] is None else cls(prefix=prefix, keep=keeps[i], **schedule.options))
    return out


def check_model(model: nn.Module, family: Family | None = None) -> None:
    """One-line error unless ``model`` is of a family the reducers serve (global-attention timm
    ViT blocks); ``family`` is the model's when the caller already knows it."""
    blocks = getattr(model, "blocks", None)
    if blocks is not None and any(type(b) is not Block for b in blocks):
        bad = next(type(b).__name__ for b in blocks if type(b) is not Block)
        raise VitCompressError(
            f"token reduction needs global-attention timm ViT blocks, this model has {bad} "
            "(windowed or otherwise restructured attention); use a vit_*/deit_* model"
        )
    fam = family or family_of(model)
    if not fam.token_reduction:
        raise VitCompressError(
            f"token reduction does not apply to the {fam.name} family ({fam.title}); use a vit_*/deit_* model"
        )


def apply_tokens(
    model: nn.Module,
    schedule: TokenSchedule | str,
    method: str | None = None,
    family: Family | None = None,
    **options,
) -> nn.Module:
    """Insert reducers into ``model`` (in place) and return it.

    ``schedule`` is a ``TokenSchedule`` or a schedule string (``'0.7@3,6,9'``, ``'rate=0.06'``,
    ``'merge=8'``) for ``method`` (``topk``, ``topk-vpa``, ``evit``, ``tome``, ``etps``); ``options``
    are reducer options (``vpa=False``, ``prop_attn=...``). A previous schedule is replaced. The
    schedule is kept with the reducers (``schedule_of``), so ``vitcompress.save``/``load`` keep it.
    ``family`` is the model's when the caller already knows it.
    """
    if isinstance(schedule, str):
        if method is None:
            raise VitCompressError(
                "a schedule string needs a method; pass method='topk-vpa' (or topk, evit, tome, etps)",
                params=["method"],
            )
        schedule = parse_schedule(schedule, method, options)
    elif options:
        schedule.options = {**schedule.options, **options}
    remove_tokens(model)
    check_model(model, family)
    depth = len(model.blocks)
    schedule.validate(depth)
    prefix = int(model.num_prefix_tokens)
    reducers = build_reducers(schedule, depth, prefix)
    first = next((r for r in reducers if r is not None), None)
    prop = bool(first is not None and first.tracks_size and first.prop_attn)
    model.blocks = TokenBlocks(list(model.blocks), reducers, prefix, model.cls_token is not None, prop, schedule)
    return model


def remove_tokens(model: nn.Module) -> nn.Module:
    """Undo ``apply_tokens``: plain timm blocks again (same parameters)."""
    if isinstance(getattr(model, "blocks", None), TokenBlocks):
        model.blocks = nn.Sequential(*list(model.blocks))
    return model


def schedule_of(model: nn.Module) -> TokenSchedule | None:
    """The token schedule a model carries, or None."""
    blocks = getattr(model, "blocks", None)
    return blocks.schedule if isinstance(blocks, TokenBlocks) else None


def set_keep(model: nn.Module, keep: float) -> None:
    """Set every reducer's keep fraction (``keep``/``rate`` schedules); updates the schedule."""
    sched = schedule_of(model)
    if sched is None or sched.kind == "merge":
        raise VitCompressError("the model has no keep/rate token schedule; apply one with vitcompress tokens first")
    if not 0.0 < keep <= 1.0:
        raise VitCompressError(f"keep fraction {keep} is outside (0, 1]")
    for r in model.blocks.reducers:
        if r is not None:
            r.set_keep(keep)
    if sched.kind == "rate":
        sched.rate = 1.0 - keep
        sched.spec = f"rate={sched.rate:g}@{sched.start}"  # what the record shows is what runs
    else:
        sched.keep = {b: keep for b in sched.keep}
        sched.spec = f"{keep:g}@{','.join(str(b) for b in sched.keep)}"
