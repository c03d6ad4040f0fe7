"""Choosing what to keep under a cost budget (MACs, params or any ``cost(spec)``), with aligned widths.

The unit of removal is the smallest change that keeps every constraint:

- ``heads``: one head of a layer (at least one head stays);
- ``qk`` / ``v``: the same number of dims from *every* kept head of a layer (each head drops its
  own least important dims), enough to bring the per-head width down to the next multiple of
  ``round_to`` (at least ``round_to`` dims, or one with ``round_to=1``, stay);
- ``mlp``: the least important neurons of a layer down to the next multiple of ``round_to``;
- ``embed``: the least important residual channels of a stage down to the next multiple of
  ``round_to``;
- ``depth``: one block (the family says which blocks may go: at least one stays; in a multi-stage
  family at least one per stage).

``Budget.allowed`` replaces the multiples of ``round_to`` by any set of allowed widths per (kind,
layer) (for example the widths where latency actually changes on a backend); ``Budget.cost``
replaces the family's MACs or params by any ``cost(spec) -> float`` (for example a latency
predictor); ``Budget.order`` replaces the ranking key of a unit (its normalised importance) by any
``order(importance, spec, spec_without_the_unit) -> float`` (for example importance per latency
saved). How a spec changes when a unit goes is the family's (``Family.shrink``).

Each unit's importance is the mean score of its elements divided by the mean score of all elements
of its kind ("normalised per group kind"), so kinds with different score scales compete fairly.
Global mode removes the least important unit anywhere, repeatedly; uniform mode removes from the
(kind, layer) whose removed fraction would stay smallest, so every layer loses the same share
(counts differ by at most one unit). A unit that would overshoot the target by more than half a
percentage point is skipped; selection stops once the target is met. The achieved reduction must be
within ``tolerance`` (1.5 points) of the target. When the greedy pass misses it, ``select`` looks
for a plan within the tolerance (units overshooting by up to the tolerance; the kinds' subsets
first, then every kind) and otherwise reports the budget as unreachable with the nearest reductions
it found below and above the target.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from .errors import VitCompressError
from .families import Family, family_of
from .groups import LAYER_KINDS, Group
from .plan import LayerPlan, Plan
from .spec import Spec, copy_block
from .tokens.counting import tokens_of
from .tokens.schedule import TokenSchedule

OVERSHOOT = 0.005
TOLERANCE = 0.015  # the achieved reduction lands within 1.5 points of the target

#: ``allowed(kind, layer, original) -> widths``: the element counts a (kind, layer) may shrink to
#: (None: the default rule for that kind)
AllowedWidths = Callable[[str, "int | None", int], "Collection[int] | None"]
#: ``order(importance, spec, candidate) -> key``: the ranking key of the unit that turns ``spec`` into
#: ``candidate`` (smallest removed first; default: the normalised importance alone)
UnitOrder = Callable[[float, Spec, Spec], float]


@dataclass
class Budget:
    """Target: remove ``reduction`` (0 < R < 1) of ``metric``.

    ``metric`` is 'macs' or 'params' (counted by the model's family) unless ``cost`` is given, then
    it only names what ``cost`` measures (e.g. 'latency'). ``allowed`` restricts the widths (see the
    module docstring); without it, widths are multiples of ``round_to``. ``order`` ranks the units
    (see the module docstring); a unit's key is computed when it is queued and again when it comes
    up, and a key that grew meanwhile puts the unit back in the queue. ``tokens`` is the token
    schedule the pruned model will run (MACs are then counted with its per-block token counts, as
    ``counting.count`` counts a model carrying it).
    """

    metric: str
    reduction: float
    round_to: int = 8
    uniform: bool = False
    tolerance: float = TOLERANCE
    cost: Callable[[Spec], float] | None = None
    allowed: AllowedWidths | None = None
    order: UnitOrder | None = None
    tokens: TokenSchedule | None = None


def step_down(current: int, original: int, n: int) -> int:
    """How many to remove to reach the next multiple of ``n`` below ``current`` (0: not allowed)."""
    floor = n if original >= n else original
    s = current % n or n
    return s if current - s >= max(floor, 1) else 0


def step(budget: Budget, kind: str, layer: int | None, current: int, original: int) -> int:
    """Elements the next unit of (kind, layer) removes (0: it cannot shrink further)."""
    widths = budget.allowed(kind, layer, original) if budget.allowed is not None else None
    if widths is not None:
        lower = [w for w in widths if 1 <= w < current]
        return current - max(lower) if lower else 0
    if kind == "heads":
        return 1 if current > 1 else 0
    return step_down(current, original, max(1, int(budget.round_to)))


class _State:
    """Kept elements, each list ordered from least to most important (next to remove first), and
    the spec they make."""

    def __init__(self, fam: Family, model: nn.Module, groups: list[Group], scores: list[torch.Tensor]):
        self.fam = fam
        self.spec = fam.spec(model)
        full = fam.identity_plan(model)
        self.embeds = [list(e) for e in full.embeds]
        self.blocks = list(full.blocks)
        self.heads: dict[int, list[int]] = {}
        self.qk: dict[int, dict[int, list[int]]] = {}
        self.v: dict[int, dict[int, list[int]]] = {}
        self.mlp: dict[int, list[int]] = {}
        self.orig: dict[tuple, int] = {("depth", None): len(full.blocks)}
        for s, e in enumerate(full.embeds):
            self.orig[("embed", s)] = len(e)
        for b, lp in full.layers.items():
            self.heads[b] = list(lp.heads)
            self.qk[b] = {h: list(d) for h, d in zip(lp.heads, lp.qk)}
            self.v[b] = {h: list(d) for h, d in zip(lp.heads, lp.v)}
            self.mlp[b] = list(lp.mlp)
            self.orig.update(
                {("heads", b): len(lp.heads), ("qk", b): len(lp.qk[0]), ("v", b): len(lp.v[0]), ("mlp", b): len(lp.mlp)}
            )
        self.score: dict[tuple, torch.Tensor] = {}
        by_kind: dict[str, list[torch.Tensor]] = {}
        for g, s in zip(groups, scores):
            s = s.detach().to(torch.float64).cpu()
            self.score[(g.kind, g.layer)] = s
            by_kind.setdefault(g.kind, []).append(s.reshape(-1))
        self.norm = {k: float(torch.cat(v).mean()) + 1e-30 for k, v in by_kind.items()}
        # order each kept list by score, least important first
        for (kind, layer), s in self.score.items():
            if kind == "heads":
                self.heads[layer] = sorted(self.heads[layer], key=lambda j: float(s[j]))
            elif kind in ("qk", "v"):
                table = self.qk if kind == "qk" else self.v
                for h in table[layer]:
                    table[layer][h] = sorted(table[layer][h], key=lambda d: float(s[h, d]))
            elif kind == "mlp":
                self.mlp[layer] = sorted(self.mlp[layer], key=lambda j: float(s[j]))
            elif kind == "embed":
                st = layer or 0
                self.embeds[st] = sorted(self.embeds[st], key=lambda j: float(s[j]))
            elif kind == "depth":
                self.blocks = sorted(self.blocks, key=lambda j: float(s[j]))

    def position(self, block: int) -> int:
        """Index of kept ``block`` in the current spec."""
        return sorted(self.blocks).index(block)

    def plan(self) -> Plan:
        layers = {}
        for b in self.blocks:
            heads = sorted(self.heads[b])
            layers[b] = LayerPlan(
                heads,
                [sorted(self.qk[b][h]) for h in heads],
                [sorted(self.v[b][h]) for h in heads],
                sorted(self.mlp[b]),
            )
        embeds = [sorted(e) for e in self.embeds]
        return Plan(embeds[0], sorted(self.blocks), layers, embeds[1:])


def _unit(state: _State, budget: Budget, kind: str, layer: int | None):
    """(normalised importance, removed fraction after, size, apply-function, shrink arguments) of
    the next unit of (kind, layer), or None when it cannot shrink further."""
    if kind in LAYER_KINDS and layer not in state.blocks:
        return None
    orig = state.orig[(kind, layer if kind != "embed" else layer or 0)]
    if kind == "heads":
        cur = len(state.heads[layer])
        k = step(budget, kind, layer, cur, orig)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        imp = sum(float(sc[j]) for j in state.heads[layer][:k]) / k / state.norm[kind]

        def apply():
            del state.heads[layer][:k]

        return imp, 1 - (cur - k) / orig, k, apply, (kind, state.position(layer), k)
    if kind in ("qk", "v"):
        table = state.qk if kind == "qk" else state.v
        heads = state.heads[layer]
        cur = len(table[layer][heads[0]])
        k = step(budget, kind, layer, cur, orig)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        tot = sum(float(sc[h, d]) for h in heads for d in table[layer][h][:k])
        imp = tot / (k * len(heads)) / state.norm[kind]

        def apply():
            for h in table[layer]:
                del table[layer][h][:k]

        return imp, 1 - (cur - k) / orig, k, apply, (kind, state.position(layer), k)
    if kind == "mlp":
        cur = len(state.mlp[layer])
        k = step(budget, kind, layer, cur, orig)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        imp = sum(float(sc[j]) for j in state.mlp[layer][:k]) / k / state.norm[kind]

        def apply():
            del state.mlp[layer][:k]

        return imp, 1 - (cur - k) / orig, k, apply, (kind, state.position(layer), k)
    if kind == "embed":
        st = layer or 0
        kept = state.embeds[st]
        cur = len(kept)
        k = step(budget, kind, layer, cur, orig)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        imp = sum(float(sc[j]) for j in kept[:k]) / k / state.norm[kind]

        def apply():
            del kept[:k]

        return imp, 1 - (cur - k) / orig, k, apply, (kind, st, k)
    if kind == "depth":
        j = next((b for b in state.blocks if state.fam.can_remove_block(state.spec, state.position(b))), None)
        if j is None:
            return None
        imp = float(state.score[(kind, None)][j]) / state.norm[kind]

        def apply():
            state.blocks.remove(j)

        return imp, 1 - (len(state.blocks) - 1) / orig, 1, apply, (kind, state.position(j), 1)
    raise ValueError(kind)


class _Pass:
    """One greedy selection on its own ``_State``: repeatedly remove the next unit (least important,
    or in uniform mode the (kind, layer) with the smallest removed share) of the allowed keys."""

    def __init__(self, fam: Family, model: nn.Module, groups, scores, budget: Budget, measure, base: float):
        self.fam, self.budget, self.measure, self.base = fam, budget, measure, base
        self.state = _State(fam, model, groups, scores)
        self.keys = [(g.kind, g.layer) for g in groups]
        self.achieved = 0.0
        self.blocked = False  # a unit was refused because it overshot the limit

    def run(self, kinds: Collection[str], target: float, limit: float) -> float:
        """Remove units of ``kinds`` until ``target`` is reached or no unit fits under
        ``target + limit``; returns the reduction achieved so far."""
        state, budget = self.state, self.budget
        keys = [k for k in self.keys if k[0] in kinds]
        version = {k: 0 for k in keys}
        heap: list = []
        counter = 0

        def candidate(kind, u) -> Spec:
            cand = Spec(list(state.spec.stage_dims), list(state.spec.blocks))  # blocks shared with the current spec
            if kind in LAYER_KINDS:
                i = u[4][1]
                cand.blocks[i] = copy_block(cand.blocks[i])  # the one shrink may change
            self.fam.shrink(cand, *u[4])
            return cand

        def rank(key, u, cand=None) -> tuple:
            imp = u[0] if budget.order is None else budget.order(u[0], state.spec, cand or candidate(key[0], u))
            return (u[1], imp) if budget.uniform else (imp,)

        def push(key, u=None, cand=None):
            nonlocal counter
            u = u or _unit(state, budget, *key)
            if u is None:
                return
            heapq.heappush(heap, (rank(key, u, cand), counter, key, version[key]))
            counter += 1

        for k in keys:
            push(k)
        while heap and self.achieved < target:
            ranked, _, key, ver = heapq.heappop(heap)
            if ver != version[key]:
                continue
            u = _unit(state, budget, *key)
            if u is None:
                continue
            kind, layer = key
            cand = candidate(kind, u)
            if budget.order is not None:  # the key may have grown since it was queued (the spec changed)
                fresh = rank(key, u, cand)
                if fresh > ranked and heap and fresh > heap[0][0]:
                    push(key, u, cand)
                    continue
            after = 1 - self.measure(cand) / self.base
            if after > target + limit:
                version[key] += 1  # this (kind, layer) is done: its units are too large now
                self.blocked = True
                continue
            u[3]()
            state.spec = cand
            self.achieved = after
            version[key] += 1
            push(key)
            if kind == "heads":  # per-head dim units of this layer now span fewer heads
                for dep in (("qk", layer), ("v", layer)):
                    if dep in version:
                        version[dep] += 1
                        push(dep)
            if kind == "depth":
                for dep in version:
                    if dep[0] in LAYER_KINDS and dep[1] not in state.blocks:
                        version[dep] += 1
        return self.achieved


def _subsets(kinds: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Non-empty proper subsets of ``kinds``, the largest first."""
    return [s for r in range(len(kinds) - 1, 0, -1) for s in itertools.combinations(kinds, r)]


def default_measure(fam: Family, model: nn.Module, budget: Budget) -> Callable[[Spec], float]:
    """The family's MACs or params of a spec, MACs with ``budget.tokens``' token counts."""
    if budget.metric == "macs" and budget.tokens is not None:
        info = fam.arch_info(model)
        per_block = tokens_of(fam.token_layout(info), budget.tokens, len(fam.spec(model).blocks))
        return lambda sp: fam.macs(sp, info, per_block(sp))
    return fam.cost(model, budget.metric)


def select(
    model: nn.Module, groups: list[Group], scores: list[torch.Tensor], budget: Budget, family: Family | None = None
) -> tuple[Plan, float]:
    """Choose a plan that removes ``budget.reduction`` of the cost; returns (plan, achieved).

    The greedy pass (module docstring) decides whenever it lands within the tolerance. Otherwise a
    plan within the tolerance is looked for in this order: the same pass continued with units that
    overshoot by up to the tolerance; then, for each subset of the kinds (the largest first), the
    pass restricted to the subset first and continued with every kind (coarse units such as blocks
    or embedding channels can fit only before finer units have used the budget up). When none
    lands within the tolerance, the error names the nearest reductions found below and above the
    target (only the one below when nothing more can be removed). ``family``: the model's, when the
    caller already knows it (else ``family_of``)."""
    fam = family or family_of(model)
    if budget.cost is None and budget.metric not in ("macs", "params"):
        raise ValueError(budget.metric)
    measure = budget.cost or default_measure(fam, model, budget)
    target, tol = budget.reduction, budget.tolerance
    kinds = tuple(dict.fromkeys(g.kind for g in groups))
    base = measure(fam.spec(model))

    def new_pass() -> _Pass:
        return _Pass(fam, model, groups, scores, budget, measure, base)

    def within(p: _Pass) -> bool:
        return abs(p.achieved - target) <= tol

    first = new_pass()
    first.run(kinds, target, OVERSHOOT)
    found = [first]
    if not within(first) and first.achieved < target and first.blocked:
        first.run(kinds, target, tol)
        if not within(first):
            for subset in _subsets(kinds):
                p = new_pass()
                p.run(subset, target, OVERSHOOT)
                p.run(kinds, target, OVERSHOOT)
                p.run(kinds, target, tol)
                found.append(p)
                if within(p):
                    break
    best = next((p for p in found if within(p)), None)
    if best is None:
        below = max((p.achieved for p in found if p.achieved < target), default=0.0)
        above = None
        if first.blocked:  # the smallest step past the target
            over = new_pass()
            over.run(kinds, target, OVERSHOOT)
            over.run(kinds, target, float("inf"))
            above = over.achieved if over.achieved > target else None
        n = max(1, int(budget.round_to))
        reach = f"can remove {below:.1%} or {above:.1%}" if above is not None else f"can remove at most {below:.1%}"
        raise VitCompressError(
            f"budget unreachable: removing {target:.1%} of {budget.metric} with granularity {','.join(sorted(kinds))} "
            f"and round_to={n} {reach} (tolerance {tol:.1%}); "
            "add granularities (e.g. mlp,heads), lower the reduction or use a smaller round_to",
            params=["round_to"],
        )
    plan = best.state.plan()
    plan.validate()
    return plan, best.achieved
