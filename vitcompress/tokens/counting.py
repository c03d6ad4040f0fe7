"""Tokens per block of a token-reduced model, and its analytic MACs.

A reducing block runs its attention on the ``t_in`` tokens that enter it and its MLP on the
``t_out`` tokens the reducer leaves, and adds the reducer's own matrix products
(``Reducer.extra_macs``: the class-token score row, ToMe's matching and merge, eTPS's similarity
and fusion). Element-wise work, softmax, TopK and gathers are not counted, as in
``vitcompress.counting`` and ``torch.utils.flop_counter``. The MACs of a block on given token
counts are the model family's (``Family.macs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..families import BlockTokens, Family, family_of
from ..spec import Spec
from .apply import build_reducers, schedule_of
from .schedule import TokenSchedule


def block_tokens(spec: Spec, layout: tuple[int, int, bool], schedule: TokenSchedule | None) -> list[BlockTokens]:
    """Per-block token counts (and reducer MACs) of ``schedule`` on a model with ``spec`` whose
    first block receives ``layout = (patch tokens, prefix tokens, has a class token)``."""
    return tokens_of(layout, schedule, spec.depth)(spec)


def tokens_of(
    layout: tuple[int, int, bool], schedule: TokenSchedule | None, depth: int
) -> Callable[[Spec], list[BlockTokens]]:
    """``spec -> block_tokens(spec, layout, schedule)`` for specs of ``depth`` blocks, with the
    reducers built once (for a budget that counts many candidate specs)."""
    n0, p, has_cls = layout
    reducers = build_reducers(schedule, depth, p) if schedule is not None else [None] * depth

    def per_block(spec: Spec) -> list[BlockTokens]:
        if spec.depth != depth:
            raise ValueError(f"token counts were prepared for {depth} blocks, the spec has {spec.depth}")
        n, out = n0, []
        for b, red in zip(spec.blocks, reducers):
            if red is None:
                out.append(BlockTokens(n + p, n + p))
                continue
            extra = red.extra_macs(n, b.num_heads, b.qk_dim, spec.dim_of(b), has_cls)
            n_out = int(red.out_count(n))
            out.append(BlockTokens(n + p, n_out + p, int(extra)))
            n = n_out
        return out

    return per_block


def macs_with(
    model: nn.Module,
    schedule: TokenSchedule | None,
    img_size: Sequence[int] | None = None,
    family: Family | None = None,
) -> int:
    """Analytic MACs per image of ``model``'s widths running ``schedule`` (None: no token
    reduction), at the model's image size or ``img_size`` (``family``: the model's, when known)."""
    fam = family or family_of(model)
    spec, info = fam.spec(model), fam.arch_info(model, img_size)
    return fam.macs(spec, info, block_tokens(spec, fam.token_layout(info), schedule))


def token_macs(model: nn.Module, schedule: TokenSchedule | None = None, img_size: Sequence[int] | None = None) -> int:
    """Analytic MACs per image of ``model`` with ``schedule`` (default: the one it carries)."""
    return macs_with(model, schedule or schedule_of(model), img_size)


def token_counts(
    model: nn.Module, schedule: TokenSchedule | None = None, img_size: Sequence[int] | None = None
) -> list[int]:
    """Tokens entering each block (prefix included), then the count leaving the last block."""
    fam = family_of(model)
    spec, info = fam.spec(model), fam.arch_info(model, img_size)
    bts = block_tokens(spec, fam.token_layout(info), schedule or schedule_of(model))
    return [bt.t_in for bt in bts] + [bts[-1].t_out]


def patch_tokens(model: nn.Module) -> int:
    """Patch tokens entering the first block at the model's image size."""
    fam = family_of(model)
    return fam.token_layout(fam.arch_info(model))[0]
