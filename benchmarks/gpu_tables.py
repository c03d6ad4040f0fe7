"""GPU latency tables: how much of each FLOPs cut becomes a latency cut, on the GPU this runs on.

    bash benchmarks/gpu_tables.sh OUT                  # the GPU machine, from the checkout root
    python -m vitcompress.benchmarks.gpu_tables --out OUT [--profile auto] [--time-limit 420]
    python -m vitcompress.benchmarks.gpu_tables --replot OUT/<gpu-name>   # the PNG, where matplotlib is
    python -m vitcompress.benchmarks.gpu_tables --scale tiny --device cpu --out OUT   # the same code, on a CPU

What it measures (``--scale gpu``): PyTorch on CUDA in fp16, eager and CUDA-graph replay
(``torch-cuda`` runner, ``--mode eager`` and ``graph``), batches 1, 64 and 256, for DeiT-S, ViT-B and
ViT-L (random weights: latency does not depend on values) and their variants

* ``dense``: the unpruned model (each model's baseline);
* ``p46``: 46.2% of the MACs removed by width pruning (heads, q/k, v, MLP), widths multiples of 8;
* ``p46-r1``: the same with ``round_to=1`` (unaligned widths);
* ``vpa70``: ``topk-vpa`` keeping 0.7 of the patch tokens at blocks 3, 6 and 9;
* ``tome-m70``: ToMe with the merges per block whose MACs reduction matches ``vpa70``'s;
* ``vpa-r6`` (ViT-L only): ``topk-vpa`` at the 6% per-layer rate (``rate=0.06@0``), the published
  reference: -50.44% FLOPs, -46.8% GPU latency.

Pruning uses the data-free ``l1`` importance (no calibration data, no scikit-learn). Every variant is
built first (CPU), then moved to the device once; then, per model, mode and batch, all its variants
are timed in interleaved rounds (``benchmarks.bench.run_bench``: CUDA events on each runner's own
stream, warm-up first). Before timing, the plan's size and an estimate of its duration are printed;
a group whose estimate would cross ``--time-limit`` is skipped and reported as such, so the call ends
in time with what it measured.

Targets, checked in the report: the aligned 46.2% width pruning at batch >= 64 under CUDA graphs
reaches efficiency >= 0.90 (efficiency = latency reduction / MACs reduction), and ViT-L ``vpa-r6``
cuts latency by >= 46.8%. ``--profile auto`` then profiles (``torch.profiler``, eager, per operator)
each variant that missed a target next to its dense baseline, as time allows; ``--profile
MODEL/VARIANT`` profiles one.

Writes ``OUT/<gpu-name>/gpu_tables.json`` (every raw sample), ``gpu_tables.md`` and, where matplotlib
is installed, ``gpu_tables.png`` (else ``--replot`` draws it later from the JSON), and
``profile.txt`` when a profile ran. Needs torch, timm, numpy and safetensors only: no click, tqdm,
scikit-learn, matplotlib, onnx-graphsurgeon or onnxruntime GPU packages.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import vitcompress
from vitcompress.errors import VitCompressError
from vitcompress.io import atomic_file
from vitcompress.tokens import apply_tokens, parse_schedule
from vitcompress.tokens.amount import closest_amount, macs_reduction, with_amount

from . import env as envmod
from .bench import BenchConfig, load_variant, run_bench
from .gpu_report import PAPER, replot, rows, slug, targets, to_markdown, write
from .runners import Variant


@dataclass
class ModelPlan:
    """One source model and which variants to build from it."""

    label: str
    name: str
    kwargs: dict = field(default_factory=dict)
    rate_variant: bool = False  # also the 6%-rate topk-vpa variant (ViT-L)


@dataclass
class Scale:
    models: list
    batches: list
    modes: list
    precision: str
    warmup: int
    iters: int
    rounds: int


TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=12, num_heads=4, num_classes=10)
SCALES = {
    "gpu": Scale(
        models=[
            ModelPlan("DeiT-S", "deit_small_patch16_224"),
            ModelPlan("ViT-B", "vit_base_patch16_224"),
            ModelPlan("ViT-L", "vit_large_patch16_224", rate_variant=True),
        ],
        batches=[1, 64, 256],
        modes=["eager", "graph"],
        precision="fp16",
        warmup=5,
        iters=10,
        rounds=6,
    ),
    "tiny": Scale(
        models=[ModelPlan("tiny", "vit_small_patch16_224", TINY, rate_variant=True)],
        batches=[1],
        modes=["eager"],
        precision="fp32",
        warmup=1,
        iters=2,
        rounds=2,
    ),
}
#: Assumed device rates for the duration estimate: (matrix TFLOP/s reached by a ViT in fp16, host
#: microseconds per eager block, per graph-replayed block). Only the plan's printed estimate uses them.
RATES = {"cuda": (350.0, 180.0, 25.0), "cpu": (0.05, 400.0, 400.0)}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- build
def build_variants(plan: ModelPlan, seed: int = 0) -> list[Variant]:
    """The variants of one model (module doc), built on the CPU in fp32."""
    torch.manual_seed(seed)
    source = vitcompress.create_source_model(plan.name, **plan.kwargs)
    vpa = parse_schedule("0.7@3,6,9", "topk-vpa")
    tome = parse_schedule("merge=1", "tome")
    tome = with_amount(tome, closest_amount(source, tome, macs_reduction(source, vpa)))
    models = {
        "dense": source,
        "p46": vitcompress.prune(source, flops_reduction=0.462, importance="l1", seed=seed).model,
        "p46-r1": vitcompress.prune(source, flops_reduction=0.462, importance="l1", seed=seed, round_to=1).model,
        "vpa70": apply_tokens(copy.deepcopy(source), vpa),
        "tome-m70": apply_tokens(copy.deepcopy(source), tome),
    }
    if plan.rate_variant:
        models["vpa-r6"] = apply_tokens(copy.deepcopy(source), "rate=0.06@0", method="topk-vpa")
    return [load_variant(m.eval(), name) for name, m in models.items()]


# ------------------------------------------------------------------------------------------ plan
def pass_ms(variant: Variant, batch: int, mode: str, device: str) -> float:
    """Estimated milliseconds of one pass: the larger of the matrix work at the assumed rate and the
    host work (eager dispatch, or graph replay) per block."""
    tflops, eager_us, graph_us = RATES[device]
    depth = len(variant.model.blocks)
    compute = 2 * variant.macs * batch / (tflops * 1e12) * 1e3
    host = depth * (eager_us if mode == "eager" else graph_us) / 1e3
    return max(compute, host)


def estimate_s(variants: list[Variant], batch: int, mode: str, scale: Scale, device: str) -> float:
    """Seconds one (model, mode, batch) group takes: its passes plus ~1 s per variant of activation
    (device copy, first call, graph capture)."""
    passes = scale.warmup + scale.iters * scale.rounds + 4
    return sum(passes * pass_ms(v, batch, mode, device) / 1e3 + 1.0 for v in variants)


# --------------------------------------------------------------------------------------- profile
def profile_table(variant: Variant, batch: int, device: str, precision: str, passes: int = 5) -> str:
    """torch.profiler's per-operator table of ``passes`` eager forward passes (after 3 warm-up passes)."""
    from torch.profiler import ProfilerActivity, profile

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = copy.deepcopy(variant.model).to(device, dtype).eval()
    x = torch.from_numpy(variant.example(batch)).to(device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(passes):
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()
    averages = prof.key_averages()
    for key in (["self_device_time_total", "self_cuda_time_total"] if device == "cuda" else []) + [
        "self_cpu_time_total"
    ]:
        try:
            return averages.table(sort_by=key, row_limit=25)
        except (AttributeError, KeyError, ValueError):
            continue
    return averages.table(row_limit=25)


def profiles_wanted(result: dict, spec: str) -> list[tuple[str, str, int]]:
    """(model, variant, batch) to profile: ``auto`` = every missed target, ``MODEL/VARIANT`` = that
    variant at the largest batch, ``none`` = nothing."""
    if spec == "none":
        return []
    if spec == "auto":
        return sorted({(t["model"], t["variant"], t["batch"]) for t in result["targets"] if not t["met"]})
    model, _, variant = spec.partition("/")
    batches = [r["batch"] for r in rows(result) if r["model"] == model and r["variant"] == variant]
    if not batches:
        raise VitCompressError(f"--profile {spec!r} names no measured model/variant; e.g. ViT-L/vpa-r6")
    return [(model, variant, max(batches))]


# ------------------------------------------------------------------------------------------- main
def run(args) -> dict:
    t0 = time.perf_counter()
    scale = SCALES[args.scale]
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise VitCompressError("no CUDA device visible to torch; run on a GPU machine or pass --device cpu")
    precision = args.precision or (scale.precision if device == "cuda" else "fp32")
    modes = [m for m in scale.modes if device == "cuda" or m != "graph"]
    batches = [int(b) for b in args.batch.split(",")] if args.batch else scale.batches
    env = envmod.capture(torch.get_num_threads(), precision)
    device_name = env["gpu"]["name"] if device == "cuda" else "cpu"
    log(f"device: {device_name}; torch {torch.__version__}; python {env['python']}")

    built: dict[str, list[Variant]] = {}
    for plan in scale.models:
        tb = time.perf_counter()
        variants = build_variants(plan)
        for v in variants:
            v.model = v.model.to(device, torch.float16 if precision == "fp16" else torch.float32)
            v.max_batch = max(batches)
        built[plan.label] = variants
        log(f"built {plan.label}: {', '.join(v.name for v in variants)} in {time.perf_counter() - tb:.0f} s")
    build_s = time.perf_counter() - t0

    groups = [(label, mode, b) for label in built for mode in modes for b in batches]
    estimates = {g: estimate_s(built[g[0]], g[2], g[1], scale, device) for g in groups}
    cells = sum(len(built[label]) for label, _, _ in groups)
    log(
        f"plan: {len(built)} model(s) x {len(modes)} mode(s) x {len(batches)} batch(es) = {len(groups)} groups, "
        f"{cells} cells, {cells * (scale.warmup + scale.iters * scale.rounds)} passes; estimated "
        f"{sum(estimates.values()):.0f} s of timing after {build_s:.0f} s of building (limit {args.time_limit:.0f} s)"
    )
    result = {
        "command": " ".join(["python -m vitcompress.benchmarks.gpu_tables", *sys.argv[1:]]),
        "device_name": device_name,
        "env": env,
        "scale": {"name": args.scale, "precision": precision, "modes": modes, "batches": batches}
        | {k: getattr(scale, k) for k in ("warmup", "iters", "rounds")},
        "plan": {"groups": len(groups), "cells": cells, "estimate_s": sum(estimates.values())},
        "paper": PAPER,
        "build_s": build_s,
        "groups": [],
        "skipped": [],
    }
    backend = "torch-cuda" if device == "cuda" else "torch-cpu"
    for label, mode, batch in groups:
        elapsed = time.perf_counter() - t0
        if elapsed + estimates[(label, mode, batch)] > args.time_limit:
            result["skipped"].append(f"{label}, {mode}, batch {batch}: estimated to cross the time limit")
            log(
                f"skip {label} {mode} b{batch}: {elapsed:.0f} s elapsed, estimate {estimates[(label, mode, batch)]:.0f} s"
            )
            continue
        cfg = BenchConfig(
            backends=[backend],
            batches=[batch],
            precision=precision,
            mode=mode,
            warmup=scale.warmup,
            iters=args.iters or scale.iters,
            rounds=args.rounds or scale.rounds,
        )
        tg = time.perf_counter()
        bench = run_bench(built[label], cfg)
        bench.pop("env", None)  # recorded once at the top
        for s in bench["skipped"]:
            result["skipped"].append(f"{label}, {mode}, batch {batch}: {s['reason']}")
        result["groups"].append({"model": label, "mode": mode, "batch": batch, "bench": bench})
        dense = next((m for m in bench["measurements"] if m["variant"] == "dense"), None)
        log(
            f"{label} {mode} b{batch}: {time.perf_counter() - tg:.1f} s"
            + (f", dense {dense['median_ms']:.3f} ms" if dense else "")
            + "".join(
                f", {m['variant']} {m['latency_ratio']:.3f}" for m in bench["measurements"] if m["variant"] != "dense"
            )
        )
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - t0
    folder = Path(args.out) / slug(device_name)
    paths = write(result, folder)

    wanted = profiles_wanted(result, args.profile)
    sections = []
    for model, variant, batch in wanted:
        by_name = {v.name: v for v in built[model]}
        for name in dict.fromkeys([variant, "dense"]):
            est = 8 * pass_ms(by_name[name], batch, "eager", device) / 1e3 + 2
            if time.perf_counter() - t0 + est > args.time_limit:
                sections.append(f"## {model} {name} batch {batch}: not profiled (time limit)\n")
                continue
            table = profile_table(by_name[name], batch, device, precision)
            sections.append(f"## {model} {name} batch {batch} (eager, {precision}, 5 passes)\n\n{table}\n")
    if sections:
        with atomic_file(folder / "profile.txt") as tmp:
            tmp.write_text("\n".join(sections))
        paths["profile"] = folder / "profile.txt"
    result["seconds"] = time.perf_counter() - t0
    log("")
    log(to_markdown(result))
    log(
        "wrote "
        + ", ".join(str(p) for p in paths.values() if p)
        + ("" if paths["png"] else f" (no PNG: matplotlib is missing; draw it with --replot {folder})")
    )
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu-tables", help="Output folder; reports go to OUT/<gpu-name>/.")
    p.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="Default: fp16 on CUDA, fp32 on the CPU.")
    p.add_argument("--batch", help="Override the batch sizes (comma-separated).")
    p.add_argument("--iters", type=int, help="Timed passes per variant per round (default: the scale's).")
    p.add_argument("--rounds", type=int, help="Interleaved rounds (default: the scale's).")
    p.add_argument("--time-limit", type=float, default=420.0, help="Seconds; groups that would cross it are skipped.")
    p.add_argument("--profile", default="none", help="none, auto (every missed target) or MODEL/VARIANT.")
    p.add_argument("--replot", metavar="DIR", help="Only draw DIR/gpu_tables.png from DIR/gpu_tables.json.")
    a = p.parse_args(argv)
    try:
        if a.replot:
            log(f"wrote {replot(a.replot)}")
            return 0
        run(a)
    except VitCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
