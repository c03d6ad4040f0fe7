"""``bench``: measure variants on backends over a batch sweep and build the report dict.

    from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
    result = run_bench([load_variant("deit_small_patch16_224"), load_variant("out/pruned")], BenchConfig())

The first variant is the baseline unless ``baseline`` names another. Backends that cannot run
here (or fail to activate) are listed under ``skipped`` with the reason; the run goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

import vitcompress
from vitcompress.artifact import is_artifact
from vitcompress.errors import VitCompressError
from vitcompress.exporters.precision import PRECISIONS, check_precision
from vitcompress.families import family_of
from vitcompress.progress import tqdm
from vitcompress.quantizers import record_of
from vitcompress.resolve import resolve_model

from . import env as envmod
from . import stats
from .backends import backend_names, get_runner
from .report import ratios
from .runner_torch import MODES
from .runners import Variant
from .timing import measure, paired_ratio, summarize

#: the most passes a benchmark makes: beyond these a run does not finish in a working day
MAX_PASSES = {"warmup": 10_000, "iters": 100_000, "rounds": 1_000}
#: the longest ``max_time`` / ``time_limit`` (a week)
MAX_SECONDS = 7 * 24 * 3600

logger = logging.getLogger("vitcompress.bench")

#: seconds of load sampling before the first measurement
LOAD_SAMPLE_S = 0.3
#: ``max_time`` of ``until_stable`` when none is given
DEFAULT_MAX_TIME = 600.0


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run_bench``: ``result`` holds what was measured so far (``result["partial"]``)."""

    def __init__(self, result: dict):
        super().__init__("interrupted")
        self.result = result


@dataclass
class BenchConfig:
    """What to measure and how (serialised into the report)."""

    backends: list = field(
        default_factory=lambda: ["ort-cpu", "torch-cpu"],
        metadata={"help": "Comma list of torch-cpu, ort-cpu, torch-cuda, ort-cuda, ort-trt, trt."},
    )
    batches: list = field(default_factory=lambda: [1, 8], metadata={"help": "Comma list of batch sizes."})
    precision: str = field(default="fp32", metadata={"help": "fp32, fp16 or bf16."})
    mode: str = field(default="eager", metadata={"help": "torch runners: eager, compile or graph (CUDA)."})
    warmup: int = field(default=5, metadata={"help": "Untimed passes per variant."})
    iters: int = field(default=10, metadata={"help": "Timed passes per variant per round."})
    rounds: int = field(default=5, metadata={"help": "Interleaved rounds (A,B,A,B...)."})
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads (torch.set_num_threads / ORT intra-op); default: all usable cores."},
    )
    check: bool = field(default=True, metadata={"help": "Check that every output is finite."})
    until_stable: bool = field(
        default=False,
        metadata={"help": "Add interleaved rounds until every latency ratio's 95% CI is within +-2% (or max_time)."},
    )
    max_time: float | None = field(
        default=None,
        metadata={"help": f"Seconds the whole run may take with until_stable (default {DEFAULT_MAX_TIME:.0f})."},
    )
    time_limit: float | None = field(
        default=None,
        metadata={"help": "Stop after this many seconds and report what was measured so far (marked partial)."},
    )

    def validate(self) -> BenchConfig:
        known = backend_names()
        for b in self.backends:
            get_runner(b)  # unknown names: one-line error with suggestions
        if not self.backends:
            raise VitCompressError(
                f"no backend given; pass backends with some of {', '.join(known)}", params=["backends"]
            )
        if not self.batches or any(not 1 <= int(b) <= 65536 for b in self.batches):
            raise VitCompressError(
                f"batch sizes must be integers >= 1, got {self.batches}; pass e.g. batches=1,8,32", params=["batches"]
            )
        check_precision(self.precision, PRECISIONS)
        if self.mode not in MODES:
            raise VitCompressError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        for name, v in (("warmup", self.warmup), ("iters", self.iters), ("rounds", self.rounds)):
            low, high = (0 if name == "warmup" else 1), MAX_PASSES[name]  # counts capped at what finishes
            if not low <= v <= high:
                raise VitCompressError(f"{name} must be in [{low}, {high}], got {v}", params=[name])
        for name, limit in (("max_time", self.max_time), ("time_limit", self.time_limit)):
            if limit is not None and not 0 < limit <= MAX_SECONDS:
                raise VitCompressError(f"{name} must be in (0, {MAX_SECONDS}] seconds, got {limit}", params=[name])
        if self.max_time is not None and not self.until_stable:
            raise VitCompressError(
                "max_time only bounds until_stable; pass until_stable=True or drop max_time",
                params=["max_time", "until_stable"],
            )
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise VitCompressError(f"threads must be >= 1, got {self.threads}", params=["threads"])
        if self.threads is None:
            self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return self


def load_variant(arg, name: str | None = None, workdir=None, max_batch: int = 32) -> Variant:
    """A ``Variant`` from an artifact folder, a timm model name or an ``nn.Module``."""
    model = resolve_model(arg)
    if name:
        label = name
    elif isinstance(arg, nn.Module):
        label = type(arg).__name__
    else:
        label = Path(arg).name if is_artifact(arg) else str(arg)
    model.eval()
    c = vitcompress.count(model)
    in_chans, h, w = family_of(model).input_size(model)
    img = (h, w)
    return Variant(
        label,
        model,
        c.macs,
        c.params,
        img_size=img,
        in_chans=in_chans,
        max_batch=max_batch,
        workdir=Path(workdir) if workdir else None,
        quantized=(record_of(model) or {}).get("precision"),
    )


def run_bench(
    variants: Sequence[Variant], cfg: BenchConfig, baseline: str | None = None, progress: bool = False
) -> dict:
    """Measure every variant on every backend and batch; returns the report dict (see ``report``).

    All variants of one (backend, batch) are activated together and timed in interleaved rounds; they
    get the same input (``Variant.example`` of the baseline's shape, made once per batch)."""
    cfg.validate()
    if not variants:
        raise VitCompressError("no model to benchmark; pass at least one artifact folder or timm model name")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise VitCompressError(f"variant names must be unique, got {names}; rename the artifact folders")
    base = baseline or names[0]
    if base not in names:
        raise VitCompressError(f"baseline {base!r} is not among the variants {names}")
    # ONNX files and engines of variants without a work folder go to a temporary one, deleted at the end
    borrowed = [v for v in variants if v.workdir is None]
    work = Path(tempfile.mkdtemp(prefix="vitcompress-bench-")) if borrowed else None
    for v in borrowed:
        v.workdir = work
    for v in variants:
        v.max_batch = max(v.max_batch, max(cfg.batches))
    bar = None
    t_start = time.monotonic()
    deadline = t_start + cfg.time_limit if cfg.time_limit else None
    stable_end = t_start + (cfg.max_time or DEFAULT_MAX_TIME) if cfg.until_stable else None
    groups = [(b, n) for b in cfg.backends for n in cfg.batches]
    done: list = []

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    try:
        bv = next(v for v in variants if v.name == base)
        result: dict[str, Any] = {
            "config": asdict(cfg),
            "env": envmod.capture(cfg.threads, cfg.precision),
            "baseline": base,
            "variants": [{"name": v.name, "macs": v.macs, "params": v.params} for v in variants],
            "skipped": [],
            "measurements": [],
            "warnings": [],
            "partial": None,
        }
        if cfg.until_stable:
            result["stability"] = {"target": stats.STABLE, "max_time": cfg.max_time or DEFAULT_MAX_TIME, "groups": []}
        monitor = envmod.LoadMonitor()
        before = monitor.sample(LOAD_SAMPLE_S)
        result["env"]["others_busy_before"] = before
        if envmod.busy(before, cfg.threads):
            _warn(
                result,
                f"the machine is busy: other processes use {before:.1f} of {envmod.usable_cores()} cores before the "
                f"run and the bench needs {cfg.threads} threads; the figures will be noisy: rerun on a quiet machine, "
                "lower --threads, or pass --until-stable",
            )
        if progress:
            bar = tqdm(
                total=len(cfg.backends) * len(cfg.batches) * cfg.rounds * len(variants), desc="bench", unit="run"
            )
        short: list = []  # groups measured with fewer rounds than asked (stopped early)
        try:
            for backend in cfg.backends:
                cls = get_runner(backend)
                reason = cls.unavailable(cfg.precision, cfg.mode)
                if reason:
                    result["skipped"].append({"backend": backend, "reason": reason})
                    done += [(backend, n) for n in cfg.batches]
                    if bar:
                        bar.update(len(cfg.batches) * cfg.rounds * len(variants))
                    continue
                for batch in cfg.batches:
                    if out_of_time():
                        break
                    runners = {}
                    inputs = {}  # one input per image shape, shared by the variants (a batch of 256 is large)
                    samples: dict = {}
                    interrupted = False
                    try:
                        for v in variants:
                            key = (v.in_chans, *v.img_size)
                            if key not in inputs:
                                inputs[key] = v.example(batch)
                            r = cls(v, batch, cfg.precision, cfg.threads, cfg.mode, x=inputs[key])
                            r.activate()
                            runners[v.name] = r
                        if bar:
                            bar.set_postfix_str(f"{backend} b{batch}")
                        monitor.mark()
                        try:
                            measure(
                                runners,
                                cfg.warmup,
                                cfg.iters,
                                cfg.rounds,
                                tick=bar.update if bar else None,
                                stop=out_of_time,
                                into=samples,
                            )
                            if cfg.until_stable and stable_end is not None:
                                left = len(groups) - len(done)
                                end = time.monotonic() + max(0.0, stable_end - time.monotonic()) / max(1, left)
                                _until_stable(
                                    result, runners, samples, base, cfg, backend, batch, end, out_of_time, bar
                                )
                        except KeyboardInterrupt:
                            interrupted = True
                        outs = (
                            {n: r.output() for n, r in runners.items()}
                            if cfg.check and not interrupted and samples[base]
                            else {}
                        )
                    except Exception as e:  # a backend failing here is reported, the run goes on
                        result["skipped"].append(
                            {
                                "backend": backend,
                                "batch": batch,
                                "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                            }
                        )
                        done.append((backend, batch))
                        continue
                    finally:
                        for r in runners.values():
                            r.deactivate()
                    others = monitor.others()
                    if samples.get(base):
                        _rows(result, variants, bv, samples, outs, backend, batch, others, before, cfg)
                        done.append((backend, batch))
                        if len(samples[base]) < cfg.rounds:
                            short.append(f"{backend} b{batch} ({len(samples[base])} of {cfg.rounds} rounds)")
                    if interrupted:
                        raise KeyboardInterrupt
                    if out_of_time():
                        break
                if out_of_time():
                    break
        except KeyboardInterrupt:
            _partial(result, "interrupted (Ctrl-C)", groups, done, short)
            raise BenchInterrupted(result) from None
        if len(done) < len(groups) or short:
            _partial(result, f"time limit of {cfg.time_limit:g} s reached", groups, done, short)
    finally:
        if bar:
            bar.close()
        for v in borrowed:  # their cached files go with the folder
            v.workdir = None
            v._files.clear()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    result["env"]["load_after"] = envmod.load_average()
    result["env"]["governor_after"] = envmod.governor()
    result["seconds"] = time.monotonic() - t_start
    return result


def _warn(result: dict, line: str) -> None:
    """Print ``warning: line`` (the library's log) once and keep it in the report."""
    if line not in result["warnings"]:
        result["warnings"].append(line)
        logger.info(f"warning: {line}")


def _partial(result: dict, reason: str, groups: list, done: list, short: list) -> None:
    """Mark ``result`` as partial: why, and which backend/batch groups are missing or cut short."""
    missing = [f"{b} b{n}" for b, n in groups if (b, n) not in done]
    result["partial"] = {
        "reason": reason,
        "measured": len(done),
        "planned": len(groups),
        "missing": missing,
        "cut_short": short,
    }
    result["env"]["load_after"] = envmod.load_average()
    result["env"]["governor_after"] = envmod.governor()
    _warn(result, f"partial report: {reason}; not measured: {', '.join(missing + short) or 'none'}")


def _unstable(samples: dict, base: str) -> list[str]:
    """Variants whose latency ratio's 95% CI reaches further than ``stats.STABLE`` of the ratio."""
    out = []
    for name, rounds in samples.items():
        if name == base:
            continue
        r = paired_ratio(rounds, samples[base])
        if stats.relative_width(r, stats.ratio_ci(rounds, samples[base])) > stats.STABLE:
            out.append(name)
    return out


def _until_stable(result, runners, samples, base, cfg, backend, batch, end, out_of_time, bar) -> None:
    """Add interleaved rounds (no new warm-up) until every ratio's CI is within ``stats.STABLE`` or
    ``end`` (monotonic seconds) has passed; records the outcome under ``result["stability"]``."""
    while (left := _unstable(samples, base)) and time.monotonic() < end and not out_of_time():
        if bar:
            bar.total += len(runners)
        measure(runners, 0, cfg.iters, 1, tick=bar.update if bar else None, into=samples)
    rec = {"backend": backend, "batch": batch, "rounds": len(samples[base]), "stable": not left, "unstable": left}
    result["stability"]["groups"].append(rec)
    if left:
        _warn(
            result,
            f"{backend} batch {batch}: time is up after {rec['rounds']} rounds and the latency ratio of "
            f"{', '.join(left)} is not within +-{stats.STABLE:.0%} yet; pass a larger --max-time or rerun on a "
            "quiet machine",
        )


def _rows(result, variants, bv, samples, outs, backend, batch, others, before, cfg) -> None:
    """The measurement rows of one backend and batch, with their CIs and flags, and their warnings."""
    base = bv.name
    is_busy = envmod.busy(others, cfg.threads) or envmod.busy(before, cfg.threads)
    if envmod.busy(others, cfg.threads):
        _warn(
            result,
            f"{backend} batch {batch}: other processes kept {others:.1f} cores busy during the measurement "
            f"({max(0, envmod.usable_cores() - cfg.threads)} free with {cfg.threads} threads); its rows are marked "
            "busy: rerun on a quiet machine or with fewer --threads",
        )
    for v in variants:
        rounds = samples[v.name]
        ratio = paired_ratio(rounds, samples[base])
        ci = (1.0, 1.0) if v.name == base else stats.ratio_ci(rounds, samples[base])
        flags = ["busy"] if is_busy else []
        if stats.relative_width(ratio, ci) > stats.WIDE:
            flags.append("wide-ci")
            _warn(
                result,
                f"{backend} batch {batch} {v.name}: latency ratio {stats.fmt_ci(ratio, ci)} (95% CI) is wider than "
                f"+-{stats.WIDE:.0%}; add --rounds or pass --until-stable, or rerun on a quiet machine",
            )
        m = {
            "backend": backend,
            "batch": batch,
            "variant": v.name,
            "precision": v.quantized or cfg.precision,  # a quantized artifact runs in its own
            "macs": v.macs,
            "params": v.params,
            **summarize(rounds, batch),
            **ratios(v.macs, bv.macs, ratio, ci),
            "rounds": len(rounds),
            "others_busy": others,
            "flags": flags,
            "samples_ms": rounds,
        }
        if outs:
            m["output_finite"] = bool(np.isfinite(outs[v.name]).all())
        result["measurements"].append(m)
