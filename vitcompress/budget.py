"""Choosing what to keep under a MACs or parameter budget, with width alignment.

The unit of removal is the smallest change that keeps every constraint:

- ``heads``: one head of a layer (at least one head stays);
- ``qk`` / ``v``: the same number of dims from *every* kept head of a layer (each head drops its
  own least important dims), enough to bring the per-head width down to the next multiple of
  ``round_to`` (at least ``round_to`` dims, or one with ``round_to=1``, stay);
- ``mlp``: the least important neurons of a layer down to the next multiple of ``round_to``;
- ``embed``: the least important residual channels down to the next multiple of ``round_to``;
- ``depth``: one block (at least one block stays).

Each unit's importance is the mean score of its elements divided by the mean score of all elements
of its kind ("normalised per group kind"), so kinds with different score scales compete fairly.
Global mode removes the least important unit anywhere, repeatedly; uniform mode removes from the
(kind, layer) whose removed fraction would stay smallest, so every layer loses the same share
(counts differ by at most one unit). A unit that would overshoot the target by more than half a
percentage point is skipped; selection stops once the target is met. The achieved reduction must be
within ``tolerance`` (1.5 points) of the target, otherwise the budget is reported as unreachable.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import nn

from .counting import ArchInfo, macs, params
from .errors import VitCompressError
from .groups import Group
from .layers import attention_dims
from .plan import LayerPlan, Plan
from .spec import BlockSpec, ViTSpec, spec_from_model

OVERSHOOT = 0.005
TOLERANCE = 0.015  # the achieved reduction lands within 1.5 points of the target


@dataclass
class Budget:
    """Target: remove ``reduction`` (0 < R < 1) of ``metric`` ('macs' or 'params')."""

    metric: str
    reduction: float
    round_to: int = 8
    uniform: bool = False
    tolerance: float = TOLERANCE


def step_down(current: int, original: int, n: int) -> int:
    """How many to remove to reach the next multiple of ``n`` below ``current`` (0: not allowed)."""
    floor = n if original >= n else original
    s = current % n or n
    return s if current - s >= max(floor, 1) else 0


class _State:
    """Kept elements, each list ordered from least to most important (next to remove first)."""

    def __init__(self, model: nn.Module, groups: list[Group], scores: list[torch.Tensor]):
        self.spec0 = spec_from_model(model)
        self.embed = list(range(model.embed_dim))
        self.blocks = list(range(len(model.blocks)))
        self.heads: dict[int, list[int]] = {}
        self.qk: dict[int, dict[int, list[int]]] = {}
        self.v: dict[int, dict[int, list[int]]] = {}
        self.mlp: dict[int, list[int]] = {}
        self.score: dict[tuple, torch.Tensor] = {}
        for i, blk in enumerate(model.blocks):
            h, qk, v, _ = attention_dims(blk.attn)
            self.heads[i] = list(range(h))
            self.qk[i] = {j: list(range(qk)) for j in range(h)}
            self.v[i] = {j: list(range(v)) for j in range(h)}
            self.mlp[i] = list(range(blk.mlp.fc1.out_features))
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
                self.embed = sorted(self.embed, key=lambda j: float(s[j]))
            elif kind == "depth":
                self.blocks = sorted(self.blocks, key=lambda j: float(s[j]))

    def spec(self) -> ViTSpec:
        blocks = []
        for b in sorted(self.blocks):
            bs0 = self.spec0.blocks[b]
            h0 = self.heads[b][0]
            blocks.append(
                BlockSpec(
                    bs0.source_index,
                    len(self.heads[b]),
                    len(self.qk[b][h0]),
                    len(self.v[b][h0]),
                    len(self.mlp[b]),
                    bs0.scale,
                )
            )
        return ViTSpec(len(self.embed), blocks)

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
        return Plan(sorted(self.embed), sorted(self.blocks), layers)


def _unit(state: _State, kind: str, layer: int | None, n: int):
    """(normalised importance, removed fraction after, size, apply-function) of the next unit,
    or None when the (kind, layer) cannot shrink further."""
    s0 = state.spec0
    if kind == "heads":
        if layer not in state.blocks or len(state.heads[layer]) <= 1:
            return None
        j = state.heads[layer][0]
        imp = float(state.score[(kind, layer)][j]) / state.norm[kind]
        frac = 1 - (len(state.heads[layer]) - 1) / s0.blocks[layer].num_heads

        def apply():
            state.heads[layer].pop(0)

        return imp, frac, 1, apply
    if kind in ("qk", "v"):
        if layer not in state.blocks:
            return None
        table = state.qk if kind == "qk" else state.v
        heads = state.heads[layer]
        cur = len(table[layer][heads[0]])
        orig = s0.blocks[layer].qk_dim if kind == "qk" else s0.blocks[layer].v_dim
        k = step_down(cur, orig, n)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        tot = sum(float(sc[h, d]) for h in heads for d in table[layer][h][:k])
        imp = tot / (k * len(heads)) / state.norm[kind]

        def apply():
            for h in table[layer]:
                del table[layer][h][:k]

        return imp, 1 - (cur - k) / orig, k, apply
    if kind == "mlp":
        if layer not in state.blocks:
            return None
        cur = len(state.mlp[layer])
        k = step_down(cur, s0.blocks[layer].mlp_hidden, n)
        if not k:
            return None
        sc = state.score[(kind, layer)]
        imp = sum(float(sc[j]) for j in state.mlp[layer][:k]) / k / state.norm[kind]

        def apply():
            del state.mlp[layer][:k]

        return imp, 1 - (cur - k) / s0.blocks[layer].mlp_hidden, k, apply
    if kind == "embed":
        cur = len(state.embed)
        k = step_down(cur, s0.embed_dim, n)
        if not k:
            return None
        sc = state.score[(kind, None)]
        imp = sum(float(sc[j]) for j in state.embed[:k]) / k / state.norm[kind]

        def apply():
            del state.embed[:k]

        return imp, 1 - (cur - k) / s0.embed_dim, k, apply
    if kind == "depth":
        if len(state.blocks) <= 1:
            return None
        j = state.blocks[0]
        imp = float(state.score[(kind, None)][j]) / state.norm[kind]

        def apply():
            state.blocks.pop(0)

        return imp, 1 - (len(state.blocks) - 1) / s0.depth, 1, apply
    raise ValueError(kind)


def select(model: nn.Module, groups: list[Group], scores: list[torch.Tensor], budget: Budget) -> tuple[Plan, float]:
    """Choose a plan that removes ``budget.reduction`` of the metric; returns (plan, achieved)."""
    if budget.metric not in ("macs", "params"):
        raise ValueError(budget.metric)
    info = ArchInfo.from_model(model)
    measure = (lambda sp: macs(sp, info)) if budget.metric == "macs" else (lambda sp: params(sp, info))
    state = _State(model, groups, scores)
    base = measure(state.spec0)
    target, n = budget.reduction, max(1, int(budget.round_to))
    keys = [(g.kind, g.layer) for g in groups]
    version = {k: 0 for k in keys}
    heap: list = []
    counter = 0

    def push(key):
        nonlocal counter
        u = _unit(state, *key, n)
        if u is None:
            return
        imp, frac = u[0], u[1]
        order = (frac, imp) if budget.uniform else (imp,)
        heapq.heappush(heap, (order, counter, key, version[key]))
        counter += 1

    for k in keys:
        push(k)
    achieved = 0.0
    while heap and achieved < target:
        _, _, key, ver = heapq.heappop(heap)
        if ver != version[key]:
            continue
        u = _unit(state, *key, n)
        if u is None:
            continue
        kind, layer = key
        after = 1 - measure(_spec_after(state, kind, layer, u[2])) / base
        if after > target + OVERSHOOT:
            version[key] += 1  # this (kind, layer) is done: its units are too large now
            continue
        u[3]()
        achieved = after
        version[key] += 1
        push(key)
        if kind == "heads":  # per-head dim units of this layer now span fewer heads
            for dep in (("qk", layer), ("v", layer)):
                if dep in version:
                    version[dep] += 1
                    push(dep)
        if kind == "depth":
            for dep in version:
                if dep[1] is not None and dep[1] not in state.blocks:
                    version[dep] += 1
    if abs(achieved - target) > budget.tolerance:
        kinds = ",".join(sorted({g.kind for g in groups}))
        raise VitCompressError(
            f"budget unreachable: removing {target:.1%} of {budget.metric} with granularity {kinds} "
            f"and round-to {n} gets to {achieved:.1%} at best (tolerance {budget.tolerance:.1%}); "
            "add granularities (e.g. mlp,heads), lower the reduction or use a smaller --round-to"
        )
    plan = state.plan()
    plan.validate()
    return plan, achieved


def _spec_after(state: _State, kind: str, layer: int | None, k: int) -> ViTSpec:
    """The spec the state would have after removing a unit of ``k`` elements."""
    spec = state.spec()
    if kind == "embed":
        spec.embed_dim -= k
        return spec
    if kind == "depth":
        spec.blocks = [b for b in spec.blocks if b.source_index != state.spec0.blocks[state.blocks[0]].source_index]
        return spec
    pos = sorted(state.blocks).index(layer)
    b = spec.blocks[pos]
    if kind == "heads":
        b.num_heads -= 1
    elif kind == "qk":
        b.qk_dim -= k
    elif kind == "v":
        b.v_dim -= k
    else:
        b.mlp_hidden -= k
    return spec
