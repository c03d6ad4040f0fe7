"""The latency model: a measured table per (model, backend, batch, precision) and the predictor on it.

A table (``LatencyTable``, written by ``vitcompress profile``; the measuring is in
``vitcompress.latency_search.profile``) holds, for one model on one backend:

- ``attn_ms[embed][tokens][heads][qk][v]``: one pre-norm attention sublayer (norm, fused qkv
  projection, softmax attention, output projection, residual add) on ``tokens`` tokens;
- ``mlp_ms[embed][tokens][mlp]``: one MLP sublayer (norm, fc1, activation, fc2, residual add);
- ``rest_ms[embed]``: everything outside the blocks (patch embedding and stem, prefix tokens,
  position embedding, final norm, pooling, classifier), measured as the model with no blocks;

each on a coarse grid of its arguments. The per-call overhead of the backend (timed on an empty
probe) is subtracted from the sublayer figures, so that a model's latency is **additive**::

    latency(spec) = rest(embed) + sum over blocks [attn(embed, t_in, heads, qk, v) + mlp(embed, t_out, mlp)]

with ``t_in``/``t_out`` the tokens entering the block and leaving its token reducer (the model's
token schedule; every token without one), plus the token reducers' own time where the table
measured the schedule's reducer (``reducers``: the selection in a reducing block, the
proportional-attention bias in the blocks after it). Between grid points the table is interpolated
multilinearly (outside it, extrapolated linearly from the last two points).

**Steps.** Kernels work in tiles, so latency as a function of a width is a staircase: constant up
to the next multiple of some step, then a jump. The profile measures each width kind (q/k dim, v
dim, MLP width, embedding) over a fine window of consecutive widths and keeps the step ``p``
whose staircase ``a + b * ceil(w / p) * p`` fits the measurements best (``detect_step``). Only
the tops of the stairs are worth keeping (a width between two multiples costs as much as the next
multiple), so a latency budget lets each kind shrink to multiples of its step only
(``LatencyTable.allowed``), and the predictor reads a width ``w`` at ``ceil(w / p) * p``.

The predictor plugs into the pruning budget (``vitcompress.budget``): ``latency_budget(model,
table, reduction)`` is a ``Budget`` whose cost is the predicted latency, whose allowed widths are
the measured steps and whose units are ranked by importance per latency saved relative to MACs
saved (``LatencyTable.order``): with latency proportional to MACs this is the MACs ranking, and it
removes first what costs more time than its MACs suggest.

Predicted milliseconds are scaled so that the dense model's prediction equals its measured latency
(``scale``); reductions (``1 - predicted / predicted dense``) do not depend on the scale.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .budget import Budget
from .errors import VitCompressError
from .families import BlockTokens, Family, family_of
from .io import atomic_file
from .meta import attached
from .models import infer_source
from .spec import SourceModel, Spec
from .tokens.apply import build_reducers, schedule_of
from .tokens.counting import block_tokens
from .tokens.schedule import TokenSchedule

FORMAT = "vitcompress-latency-table"
VERSION = 1
#: families whose blocks the probes reproduce (pre-norm ViT blocks on one residual stream)
LATENCY_FAMILIES = ("vit", "hybrid")
#: width kinds with a detected step (heads always step by one)
WIDTH_KINDS = ("qk", "v", "mlp", "embed")
#: steps ``detect_step`` chooses from
STEP_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
#: the share of the straight line's residual a step above 1 must explain to be kept
STEP_GAIN = 0.15
ATTN_AXES = ("embed", "tokens", "heads", "qk", "v")
MLP_AXES = ("embed", "tokens", "mlp")


def check_family(fam: Family) -> None:
    """A one-line error for a family the latency model does not cover."""
    if fam.name not in LATENCY_FAMILIES:
        raise VitCompressError(
            f"latency tables cover the {' and '.join(LATENCY_FAMILIES)} families (pre-norm blocks on one residual stream), "
            f"not {fam.name}; use flops_reduction for this model",
            params=["flops_reduction"],
        )


def source_of(model: nn.Module) -> SourceModel:
    """The unpruned model ``model`` comes from (its artifact record, else inferred)."""
    meta = attached(model)
    return meta.source if meta is not None else infer_source(model)


def full_widths(model: nn.Module) -> dict[str, int]:
    """The profiled model's widths: embedding, widest block's heads, q/k, v and MLP, tokens, depth."""
    fam = family_of(model)
    spec = fam.spec(model)
    n, p, _ = fam.token_layout(fam.arch_info(model))
    return {
        "embed": spec.embed_dim,
        "heads": max(b.num_heads for b in spec.blocks),
        "qk": max(b.qk_dim for b in spec.blocks),
        "v": max(b.v_dim for b in spec.blocks),
        "mlp": max(b.mlp_hidden for b in spec.blocks),
        "tokens": n + p,
        "prefix": p,
        "depth": spec.depth,
    }


def snap(w: float, step: int, top: int) -> int:
    """The top of ``w``'s stair: the next multiple of ``step`` at or above ``w`` (at most ``top``)."""
    w = int(math.ceil(w - 1e-9))
    if step <= 1:
        return w
    return min(int(top), int(math.ceil(w / step)) * step) if w < top else w


def stair_widths(full: int, step: int, points: int, low: int | None = None) -> list[int]:
    """``points`` widths from ``low`` (default ``step``) to ``full``, each a multiple of ``step``
    (``full`` itself always included)."""
    low = max(1, step if low is None else low)
    raw = np.linspace(low, full, max(1, points))
    out = sorted({min(full, snap(w, step, full)) for w in raw} | {full})
    return out


def detect_step(
    widths: Sequence[int], ms: Sequence[float], candidates: Sequence[int] = STEP_CANDIDATES
) -> tuple[int, dict[int, float]]:
    """The step ``p`` whose staircase ``ms ~ a + b * ceil(w / p) * p`` fits the measurements best
    (least squares), and every candidate's residual sum of squares.

    Candidates need at least two whole stairs inside the window (``p <= len(widths) / 2``). A step
    above 1 is kept only when it leaves at most ``1 - STEP_GAIN`` of the straight line's residual
    (step 1): on a sweep that is a line plus noise, some step always fits the noise a little better,
    and a wrong step would forbid widths that cost less."""
    w = np.asarray(widths, dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    if w.size < 4:
        return 1, {1: 0.0}
    rss = {}
    for p in candidates:
        if p > 1 and p > w.size / 2:
            continue
        x = np.ceil(w / p) * p
        a = np.stack([np.ones_like(x), x], 1)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        rss[int(p)] = float(((a @ coef - y) ** 2).sum())
    line = rss[1]
    steps = [p for p in rss if p == 1 or rss[p] <= (1 - STEP_GAIN) * line]
    best = min(steps, key=lambda p: (rss[p], p))
    return best, rss


def isotonic(y: Sequence[float] | np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def monotone(values: np.ndarray, passes: int = 3) -> np.ndarray:
    """``values`` made non-decreasing along every axis (isotonic fits along each axis in turn): a
    sublayer never gets faster when a width or the token count grows, so a measurement that says
    otherwise is noise. Values that are monotone already are returned unchanged."""
    out = np.asarray(values, dtype=np.float64).copy()
    for _ in range(passes):
        for axis in range(out.ndim):
            out = np.apply_along_axis(isotonic, axis, out)
    return out


def interpolate(values: np.ndarray, axes: Sequence[np.ndarray], point: Sequence[float]) -> float:
    """Multilinear interpolation of ``values`` (one dimension per axis, axes ascending) at ``point``;
    outside an axis, linear extrapolation from its last two points."""
    v = values
    for ax, x in zip(axes, point):
        if len(ax) == 1:
            v = v[0]
            continue
        i = int(np.clip(np.searchsorted(ax, x), 1, len(ax) - 1))
        x0, x1 = float(ax[i - 1]), float(ax[i])
        t = (float(x) - x0) / (x1 - x0)
        v = v[i - 1] * (1.0 - t) + v[i] * t
    return float(v)


@dataclass
class LatencyTable:
    """Measured latency of one model's structures on one backend (see the module docstring).

    ``reducers`` holds, per token reducer that was profiled, its own time in a reducing block
    (``reduce_ms`` over ``tokens`` entering it) and in a later block that adds the proportional-
    attention bias (``after_ms`` over ``tokens_after``). ``full`` holds the profiled model's widths (``embed``, ``heads``, ``qk``, ``v``, ``mlp``,
    ``tokens`` entering the first block, ``depth``); ``grid`` the widths each axis was measured at;
    ``steps`` the detected step per width kind; ``sweeps`` the fine windows the steps came from
    (widths, milliseconds, residual per candidate step); ``dense`` the whole dense model measured and
    predicted; ``timing`` the timing settings; ``env`` the machine and libraries
    (``benchmarks.env.capture``)."""

    backend: str
    batch: int
    precision: str
    mode: str
    threads: int
    source: dict
    family: str
    full: dict
    steps: dict
    grid: dict
    attn_ms: list
    mlp_ms: list
    rest_ms: list
    overhead_ms: float = 0.0
    reducers: dict = field(default_factory=dict)
    sweeps: dict = field(default_factory=dict)
    dense: dict = field(default_factory=dict)
    as_measured: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    seconds: float = 0.0
    version: int = VERSION

    def __post_init__(self) -> None:
        self._attn = np.asarray(self.attn_ms, dtype=np.float64)
        self._mlp = np.asarray(self.mlp_ms, dtype=np.float64)
        self._rest = np.asarray(self.rest_ms, dtype=np.float64)
        self._axes = {k: np.asarray(v, dtype=np.float64) for k, v in self.grid.items()}
        shape_a = tuple(len(self.grid[a]) for a in ATTN_AXES)
        shape_m = tuple(len(self.grid[a]) for a in MLP_AXES)
        if self._attn.shape != shape_a or self._mlp.shape != shape_m or self._rest.shape != (len(self.grid["embed"]),):
            raise VitCompressError(
                f"latency table is inconsistent (attention {self._attn.shape} for grid {shape_a}, MLP "
                f"{self._mlp.shape} for {shape_m}); profile the model again with vitcompress profile"
            )
        self._block = functools.lru_cache(maxsize=65536)(self._block_ms)

    # ------------------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise VitCompressError(
                "not a latency table (no vitcompress-latency-table format); write one with vitcompress profile"
            )
        if int(d.get("version", 0)) > VERSION:
            raise VitCompressError(
                f"latency table version {d.get('version')} is newer than this vitcompress reads ({VERSION}); upgrade vitcompress"
            )
        names = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, KeyError) as e:
            raise VitCompressError(
                f"latency table is incomplete ({e}); profile the model again with vitcompress profile"
            ) from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically)."""
        path = Path(path)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by ``save`` (one-line errors for a missing or foreign file)."""
        p = Path(path)
        if not p.is_file():
            raise VitCompressError(
                f"latency table {str(p)!r} does not exist; write one with vitcompress profile MODEL -o {p}"
            )
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else type(e).__name__
            raise VitCompressError(f"latency table {str(p)!r} is not valid JSON ({why}); profile again") from None
        return cls.from_dict(d)

    def describe(self) -> str:
        """One line: model, backend, batch, precision, threads."""
        return (
            f"{self.source.get('name')} on {self.backend} (batch {self.batch}, {self.precision}, {self.mode}, "
            f"{self.threads} threads)"
        )

    # ------------------------------------------------------------------------ predictor
    def step(self, kind: str) -> int:
        return int(self.steps.get(kind, 1))

    def _snap(self, kind: str, w: int) -> int:
        return snap(w, self.step(kind), int(self.full[kind]))

    def attn(self, embed: int, tokens: int, heads: int, qk: int, v: int) -> float:
        """One attention sublayer (ms, per-call overhead removed); widths read at their stair tops."""
        point = (self._snap("embed", embed), tokens, heads, self._snap("qk", qk), self._snap("v", v))
        return interpolate(self._attn, [self._axes[a] for a in ATTN_AXES], point)

    def mlp(self, embed: int, tokens: int, hidden: int) -> float:
        """One MLP sublayer (ms, per-call overhead removed)."""
        point = (self._snap("embed", embed), tokens, self._snap("mlp", hidden))
        return interpolate(self._mlp, [self._axes[a] for a in MLP_AXES], point)

    def rest(self, embed: int) -> float:
        """Everything outside the blocks (ms)."""
        return interpolate(self._rest, [self._axes["embed"]], (self._snap("embed", embed),))

    def _block_ms(self, d: int, t_in: int, t_out: int, h: int, qk: int, v: int, m: int) -> float:
        return self.attn(d, t_in, h, qk, v) + self.mlp(d, t_out, m)

    def reducer_ms(self, schedule: TokenSchedule, tokens: Sequence[BlockTokens]) -> list[float]:
        """The token reducers' own time per block (ms): ``reduce_ms`` at the tokens entering a reducing
        block, ``after_ms`` at those entering a later block that adds the proportional-attention
        bias; zeros when the table has no measurement of the schedule's reducer."""
        probe = self.reducers.get(schedule.method)
        roles = token_roles(schedule, len(tokens), int(self.full.get("prefix", 1)))
        if probe is None:
            return [0.0] * len(tokens)
        out = []
        for role, bt in zip(roles, tokens):
            ms = 0.0
            if "reduce" in role:
                ms += interpolate(np.asarray(probe["reduce_ms"]), [np.asarray(probe["tokens"], float)], (bt.t_in,))
            if "after" in role:
                ms += interpolate(np.asarray(probe["after_ms"]), [np.asarray(probe["tokens_after"], float)], (bt.t_in,))
            out.append(max(0.0, ms))
        return out

    def unscaled(
        self,
        spec: Spec,
        tokens: Sequence[BlockTokens] | None = None,
        schedule: TokenSchedule | None = None,
    ) -> float:
        """Predicted latency (ms) of a model with ``spec`` on ``tokens`` per block (its ``schedule``'s
        counts; every token by default) before the dense-model scaling."""
        d = spec.embed_dim
        t = int(self.full["tokens"])
        total = self.rest(d)
        for i, b in enumerate(spec.blocks):
            t_in, t_out = (tokens[i].t_in, tokens[i].t_out) if tokens is not None else (t, t)
            total += self._block(d, int(t_in), int(t_out), b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden)
        if schedule is not None and tokens is not None:
            total += sum(self.reducer_ms(schedule, tokens))
        return total

    @property
    def scale(self) -> float:
        """Measured / predicted latency of the dense model (1 when it was not measured)."""
        meas, pred = self.dense.get("measured_ms"), self.dense.get("predicted_ms")
        return float(meas) / float(pred) if meas and pred else 1.0

    def predict(
        self,
        spec: Spec,
        tokens: Sequence[BlockTokens] | None = None,
        schedule: TokenSchedule | None = None,
    ) -> float:
        """Predicted latency (ms per batch) of a model with ``spec`` on ``tokens`` per block (with the
        reducers' own time where ``schedule`` is given and the table measured its reducer)."""
        return self.unscaled(spec, tokens, schedule) * self.scale

    # ---------------------------------------------------------------- models and budgets
    def check(self, model: nn.Module, family: Family | None = None) -> Family:
        """The model's family (``family`` when the caller already knows it, else asked with
        ``family_of``); a one-line error when the table was not measured for this model."""
        fam = family or family_of(model)
        check_family(fam)
        src = source_of(model).to_dict()
        if src != self.source:
            raise VitCompressError(
                f"the latency table was measured for {self.source.get('name')} {self.source.get('kwargs')}, not for "
                f"{src['name']} {src['kwargs']}; profile this model first (vitcompress profile MODEL with backend={self.backend})",
                params=["backend"],
            )
        spec = fam.spec(model)
        wide = [
            (k, w, self.full[k])
            for k, w in (
                ("embed", spec.embed_dim),
                ("heads", max(b.num_heads for b in spec.blocks)),
                ("qk", max(b.qk_dim for b in spec.blocks)),
                ("v", max(b.v_dim for b in spec.blocks)),
                ("mlp", max(b.mlp_hidden for b in spec.blocks)),
            )
            if w > self.full[k]
        ]
        if wide:
            k, w, f = wide[0]
            raise VitCompressError(f"the model's {k} width {w} is above the latency table's {f}; profile this model")
        tokens = fam.token_layout(fam.arch_info(model))
        if tokens[0] + tokens[1] != int(self.full["tokens"]):
            raise VitCompressError(
                f"the model sees {tokens[0] + tokens[1]} tokens, the latency table was measured on {self.full['tokens']}; "
                "profile the model at its image size"
            )
        return fam

    def cost(
        self, model: nn.Module, schedule: TokenSchedule | None = None, family: Family | None = None
    ) -> Callable[[Spec], float]:
        """``spec -> predicted ms`` for specs of ``model`` running ``schedule`` (default: the one it
        carries), to plug into ``Budget.cost`` (``family``: the model's, when the caller knows it)."""
        fam = self.check(model, family)
        layout = fam.token_layout(fam.arch_info(model))
        sched = schedule if schedule is not None else schedule_of(model)
        if sched is None:
            return lambda sp: self.predict(sp)
        return lambda sp: self.predict(sp, block_tokens(sp, layout, sched), sched)

    def model_ms(self, model: nn.Module, schedule: TokenSchedule | None = None) -> float:
        """Predicted latency (ms per batch) of ``model`` (with its token schedule)."""
        return self.cost(model, schedule)(family_of(model).spec(model))

    def allowed(self, kinds: Collection[str] = WIDTH_KINDS) -> Callable[[str, int | None, int], list[int] | None]:
        """``Budget.allowed``: each width kind may shrink to multiples of its step (and keeps its
        original width); heads and depth follow the default rule."""

        def widths(kind: str, layer: int | None, original: int) -> list[int] | None:
            if kind not in kinds or kind not in WIDTH_KINDS:
                return None
            p = self.step(kind)
            return sorted(set(range(p, original + 1, p)) | {original})

        return widths

    def order(
        self, model: nn.Module, cost: Callable[[Spec], float], family: Family | None = None
    ) -> Callable[[float, Spec, Spec], float]:
        """``Budget.order``: a unit's importance times the share of MACs it saves over the share of
        latency it saves (the MACs ranking when latency is proportional to MACs; units that save
        more time than their MACs suggest go first, units that save no time last). ``family``: the
        model's, when the caller already knows it (else asked with ``family_of``)."""
        fam = family or family_of(model)
        macs = fam.cost(model, "macs")
        spec = fam.spec(model)
        m0, l0 = macs(spec), cost(spec)

        def key(importance: float, current: Spec, candidate: Spec) -> float:
            saved_l = (cost(current) - cost(candidate)) / l0
            saved_m = (macs(current) - macs(candidate)) / m0
            if saved_l <= 1e-12:
                return math.inf
            return importance * max(saved_m, 1e-12) / saved_l

        return key


def token_roles(schedule: TokenSchedule, depth: int, prefix: int) -> list[str]:
    """Per block, what the schedule's reducers add to it: ``"reduce"`` (it reduces), ``"after"``
    (it adds the proportional-attention bias of an earlier size-tracking reducer), both, or ``""``."""
    reducers = build_reducers(schedule, depth, prefix)
    first = next((i for i, r in enumerate(reducers) if r is not None), None)
    head = reducers[first] if first is not None else None
    prop = head is not None and head.tracks_size and head.prop_attn
    roles = []
    for i, r in enumerate(reducers):
        role = "reduce" if r is not None else ""
        if prop and first is not None and i > first:
            role += "+after" if role else "after"
        roles.append(role)
    return roles


def latency_budget(
    model: nn.Module,
    table: LatencyTable,
    reduction: float,
    *,
    uniform: bool = False,
    schedule: TokenSchedule | None = None,
    kinds: Collection[str] = WIDTH_KINDS,
    family: Family | None = None,
) -> Budget:
    """A budget that removes ``reduction`` of ``model``'s predicted latency on ``table``'s backend
    (``family``: the model's, when the caller already knows it; else asked once)."""
    fam = family or family_of(model)
    cost = table.cost(model, schedule, fam)  # checks the table was measured for this model
    return Budget(
        "latency",
        reduction,
        round_to=1,
        uniform=uniform,
        cost=cost,
        allowed=table.allowed(kinds),
        order=table.order(model, cost, fam),
    )


def summary(table: LatencyTable) -> dict[str, Any]:
    """What an artifact's history records about the table a plan was chosen with."""
    return {
        "backend": table.backend,
        "batch": table.batch,
        "precision": table.precision,
        "mode": table.mode,
        "threads": table.threads,
        "steps": dict(table.steps),
        "cpu": table.env.get("cpu"),
        "gpu": (table.env.get("gpu") or {}).get("name"),
    }
