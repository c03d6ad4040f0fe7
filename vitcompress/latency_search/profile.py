"""``vitcompress profile``: measure a model's latency table on a backend (``vitcompress.latency``).

    table = profile_latency("deit_small_patch16_224", ProfileConfig(backend="ort-cpu", batch=8))
    table.save("deit_s.ort-cpu.b8.json")

Every figure comes from the bench stage's runners and timing method (``benchmarks.timing.measure``:
warm-up passes, then interleaved rounds of timed passes), on the probes of
``probes``, in groups measured together:

1. **step sweeps**: q/k width and v width (attention probes, every other width at its full value),
   MLP width and embedding width (MLP probes), each over ``sweep`` consecutive widths ending at the
   full width; ``latency.detect_step`` reads each kind's step off its sweep;
2. **grids**: attention probes over heads x q/k x v for every (embedding, tokens) pair of the grid,
   MLP probes over MLP width x tokens for every embedding width; q/k, v, MLP and embedding grid
   points are multiples of the detected steps;
3. **token reducers** (with ``token_method``): per token count of the grid, a block that reduces
   with that reducer, and for a reducer with proportional attention that block followed by a plain
   one, timed with the plain sublayers they run (the differences are the reducer's own time);
4. **the rest**: the model without blocks at every embedding width of the grid, and the dense model
   itself (its measured latency calibrates the predicted milliseconds, ``LatencyTable.scale``).

``precision`` int8 (or fp8) profiles the model as ``vitcompress quantize`` makes it: every probe's
Linear/Conv2d inputs and weights go through Q/DQ pairs (``latency_probes``) and the dense model is
fake-quantized, run by a backend that executes Q/DQ graphs with quantized kernels
(``QUANTIZED_BACKENDS``); the runners run them as graphs of the fp32 export (``run_precision``).
The table records int8 (or fp8) as its precision.

Each probe's figure is the minimum of its timed passes (``statistic``, or the median): on a shared
CPU the median of a call that takes several milliseconds includes time the scheduler gave to other
processes, while a call of a tenth of a millisecond is rarely interrupted, so medians make the parts
of a model look cheaper than the whole; the minimum is each call's uncontended time.

Every group of sublayer probes also times an empty call; its figure (the backend's per-call
overhead) is subtracted from the group's sublayer figures, which makes the table additive. The
sublayer grids are then made monotone (``latency.monotone``: no sublayer gets faster as a width or
the token count grows; a measurement saying so is noise); the figures as measured stay in ``as_measured``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitcompress.benchmarks import env as envmod
from vitcompress.benchmarks import stats
from vitcompress.benchmarks.backends import backend_names, get_runner
from vitcompress.benchmarks.bench import load_variant
from vitcompress.benchmarks.runner_torch import MODES
from vitcompress.benchmarks.runners import Variant
from vitcompress.benchmarks.timing import measure
from vitcompress.config import setting, with_options
from vitcompress.errors import VitCompressError
from vitcompress.exporters.precision import PRECISIONS, check_precision
from vitcompress.families import family_of
from vitcompress.latency import (
    ATTN_AXES,
    MLP_AXES,
    LatencyTable,
    check_family,
    detect_step,
    full_widths,
    monotone,
    source_of,
    stair_widths,
)
from vitcompress.progress import tqdm
from vitcompress.resolve import resolve_model
from vitcompress.tokens.apply import build_reducers, remove_tokens, schedule_of
from vitcompress.tokens.registry import REDUCERS
from vitcompress.tokens.schedule import parse_schedule

from .probes import (
    QUANTIZED,
    attn_probe,
    empty_variant,
    mlp_probe,
    model_variant,
    quantized_copy,
    rest_model,
    sublayer_variant,
    token_probe,
    token_variant,
)

logger = logging.getLogger("vitcompress.profile")

SWEPT = ("qk", "v", "mlp", "embed")
#: backends whose latency of a Q/DQ graph is that of quantized kernels, per quantized precision
#: (ONNX Runtime CPU fuses INT8 Q/DQ into integer kernels; FP8 needs TensorRT on a GPU with FP8)
QUANTIZED_BACKENDS = {"int8": ("ort-cpu", "ort-trt", "trt"), "fp8": ("ort-trt", "trt")}


def run_precision(precision: str) -> str:
    """The precision a runner is given: fp32 for a quantized profile (its graphs carry the Q/DQ
    pairs; the unquantized parts are fp32), else ``precision``."""
    return "fp32" if precision in QUANTIZED else precision


def quantized_unavailable(backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot measure a ``precision`` (int8/fp8) model, or None."""
    if precision in QUANTIZED and backend not in QUANTIZED_BACKENDS[precision]:
        return (
            f"{precision} latency is measured on {', '.join(QUANTIZED_BACKENDS[precision])} "
            f"(backends that run Q/DQ graphs with {precision} kernels), not {backend}"
        )
    return None


STATISTICS: dict[str, Callable[..., Any]] = {"min": np.min, "median": np.median}


#: the largest counts a profile takes: beyond these it does not finish in a working day
PROFILE_CAPS = {
    "batch": 65_536,
    "warmup": 1_000,
    "iters": 10_000,
    "rounds": 1_000,
    "sweep": 4_096,
    "heads_points": 1_024,
    "dim_points": 1_024,
    "mlp_points": 1_024,
    "embed_points": 1_024,
    "token_points": 1_024,
}


@dataclass
class ProfileConfig:
    """Where and how a latency table is measured, and how fine its grid is."""

    backend: str = setting("ort-cpu", "Backend: torch-cpu, ort-cpu, torch-cuda, ort-cuda, ort-trt or trt.")
    batch: int = setting(8, "Batch size the latencies are measured at.")
    precision: str = setting(
        "fp32", "fp32, fp16 or bf16 (as the backend supports); int8 or fp8: the quantized model's Q/DQ graphs."
    )
    mode: str = setting("eager", "torch backends: eager, compile or graph (CUDA graphs).")
    threads: int | None = setting(None, "CPU threads (default: all usable cores).")
    warmup: int = setting(2, "Untimed passes per probe.")
    iters: int = setting(3, "Timed passes per probe per round.")
    rounds: int = setting(3, "Interleaved rounds per group of probes.")
    statistic: str = setting("min", "Figure per probe over its timed passes: min (uncontended time) or median.")
    sweep: int = setting(64, "Consecutive widths per step sweep (q/k, v, MLP, embedding).")
    heads_points: int = setting(3, "Grid points over the number of heads.")
    dim_points: int = setting(3, "Grid points over the q/k width and over the v width.")
    mlp_points: int = setting(5, "Grid points over the MLP width.")
    embed_points: int = setting(3, "Grid points over the embedding width.")
    token_points: int = setting(3, "Grid points over the tokens a block sees.")
    min_embed: float = setting(0.5, "Smallest embedding width on the grid, as a share of the full width.")
    min_tokens: float = setting(0.3, "Fewest tokens on the grid, as a share of the full count.")
    calibrate: bool = setting(True, "Also measure the dense model (scales the predicted milliseconds).")
    token_method: str | None = setting(
        None, "Also measure this token reducer's own time (topk, topk-vpa, evit, etps), for token schedules."
    )
    token_keep: float = setting(0.7, "Keep rate of the token reducer probes.")

    def validate(self) -> ProfileConfig:
        if self.backend not in backend_names():
            get_runner(self.backend)  # one-line error with the known names
        check_precision(self.precision, PRECISIONS + QUANTIZED)
        if self.mode not in MODES:
            raise VitCompressError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}", params=["mode"])
        reason = quantized_unavailable(self.backend, self.precision) or get_runner(self.backend).unavailable(
            run_precision(self.precision), self.mode
        )
        if reason:
            raise VitCompressError(
                f"backend {self.backend} cannot measure here ({reason}); choose another backend or precision",
                params=["backend", "precision"],
            )
        for name in ("batch", "iters", "rounds", "heads_points", "dim_points", "mlp_points", "embed_points"):
            if getattr(self, name) < 1:
                raise VitCompressError(f"{name} must be at least 1, got {getattr(self, name)}", params=[name])
        for name, high in PROFILE_CAPS.items():  # counts capped at what finishes
            if getattr(self, name) > high:
                raise VitCompressError(f"{name} must be at most {high}, got {getattr(self, name)}", params=[name])
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise VitCompressError(f"threads must be in [1, 4096], got {self.threads}", params=["threads"])
        if self.statistic not in STATISTICS:
            raise VitCompressError(
                f"statistic is {' or '.join(STATISTICS)}, got {self.statistic!r}", params=["statistic"]
            )
        if self.token_points < 1 or self.warmup < 0 or self.sweep < 1:
            raise VitCompressError(
                "token_points and sweep must be at least 1, warmup at least 0",
                params=["token_points", "sweep", "warmup"],
            )
        for name in ("min_embed", "min_tokens"):
            if not 0 < getattr(self, name) <= 1:
                raise VitCompressError(f"{name} must be in (0, 1], got {getattr(self, name)}", params=[name])
        if self.token_method is not None:
            if self.token_method not in REDUCERS.list() or "keep" not in REDUCERS.get(self.token_method).kinds:
                raise VitCompressError(
                    f"token_method {self.token_method!r}: reducer probes cover the keep-rate reducers "
                    f"({', '.join(n for n in REDUCERS.list() if 'keep' in REDUCERS.get(n).kinds)})",
                    params=["token_method"],
                )
            if not 0 < self.token_keep < 1:
                raise VitCompressError(f"token_keep must be in (0, 1), got {self.token_keep}", params=["token_keep"])
        if self.threads is None:
            self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self

    @classmethod
    def from_options(cls, config: ProfileConfig | None = None, **options: Any) -> ProfileConfig:
        """``config`` (default: the defaults) with ``options`` replacing its fields (``config.with_options``)."""
        return with_options(cls, config, options, "profile")


class _Session:
    """The measuring side of a profile: one backend, batch, precision; groups of variants timed together."""

    def __init__(self, cfg: ProfileConfig, workdir: Path | None, bar):
        self.cfg, self.cls, self.workdir, self.bar = cfg, get_runner(cfg.backend), workdir, bar
        self.overheads: list[float] = []
        self.spreads: list[float] = []  # per probe: its 95% CI's reach, as a fraction of its figure

    def time(self, variants: list[Variant], empty: Variant | None = None) -> dict[str, float]:
        """Milliseconds per variant, the ``statistic`` of its passes (minus the group's empty call when
        ``empty`` is given)."""
        cfg = self.cfg
        group = variants + ([empty] if empty is not None else [])
        runners, inputs = {}, {}
        try:
            for v in group:
                v.workdir = self.workdir
                v.max_batch = max(v.max_batch, cfg.batch)
                key = (v.in_chans, *v.img_size)
                if key not in inputs:
                    inputs[key] = v.example(cfg.batch)
                r = self.cls(v, cfg.batch, run_precision(cfg.precision), cfg.threads, cfg.mode, x=inputs[key])
                r.activate()
                runners[v.name] = r
            samples = measure(runners, cfg.warmup, cfg.iters, cfg.rounds)
        finally:
            for r in runners.values():
                r.deactivate()
            for v in group:
                v.model = None  # the probe's weights are not needed any more
        stat = STATISTICS[cfg.statistic]
        med = {n: float(stat([s for rnd in rounds for s in rnd])) for n, rounds in samples.items()}
        for rounds in samples.values():  # the spread of the per-round figures (``stats.bootstrap_ci``)
            per_round = [float(stat(rnd)) for rnd in rounds]
            mid = float(np.median(per_round))
            self.spreads.append(stats.relative_width(mid, stats.bootstrap_ci(per_round)))
        if empty is not None:
            eps = med.pop(empty.name)
            self.overheads.append(eps)
            med = {n: max(0.0, ms - eps) for n, ms in med.items()}
        if self.bar is not None:
            self.bar.update(len(variants))
        return med


def _load_report(cfg: ProfileConfig, others, spreads: list, load_before, governor_before) -> dict:
    """The profile's load, governor and spread record (the table's ``env``), with its warnings printed."""
    threads = int(cfg.threads or 1)
    spread = {
        "median": float(np.median(spreads)) if spreads else None,
        "p90": float(np.percentile(spreads, 90)) if spreads else None,
        "worst": float(max(spreads)) if spreads else None,
        "probes": len(spreads),
    }
    warnings = []
    if envmod.busy(others, threads):
        warnings.append(
            f"other processes kept {others:.1f} cores busy during the profile "
            f"({max(0, envmod.usable_cores() - threads)} free with {threads} threads): the table's figures are "
            "noisy; profile again on a quiet machine or with fewer --threads"
        )
    if spread["median"] is not None and spread["median"] > stats.WIDE:
        warnings.append(
            f"the probes' 95% CIs reach +-{spread['median']:.1%} of their figures (median over {len(spreads)} "
            f"probes), wider than +-{stats.WIDE:.0%}: profile again on a quiet machine or with more --rounds"
        )
    for w in warnings:
        logger.info(f"warning: {w}")
    return {
        "load_before": load_before,
        "load_after": envmod.load_average(),
        "governor_before": governor_before,
        "governor_after": envmod.governor(),
        "others_busy": others,
        "busy": envmod.busy(others, threads),
        "probe_ci95_reach": spread,
        "warnings": warnings,
    }


def _window(full: int, size: int, low: int = 1) -> list[int]:
    return list(range(max(low, full - size + 1), full + 1))


def _reducer_probes(sess: _Session, cfg: ProfileConfig, source, block, full, tokens_grid, attn_v, mlp_v) -> dict:
    """The reducer's own time: per token count ``t`` of the grid, a reducing block (and, for a reducer
    with proportional attention, that block followed by a plain one) timed with the plain
    sublayers it runs; the differences are the reducer's time."""
    method, keep = cfg.token_method or "", cfg.token_keep
    quant = cfg.precision if cfg.precision in QUANTIZED else None
    D, H, QK, V, M, p = (full[k] for k in ("embed", "heads", "qk", "v", "mlp", "prefix"))
    wide = copy.copy(block)
    wide.num_heads, wide.qk_dim, wide.v_dim, wide.mlp_hidden = H, QK, V, M
    red = build_reducers(parse_schedule(f"{keep:g}@0", method), 1, p)[0]
    chained = bool(red is not None and red.tracks_size and red.prop_attn)
    out: dict = {"keep": keep, "tokens": [], "reduce_ms": [], "tokens_after": [], "after_ms": []}
    for t in tokens_grid:
        if t < p + 2:
            continue
        t_out = p + int(red.out_count(t - p)) if red is not None else t
        one = token_variant(
            f"reduce-{method}-t{t}", token_probe(source, wide, D, 1, method, keep, t), D, cfg.batch, quant
        )
        plain = [attn_v(D, t, H, QK, V), mlp_v(D, t_out, M), attn_v(D, t_out, H, QK, V)]
        group = [one, *plain]
        if chained:
            two = token_probe(source, wide, D, 2, method, keep, t)
            group.append(token_variant(f"chain-{method}-t{t}", two, D, cfg.batch, quant))
        med = sess.time(group, empty_variant(t, D, cfg.batch))
        a_in, m_out, a_out = (med[v.name] for v in plain)
        reduce_ms = med[one.name] - a_in - m_out
        out["tokens"].append(t)
        out["reduce_ms"].append(reduce_ms)
        out["tokens_after"].append(t_out)
        out["after_ms"].append(med[group[-1].name] - med[one.name] - a_out - m_out if chained else 0.0)
    return out


def profile_latency(
    model: str | os.PathLike | nn.Module,
    config: ProfileConfig | None = None,
    *,
    progress: bool = False,
    workdir: str | os.PathLike | None = None,
    **options: Any,
) -> LatencyTable:
    """Measure the latency table of ``model`` (a name, an artifact folder or a module) on a backend.

    ``config`` and/or its fields as keywords (``backend="ort-cpu", batch=8``) say where and how;
    graphs and engines go to ``workdir`` (default: a temporary folder per probe, deleted with it)."""
    cfg = ProfileConfig.from_options(config, **options).validate()
    net = resolve_model(model)
    fam = family_of(net)
    check_family(fam)
    if schedule_of(net) is not None:  # the table is of the widths; token counts are its own axis
        net = remove_tokens(copy.deepcopy(net))
    net.eval()
    full = full_widths(net)
    spec = fam.spec(net)
    block = net.get_submodule(fam.parts(net)[0].path)
    scale = spec.blocks[0].scale
    source = source_of(net)
    in_chans, h_img, w_img = fam.input_size(net)
    t0 = time.perf_counter()
    mb = cfg.batch
    work = Path(workdir) if workdir is not None else None
    D, T, H, QK, V, M = (full[k] for k in ("embed", "tokens", "heads", "qk", "v", "mlp"))
    quant = cfg.precision if cfg.precision in QUANTIZED else None

    sweeps = {
        "qk": _window(QK, cfg.sweep),
        "v": _window(V, cfg.sweep),
        "mlp": _window(M, cfg.sweep),
        "embed": _window(D, cfg.sweep, low=max(1, H)),
    }
    heads_grid = sorted({int(round(x)) for x in np.linspace(1, H, min(H, cfg.heads_points))})
    tokens_grid = sorted(
        {
            int(round(x))
            for x in np.linspace(max(full["prefix"] + 1, math.ceil(cfg.min_tokens * T)), T, cfg.token_points)
        }
        | {T}
    )
    n_probes = sum(len(w) for w in sweeps.values())  # the grids are added once the steps are known
    load_before, governor_before = envmod.load_average(), envmod.governor()
    monitor = envmod.LoadMonitor()
    bar = tqdm(total=n_probes, desc=f"profile {cfg.backend} b{cfg.batch}", unit="probe") if progress else None
    sess = _Session(cfg, work, bar)
    try:

        def attn_v(d, t, h, qk, v):
            p = attn_probe(block, d, h, qk, v, t, scale, seed=qk * 7 + v)
            return sublayer_variant(f"attn-d{d}-t{t}-h{h}-qk{qk}-v{v}", p, mb, quant)

        def mlp_v(d, t, m):
            return sublayer_variant(f"mlp-d{d}-t{t}-m{m}", mlp_probe(block, d, m, t, seed=m), mb, quant)

        # 1. step sweeps
        found: dict[str, dict] = {}
        for kind, widths in sweeps.items():
            if kind == "qk":
                vs = [attn_v(D, T, H, w, V) for w in widths]
            elif kind == "v":
                vs = [attn_v(D, T, H, QK, w) for w in widths]
            elif kind == "mlp":
                vs = [mlp_v(D, T, w) for w in widths]
            else:
                vs = [mlp_v(w, T, M) for w in widths]
            names = [v.name for v in vs]
            med = sess.time(vs, empty_variant(T, vs[0].img_size[1], mb))
            ms = [med[n] for n in names]
            step, rss = detect_step(widths, ms)
            found[kind] = {"widths": widths, "ms": ms, "rss": {str(k): v for k, v in rss.items()}, "step": step}
        steps = {k: int(found[k]["step"]) for k in SWEPT}
        steps["heads"] = 1

        # 2. grids
        grid = {
            "embed": stair_widths(D, steps["embed"], cfg.embed_points, low=math.ceil(cfg.min_embed * D)),
            "tokens": tokens_grid,
            "heads": heads_grid,
            "qk": stair_widths(QK, steps["qk"], cfg.dim_points),
            "v": stair_widths(V, steps["v"], cfg.dim_points),
            "mlp": stair_widths(M, steps["mlp"], cfg.mlp_points),
        }
        attn = np.zeros(tuple(len(grid[a]) for a in ATTN_AXES))
        mlp = np.zeros(tuple(len(grid[a]) for a in MLP_AXES))
        if bar is not None:
            n_tokens = 6 * len(tokens_grid) if cfg.token_method else 0
            bar.total = n_probes + attn.size + mlp.size + len(grid["embed"]) + int(cfg.calibrate) + n_tokens
            bar.refresh()
        for i, d in enumerate(grid["embed"]):
            for j, t in enumerate(grid["tokens"]):
                cells = [
                    (k, a, b, attn_v(d, t, h, qk, v))
                    for k, h in enumerate(grid["heads"])
                    for a, qk in enumerate(grid["qk"])
                    for b, v in enumerate(grid["v"])
                ]
                med = sess.time([c[3] for c in cells], empty_variant(t, d, mb))
                for k, a, b, var in cells:
                    attn[i, j, k, a, b] = med[var.name]
            cells2 = [(j, a, mlp_v(d, t, m)) for j, t in enumerate(grid["tokens"]) for a, m in enumerate(grid["mlp"])]
            med = sess.time([c[2] for c in cells2], empty_variant(T, d, mb))
            for j, a, var in cells2:
                mlp[i, j, a] = med[var.name]

        # 3. the token reducer's own time
        reducers = {}
        if cfg.token_method is not None:
            reducers[cfg.token_method] = _reducer_probes(
                sess, cfg, source, spec.blocks[0], full, tokens_grid, attn_v, mlp_v
            )

        # 4. the model without blocks (and the dense model, measured together)
        rests = [
            model_variant(f"rest-d{d}", rest_model(source, d), in_chans, (h_img, w_img), mb, quant)
            for d in grid["embed"]
        ]
        group: list[Variant] = list(rests)
        if cfg.calibrate:
            group.append(load_variant(quantized_copy(net, quant), name="dense", max_batch=mb))
        med = sess.time(group)
        rest = [med[v.name] for v in rests]
    finally:
        if bar is not None:
            bar.close()
    from_env = envmod.capture(cfg.threads or 1, cfg.precision)
    from_env.update(_load_report(cfg, monitor.others(), sess.spreads, load_before, governor_before))
    table = LatencyTable(
        backend=cfg.backend,
        batch=cfg.batch,
        precision=cfg.precision,
        mode=cfg.mode,
        threads=int(cfg.threads or 1),
        source=source.to_dict(),
        family=fam.name,
        full=full,
        steps=steps,
        grid=grid,
        attn_ms=monotone(attn).tolist(),
        mlp_ms=monotone(mlp).tolist(),
        as_measured={"attn_ms": attn.tolist(), "mlp_ms": mlp.tolist()},
        rest_ms=rest,
        overhead_ms=float(np.median(sess.overheads)) if sess.overheads else 0.0,
        reducers=reducers,
        sweeps=found,
        timing={"warmup": cfg.warmup, "iters": cfg.iters, "rounds": cfg.rounds, "statistic": cfg.statistic},
        env=from_env,
    )
    if cfg.calibrate:
        table.dense = {"measured_ms": med["dense"], "predicted_ms": table.unscaled(spec)}
    table.seconds = time.perf_counter() - t0
    return table
