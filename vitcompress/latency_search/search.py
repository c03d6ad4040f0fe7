"""The joint search of ``vitcompress compress``: depth, token schedule and widths for a latency target.

The latency target ``R`` (a share of the dense model's latency, predicted by its latency table)
can be met by removing whole blocks, by dropping tokens in later blocks, by narrowing widths, or by
a mix. The search enumerates the mixes and keeps the one that disturbs the model least:

1. **depth**: blocks ordered by the loss change when each is skipped on calibration images
   (``recipe.block_importance``, the depth criterion of the width-then-depth recipe); removing the
   first ``n`` of them, for ``n = 0, 1, ...`` as long as depth alone stays within the target
   (and at most ``max_depth_drop``);
2. **tokens**: for each depth, no token reduction and ``token_method`` keeping each of
   ``token_keeps`` of the patch tokens at a quarter, half and three quarters of the remaining depth;
3. **widths**: what is left of the target, ``1 - (1 - R) * latency(dense) / latency(candidate)``, is
   removed by the latency-budget prune (``vitcompress.prune`` with the table: importance-scored
   one shot, units ranked by importance per latency saved, widths at the measured steps). A
   candidate whose depth and tokens already overshoot the target, or whose widths cannot reach
   it, is listed with the reason and skipped;
4. **choice**: every remaining candidate is scored one shot, without training, by the KL
   divergence of its predictions from the teacher's on ``search_images`` training images (top-1
   agreement is reported next to it); the lowest wins (ties: fewer blocks removed).

The winner is the model the recovery stage distils.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.budget import TOLERANCE
from vitcompress.counting import count
from vitcompress.data import calibration_loader
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of
from vitcompress.latency import LatencyTable
from vitcompress.logits import logits_of
from vitcompress.progress import tqdm
from vitcompress.pruner import prune
from vitcompress.recipe import block_importance, drop_blocks
from vitcompress.tokens.apply import apply_tokens
from vitcompress.tokens.schedule import parse_schedule

MAX_WIDTH_CUT = 0.85  # a candidate needing more than this from its widths is skipped


@dataclass
class SearchSpace:
    """What the search tries (``CompressConfig`` fills it)."""

    reduction: float
    importance: str = "taylor-abs"
    granularity: tuple[str, ...] = ("heads", "qk", "v", "mlp")
    data: str = "digits"
    calib_images: int = 128
    search_images: int = 256
    seed: int = 0
    max_depth_drop: int | None = None
    token_method: str | None = "topk-vpa"
    token_keeps: Sequence[float] = (0.9, 0.8, 0.7)


@dataclass
class Candidate:
    """One mix of depth, tokens and widths, and how it scored."""

    blocks_removed: list[int]
    tokens: str | None  # the token schedule (None: no token reduction)
    width_cut: float  # the share of the candidate's latency the width prune removes
    status: str = "ok"  # ok, or why the candidate was skipped
    predicted_ms: float = 0.0
    predicted_cut: float = 0.0
    macs: int = 0
    kl: float | None = None
    agreement: float | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "model"}

    def describe(self) -> str:
        depth = f"-{len(self.blocks_removed)} blocks {self.blocks_removed}" if self.blocks_removed else "all blocks"
        return f"{depth}, tokens {self.tokens or 'none'}, widths -{self.width_cut:.1%} of their latency"


def token_blocks(depth: int) -> list[int]:
    """Blocks at a quarter, half and three quarters of ``depth`` (distinct, at least block 1)."""
    return sorted({min(depth - 1, max(1, round(depth * q))) for q in (0.25, 0.5, 0.75)})


@torch.no_grad()
def kl_to_teacher(student: nn.Module, teacher: nn.Module, batches: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Mean KL(teacher || student) of the predicted distributions, and top-1 agreement."""
    student.eval()
    kl = agree = n = 0.0
    for x in batches:
        t = F.log_softmax(logits_of(teacher(x)).float(), -1)
        s = F.log_softmax(logits_of(student(x)).float(), -1)
        kl += float(F.kl_div(s, t, log_target=True, reduction="sum"))
        agree += float((s.argmax(-1) == t.argmax(-1)).sum())
        n += x.shape[0]
    return kl / n, agree / n


def search(
    dense: nn.Module,
    teacher: nn.Module,
    table: LatencyTable,
    space: SearchSpace,
    progress: bool = False,
) -> tuple[Candidate, list[Candidate]]:
    """The best candidate (with its model) and every candidate tried (see the module docstring)."""
    dense.eval()
    teacher.eval()
    target = space.reduction
    base_ms = table.model_ms(dense)
    n_blocks = len(family_of(dense).spec(dense).blocks)
    loader = calibration_loader(space.data, dense, space.calib_images, 32, space.seed)
    importance = block_importance(dense, loader)
    order = torch.argsort(importance, stable=True).tolist()
    proxy = calibration_loader(space.data, dense, space.search_images, 64, space.seed + 1)
    batches = [x for x, _ in proxy]
    keeps: list[float | None] = [None]
    if space.token_method and family_of(dense).token_reduction:
        keeps += [float(k) for k in space.token_keeps]
    limit = n_blocks - 1 if space.max_depth_drop is None else min(n_blocks - 1, space.max_depth_drop)
    rows: list[Candidate] = []
    bar = tqdm(total=(limit + 1) * len(keeps), desc="search", unit="candidate", disable=not progress)
    try:
        for n in range(limit + 1):
            shallow = drop_blocks(dense, order[:n], importance, ("latency", target)) if n else dense
            depth_cut = 1 - table.model_ms(shallow) / base_ms
            if n > 0 and depth_cut > target + TOLERANCE:
                rows.append(Candidate(sorted(order[:n]), None, 0.0, f"{n} blocks alone remove {depth_cut:.1%}"))
                bar.update(len(keeps))
                break
            for keep in keeps:
                rows.append(_candidate(shallow, sorted(order[:n]), keep, base_ms, table, space, teacher, batches))
                bar.update(1)
    finally:
        bar.close()
    ok = [c for c in rows if c.status == "ok"]
    if not ok:
        reasons = "; ".join(sorted({c.status for c in rows}))[:300]
        raise VitCompressError(
            f"no mix of depth, tokens and widths reaches a {target:.1%} latency cut ({reasons}); lower the latency "
            "reduction or add granularities"
        )
    best = min(ok, key=lambda c: (c.kl, len(c.blocks_removed)))
    for c in rows:
        if c is not best:
            c.model = None
    return best, rows


def _candidate(
    shallow: nn.Module,
    removed: list[int],
    keep: float | None,
    base_ms: float,
    table: LatencyTable,
    space: SearchSpace,
    teacher: nn.Module,
    batches: Sequence[torch.Tensor],
) -> Candidate:
    """Tokens on the depth-pruned model, then the widths for what is left of the target; scored."""
    net = shallow
    sched = None
    if keep is not None:
        depth = len(family_of(shallow).spec(shallow).blocks)
        sched = f"{keep:g}@{','.join(map(str, token_blocks(depth)))}"
        net = apply_tokens(copy.deepcopy(shallow), parse_schedule(sched, space.token_method or "topk-vpa"))
    cand_ms = table.model_ms(net)
    need = 1 - (1 - space.reduction) * base_ms / cand_ms
    cand = Candidate(removed, sched, max(0.0, need))
    if need < -TOLERANCE:
        cand.status = f"depth and tokens alone remove {1 - cand_ms / base_ms:.1%}"
        return cand
    if need > MAX_WIDTH_CUT:
        cand.status = f"widths would have to lose {need:.0%} of the latency"
        return cand
    if need > TOLERANCE / 3:
        try:
            net = prune(
                net,
                latency_reduction=need,
                table=table,
                importance=space.importance,
                granularity=space.granularity,
                data=space.data,
                calib_images=space.calib_images,
                seed=space.seed,
            ).model
        except VitCompressError as e:
            cand.status = str(e).split(";")[0]
            return cand
    else:
        cand.width_cut = 0.0
    cand.predicted_ms = table.model_ms(net)
    cand.predicted_cut = 1 - cand.predicted_ms / base_ms
    cand.macs = count(net).macs
    cand.kl, cand.agreement = kl_to_teacher(net, teacher, batches)
    cand.model = net
    return cand
