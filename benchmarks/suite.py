"""The standard DeiT-S benchmark suite: build the variants from scratch, bench them, write the report.

    python -m vitcompress.benchmarks.suite --scale ci   --report bench-report        # CPU, minutes
    python -m vitcompress.benchmarks.suite --scale full --report bench-report        # CPU, longer
    python -m vitcompress.benchmarks.suite --device cuda --scale full --precision fp16 --mode graph --report DIR

Variants (``vitcompress.prune`` on a randomly initialised ``deit_small_patch16_224``; latency does not
depend on weight values, and ``importance="l1"`` keeps the build fast and data-free):

* ``dense``                          the unpruned model (baseline)
* ``p30`` / ``p46`` / ``p60``        30%, 46.2%, 60% MACs reduction, widths rounded to multiples of 8
* ``p30-r1`` / ``p46-r1`` / ``p60-r1`` same reductions with ``round_to=1`` (unaligned widths)
* ``depth25``                        whole blocks removed (granularity depth, 25% MACs)
* ``vpa90`` / ``vpa70`` / ``vpa50``  ``topk-vpa`` keeping 0.9 / 0.7 / 0.5 of the patch tokens at
                                     blocks 3, 6 and 9 (``docs/tokens.md``)
* ``topk70`` / ``evit70`` / ``etps70`` the other keep-rate reducers at 0.7@3,6,9
* ``tome-m70``                       ``tome`` with the merges per block that match ``vpa70``'s MACs
* ``p46+vpa70``                      width pruning (``p46``) and ``vpa70`` together

``--scale ci`` keeps dense, p46, p46-r1, depth25, vpa70 and tome-m70 at batch 8 with few
iterations; ``full`` keeps all variants with the batch sweep 1, 8, 32. ``--device cpu`` uses
ort-cpu and torch-cpu; ``--device cuda`` uses torch-cuda, ort-cuda, ort-trt and trt (each skipped
with the reason where its library or the GPU is missing). ``--mode`` (eager, compile, graph) applies
to the torch runners; the other backends are skipped with the reason in another mode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import vitcompress
from vitcompress.errors import VitCompressError
from vitcompress.progress import tqdm
from vitcompress.token_reduction import reduce_tokens
from vitcompress.tokens.amount import closest_amount, macs_reduction, with_amount
from vitcompress.tokens.schedule import parse_schedule

from .bench import BenchConfig, load_variant, run_bench
from .report import to_markdown, write_report

SOURCE = "deit_small_patch16_224"
# name -> how to build it: ``prune`` kwargs for vitcompress.prune (None = dense) and ``tokens``
# (method, schedule[, variant whose MACs reduction the schedule's amount must match])
VARIANTS = {
    "dense": dict(prune=None),
    "p30": dict(prune=dict(flops_reduction=0.30)),
    "p46": dict(prune=dict(flops_reduction=0.462)),
    "p60": dict(prune=dict(flops_reduction=0.60)),
    "p30-r1": dict(prune=dict(flops_reduction=0.30, round_to=1)),
    "p46-r1": dict(prune=dict(flops_reduction=0.462, round_to=1)),
    "p60-r1": dict(prune=dict(flops_reduction=0.60, round_to=1)),
    "depth25": dict(prune=dict(flops_reduction=0.25, granularity=("depth",))),
    "vpa90": dict(prune=None, tokens=("topk-vpa", "0.9@3,6,9")),
    "vpa70": dict(prune=None, tokens=("topk-vpa", "0.7@3,6,9")),
    "vpa50": dict(prune=None, tokens=("topk-vpa", "0.5@3,6,9")),
    "topk70": dict(prune=None, tokens=("topk", "0.7@3,6,9")),
    "evit70": dict(prune=None, tokens=("evit", "0.7@3,6,9")),
    "etps70": dict(prune=None, tokens=("etps", "0.7@3,6,9")),
    "tome-m70": dict(prune=None, tokens=("tome", "merge=1", "vpa70")),
    "p46+vpa70": dict(prune=dict(flops_reduction=0.462), tokens=("topk-vpa", "0.7@3,6,9")),
}
SCALES = {
    "ci": dict(
        variants=["dense", "p46", "p46-r1", "depth25", "vpa70", "tome-m70"], batches=[8], warmup=2, iters=3, rounds=4
    ),
    "full": dict(variants=list(VARIANTS), batches=[1, 8, 32], warmup=5, iters=10, rounds=6),
}
BACKENDS = {"cpu": ["ort-cpu", "torch-cpu"], "cuda": ["torch-cuda", "ort-cuda", "ort-trt", "trt"]}


def _with_tokens(model, tokens, source):
    """``model`` with the variant's token schedule; a third entry names the variant to match in MACs."""
    method, spec = tokens[:2]
    schedule = parse_schedule(spec, method)
    if len(tokens) > 2:
        ref = VARIANTS[tokens[2]]["tokens"]
        target = macs_reduction(source, parse_schedule(ref[1], ref[0]))
        schedule = with_amount(schedule, closest_amount(source, schedule, target))
    return reduce_tokens(model, schedule).model


def build_variants(names, importance: str = "l1", seed: int = 0, max_batch: int = 32, workdir=None):
    """Build the named suite variants (dense source, ``vitcompress.prune`` and ``reduce_tokens`` results)."""
    torch.manual_seed(seed)
    source = vitcompress.create_source_model(SOURCE)
    out = []
    for name in tqdm(names, desc="build variants", unit="variant"):
        how = VARIANTS[name]
        model = (
            source
            if how["prune"] is None
            else vitcompress.prune(source, importance=importance, seed=seed, **how["prune"]).model
        )
        if how.get("tokens"):
            model = _with_tokens(model, how["tokens"], source)
        out.append(load_variant(model, name, workdir=workdir, max_batch=max_batch))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="ci")
    p.add_argument("--device", choices=sorted(BACKENDS), default="cpu")
    p.add_argument("--backend", help="Override the backend list (comma-separated).")
    p.add_argument("--batch", help="Override the batch sizes (comma-separated).")
    p.add_argument("--variants", help=f"Override the variants (comma-separated from {', '.join(VARIANTS)}).")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--mode", default="eager", help="torch runners: eager, compile or graph (CUDA-graph replay).")
    p.add_argument("--iters", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--threads", type=int, help="CPU threads (default: all usable cores).")
    p.add_argument("--importance", default="l1", help="Scorer used to build the variants (l1 or random: data-free).")
    p.add_argument("--report", default="bench-report", help="Report directory (report.md/json/png).")
    a = p.parse_args(argv)

    s = dict(SCALES[a.scale])
    try:
        names = a.variants.split(",") if a.variants else s["variants"]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise VitCompressError(f"unknown suite variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        cfg = BenchConfig(
            backends=a.backend.split(",") if a.backend else BACKENDS[a.device],
            batches=[int(b) for b in a.batch.split(",")] if a.batch else s["batches"],
            precision=a.precision,
            mode=a.mode,
            warmup=s["warmup"],
            iters=a.iters or s["iters"],
            rounds=a.rounds or s["rounds"],
            threads=a.threads,
        ).validate()
        t0 = time.time()
        variants = build_variants(names, a.importance, max_batch=max(cfg.batches), workdir=Path(a.report) / "work")
        result = run_bench(variants, cfg, progress=True)
        result["suite"] = {
            "source": SOURCE,
            "scale": a.scale,
            "device": a.device,
            "importance": a.importance,
            "mode": a.mode,
            "variants": {n: VARIANTS[n] for n in names},
            "command": " ".join(sys.argv),
            "seconds": round(time.time() - t0, 1),
        }
        paths = write_report(result, a.report)
    except VitCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(result))
    print(f"report: {paths['md']} {paths['json']} {paths['png'] or '(no PNG: matplotlib is missing)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
