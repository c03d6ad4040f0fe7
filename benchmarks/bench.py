"""``bench``: measure variants on backends over a batch sweep and build the report dict.

    from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
    result = run_bench([load_variant("deit_small_patch16_224"), load_variant("out/pruned")], BenchConfig())

The first variant is the baseline unless ``baseline`` names another. Backends that cannot run
here (or fail to activate) are listed under ``skipped`` with the reason; the run goes on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

import vitcompress
from vitcompress.artifact import is_artifact
from vitcompress.errors import VitCompressError
from vitcompress.exporters.precision import PRECISIONS, check_precision
from vitcompress.families import family_of
from vitcompress.progress import tqdm
from vitcompress.resolve import resolve_model

from . import env as envmod
from .backends import backend_names, get_runner
from .report import ratios
from .runner_torch import MODES
from .runners import Variant
from .timing import measure, paired_ratio, summarize

#: the most passes a benchmark makes: beyond these a run does not finish in a working day
MAX_PASSES = {"warmup": 10_000, "iters": 100_000, "rounds": 1_000}


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

    def validate(self) -> BenchConfig:
        known = backend_names()
        for b in self.backends:
            get_runner(b)  # unknown names: one-line error with suggestions
        if not self.backends:
            raise VitCompressError(f"no backend given; pass --backend with some of {', '.join(known)}")
        if not self.batches or any(not 1 <= int(b) <= 65536 for b in self.batches):
            raise VitCompressError(f"batch sizes must be integers >= 1, got {self.batches}; pass e.g. --batch 1,8,32")
        check_precision(self.precision, PRECISIONS)
        if self.mode not in MODES:
            raise VitCompressError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        for name, v in (("warmup", self.warmup), ("iters", self.iters), ("rounds", self.rounds)):
            low, high = (0 if name == "warmup" else 1), MAX_PASSES[name]  # counts capped at what finishes
            if not low <= v <= high:
                raise VitCompressError(f"{name} must be in [{low}, {high}], got {v}", params=[name])
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
    try:
        bv = next(v for v in variants if v.name == base)
        result = {
            "config": asdict(cfg),
            "env": envmod.capture(cfg.threads, cfg.precision),
            "baseline": base,
            "variants": [{"name": v.name, "macs": v.macs, "params": v.params} for v in variants],
            "skipped": [],
            "measurements": [],
        }
        if progress:
            bar = tqdm(
                total=len(cfg.backends) * len(cfg.batches) * cfg.rounds * len(variants), desc="bench", unit="run"
            )
        for backend in cfg.backends:
            cls = get_runner(backend)
            reason = cls.unavailable(cfg.precision, cfg.mode)
            if reason:
                result["skipped"].append({"backend": backend, "reason": reason})
                if bar:
                    bar.update(len(cfg.batches) * cfg.rounds * len(variants))
                continue
            for batch in cfg.batches:
                runners = {}
                inputs = {}  # one input per image shape, shared by the variants (a batch of 256 is large)
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
                    samples = measure(runners, cfg.warmup, cfg.iters, cfg.rounds, tick=bar.update if bar else None)
                    outs = {n: r.output() for n, r in runners.items()} if cfg.check else {}
                except Exception as e:  # a backend failing here is reported, the run goes on
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    result["skipped"].append(
                        {
                            "backend": backend,
                            "batch": batch,
                            "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        }
                    )
                    continue
                finally:
                    for r in runners.values():
                        r.deactivate()
                for v in variants:
                    m = {
                        "backend": backend,
                        "batch": batch,
                        "variant": v.name,
                        "macs": v.macs,
                        "params": v.params,
                        **summarize(samples[v.name], batch),
                        **ratios(v.macs, bv.macs, paired_ratio(samples[v.name], samples[base])),
                        "samples_ms": samples[v.name],
                    }
                    if outs:
                        m["output_finite"] = bool(np.isfinite(outs[v.name]).all())
                    result["measurements"].append(m)
    finally:
        if bar:
            bar.close()
        for v in borrowed:  # their cached files go with the folder
            v.workdir = None
            v._files.clear()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return result
