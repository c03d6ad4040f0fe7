"""Dynamic token reduction for ViTs: the reducers Top-K (+VPA), EViT, ToMe, eTPS; schedules; counting.

Public API::

    apply_tokens(model, "0.7@3,6,9", method="topk-vpa")   # in place; saved/loaded with artifacts
    remove_tokens(model)
    parse_schedule("rate=0.06", "topk-vpa") -> TokenSchedule
    token_counts(model) -> tokens entering each block;  token_macs(model) -> MACs per image
    REDUCERS.list() -> ['etps', 'evit', 'tome', 'topk', 'topk-vpa']

See docs/tokens.md for each reducer's exact rule.
"""

from __future__ import annotations

from .apply import TokenBlocks, apply_tokens, remove_tokens, schedule_of, set_keep
from .counting import token_counts, token_macs
from .registry import REDUCERS
from .schedule import TokenSchedule, parse_schedule

__all__ = [
    "REDUCERS",
    "TokenBlocks",
    "TokenSchedule",
    "apply_tokens",
    "parse_schedule",
    "remove_tokens",
    "schedule_of",
    "set_keep",
    "token_counts",
    "token_macs",
]
