"""Analytic MACs of a token-reduced ViT, block by block.

A reducing block runs its attention on the ``t_in`` tokens that enter it and its MLP on the
``t_out`` tokens the reducer leaves, and adds the reducer's own matrix products
(``Reducer.extra_macs``: the class-token score row, ToMe's matching and merge, eTPS's similarity
and fusion). Element-wise work, softmax, TopK and gathers are not counted, as in
``vitcompress.counting`` and ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..counting import ArchInfo
from ..spec import ViTSpec, spec_from_model
from .apply import build_reducers, schedule_of
from .schedule import TokenSchedule


@dataclass
class BlockTokens:
    """Tokens entering (``t_in``) and leaving (``t_out``) one block, prefix included."""

    t_in: int
    t_out: int
    extra_macs: int = 0


def block_tokens(
    spec: ViTSpec, info: ArchInfo, schedule: TokenSchedule | None, has_cls: bool = True
) -> list[BlockTokens]:
    """Per-block token counts (and reducer MACs) for a schedule at ``info``'s grid."""
    p = info.num_prefix_tokens
    n = info.num_patches
    depth = spec.depth
    reducers = build_reducers(schedule, depth, p) if schedule is not None else [None] * depth
    out = []
    for b, red in zip(spec.blocks, reducers):
        if red is None:
            out.append(BlockTokens(n + p, n + p))
            continue
        extra = red.extra_macs(n, b.num_heads, b.qk_dim, spec.embed_dim, has_cls)
        n_out = int(red.out_count(n))
        out.append(BlockTokens(n + p, n_out + p, int(extra)))
        n = n_out
    return out


def schedule_macs(spec: ViTSpec, info: ArchInfo, schedule: TokenSchedule | None, has_cls: bool = True) -> int:
    """MACs per image of a (width-pruned) ViT running ``schedule``."""
    d = spec.embed_dim
    total = info.num_patches * d * info.in_chans * info.patch_area
    for b, bt in zip(spec.blocks, block_tokens(spec, info, schedule, has_cls)):
        h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        t = bt.t_in
        total += t * d * h * (2 * qk + v) + h * t * t * (qk + v) + t * h * v * d
        total += 2 * bt.t_out * d * m + bt.extra_macs
    total += info.num_heads_out * d * info.num_classes
    return int(total)


def _info(model: nn.Module, img_size: Sequence[int] | None) -> ArchInfo:
    info = ArchInfo.from_model(model)
    if img_size is not None:
        info = info.with_img_size(tuple(img_size), model.patch_embed.patch_size)
    return info


def token_macs(model: nn.Module, schedule: TokenSchedule | None = None, img_size: Sequence[int] | None = None) -> int:
    """Analytic MACs per image of ``model`` with ``schedule`` (default: the one it carries)."""
    schedule = schedule or schedule_of(model)
    return schedule_macs(spec_from_model(model), _info(model, img_size), schedule, model.cls_token is not None)


def token_counts(
    model: nn.Module, schedule: TokenSchedule | None = None, img_size: Sequence[int] | None = None
) -> list[int]:
    """Tokens entering each block (prefix included), then the count leaving the last block."""
    schedule = schedule or schedule_of(model)
    bts = block_tokens(spec_from_model(model), _info(model, img_size), schedule, model.cls_token is not None)
    return [bt.t_in for bt in bts] + [bts[-1].t_out]
