"""``reduce_tokens``: the API behind ``vitcompress tokens`` (apply a schedule, choose its amount, save).

The amount of the schedule (its rate, keep fraction or merges) is taken as written, or chosen by
counting (``flops_reduction``: the amount whose MACs reduction, relative to the model's widths
without tokens, is nearest that share; like a width budget it lands within 1.5 points of the target,
or the call fails naming the nearest reductions the schedule can give) or by the calibration search (``search``: the largest amount within a top-1
tolerance on held-out images). The result is recorded in the artifact (``tokens`` field and a
history step), so load, export and bench apply it.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import asdict, dataclass

from torch import nn

from .artifact import check_output, meta_of, save
from .config import check_number, merge_config
from .errors import VitCompressError
from .io import output_lock
from .resolve import resolve_model
from .token_search import SearchConfig, SearchResult, search_amount
from .tokens.amount import amount_for_target, with_amount
from .tokens.apply import apply_tokens, check_model, remove_tokens
from .tokens.counting import token_counts, token_macs
from .tokens.schedule import TokenSchedule, parse_schedule


@dataclass
class TokenResult:
    """A token-reduced model and what its schedule does."""

    model: nn.Module
    schedule: TokenSchedule
    macs_plain: int  # MACs per image of the same widths without token reduction
    macs: int  # MACs per image with the schedule
    counts: list[int]  # tokens entering each block (prefix included), then leaving the last
    search: SearchResult | None = None
    target: float | None = None  # the MACs reduction asked for (flops_reduction), if any

    @property
    def reduction(self) -> float:
        return 1.0 - self.macs / self.macs_plain

    def format(self) -> str:
        n = len(self.counts) - 1
        rows = [
            f"token reduction: {self.schedule.describe()}",
            f"{'block':>5s} {'tokens in':>9s} {'tokens out':>10s}",
            "-" * 26,
        ]
        for i in range(n):
            rows.append(f"{i:>5d} {self.counts[i]:>9d} {self.counts[i + 1]:>10d}")
        rows.append(
            f"MACs per image: {self.macs / 1e9:.4f} G with token reduction, {self.macs_plain / 1e9:.4f} G "
            f"without ({self.reduction:.2%} removed; FLOPs = 2 x MACs)"
        )
        if self.target is not None:
            rows.append(self.format_target())
        return "\n".join(rows)

    def format_target(self) -> str:
        """'target: remove 30.0% of MACs; achieved 29.78% (-0.22 points, tolerance 1.5)', as ``prune`` prints."""
        t, got = float(self.target or 0.0), self.reduction
        return f"target: remove {t:.1%} of MACs; achieved {got:.2%} ({(got - t) * 100:+.2f} points, tolerance 1.5)"


def reduce_tokens(
    model: str | os.PathLike | nn.Module,
    schedule: str | TokenSchedule,
    method: str | None = None,
    *,
    options: dict | None = None,
    flops_reduction: float | None = None,
    search: SearchConfig | dict | None = None,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
) -> TokenResult:
    """Apply token reduction to a model name, artifact folder or module (a copy for modules).

    ``schedule`` is a schedule string (``0.7@3,6,9``, ``rate=0.06``, ``merge=8``) for ``method``
    (``topk``, ``topk-vpa``, ``evit``, ``tome``, ``etps``) or a ``TokenSchedule`` (which names its
    method), as for ``apply_tokens``; ``options`` are reducer options (``{"vpa": False}``). ``flops_reduction``
    replaces the schedule's amount by the smallest one removing that share of MACs; ``search``
    (a ``SearchConfig``, or a dict of its keys) replaces it by the calibration search's choice.
    With ``output`` the artifact is written atomically (an existing folder needs ``force``).
    """
    if flops_reduction is not None and search is not None:
        raise VitCompressError(
            "flops_reduction and search both choose the amount; pass one of them", params=["flops_reduction", "search"]
        )
    if flops_reduction is not None:
        check_number("flops_reduction", flops_reduction, {"gt": 0, "lt": 1})
    if search is not None:
        search = merge_config(SearchConfig(), search, "search") if isinstance(search, dict) else search
        search.validate()
    if output is not None:
        check_output(output, force=force, inputs=(model, checkpoint))
    if isinstance(schedule, str):
        if method is None:
            raise VitCompressError(
                "a schedule string needs a method; pass method='topk-vpa' (or topk, evit, tome, etps)",
                params=["method"],
            )
        sched = parse_schedule(schedule, method, options)
    else:
        sched = copy.deepcopy(schedule)
        if options:
            sched.options = {**sched.options, **options}
    with output_lock(output) if output is not None else contextlib.nullcontext():
        if output is not None:
            check_output(output, force=force, inputs=(model, checkpoint))  # again, now that the output is ours
        net = resolve_model(
            model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size
        )
        check_model(net)  # a family without token reduction is refused before anything is counted or searched
        return _reduce(net, model, sched, flops_reduction, search, output, force, progress)


def _reduce(
    net: nn.Module,
    model: str | os.PathLike | nn.Module,
    sched: TokenSchedule,
    flops_reduction: float | None,
    search: SearchConfig | None,
    output: str | os.PathLike | None,
    force: bool,
    progress: bool,
) -> TokenResult:
    """``reduce_tokens`` once the request is valid and the output locked."""
    if isinstance(model, nn.Module):
        net = copy.deepcopy(net)
    remove_tokens(net)
    meta_of(net)  # the model's record (a fresh one for a model vitcompress did not create)
    found = None
    if flops_reduction is not None:
        sched = with_amount(sched, amount_for_target(net, sched, flops_reduction))
    elif search is not None:
        found = search_amount(net, sched, progress=progress, **asdict(search))
        sched = found.schedule
    plain = token_macs(net)
    apply_tokens(net, sched)
    res = TokenResult(net.eval(), sched, plain, token_macs(net), token_counts(net), found, flops_reduction)
    meta = net.vitcompress_meta
    meta.history = [
        *meta.history,
        {
            "method": "tokens",
            "schedule": sched.to_dict(),
            "target": {"metric": "macs", "reduction": flops_reduction} if flops_reduction is not None else None,
            "search": found.to_dict() if found is not None else None,
            "achieved": {"macs_reduction": res.reduction},
            "macs_without_tokens": plain,
        },
    ]
    if output is not None:
        save(net, output, force=force, meta=meta)
    return res
