"""Prune-stage cost: wall time and peak memory (printed, not asserted).

1. Prune DeiT-B with the ``taylor`` scorer on 64 calibration images (aim: < 60 s on 2 CPU cores).
2. Select (-50% MACs) and slice ViT-L given precomputed scores (aim: < 2 s); the select time,
   the slice time and their total are printed.

Each measurement runs in a fresh subprocess so its peak resident memory is its own.
Run: ``python -m vitcompress.benchmarks.prune_bench [--calib-images 64] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import vitcompress
from vitcompress.budget import Budget, select
from vitcompress.families import build_groups
from vitcompress.io import atomic_file
from vitcompress.scorers import SCORERS
from vitcompress.slicers import slice_model


def _prune_deit_b(calib: int) -> dict:
    torch.manual_seed(0)
    model = vitcompress.create_source_model("deit_base_patch16_224")
    t0 = time.perf_counter()
    res = vitcompress.prune(
        model,
        flops_reduction=0.462,
        importance="taylor",
        data="digits",
        calib_images=calib,
        batch_size=32,
        progress=True,
    )
    return {
        "task": f"prune deit_base_patch16_224 taylor, {calib} calibration images, -46.2% MACs",
        "seconds": time.perf_counter() - t0,
        "phases": res.seconds,
        "achieved": res.achieved,
    }


def _slice_vit_l() -> dict:
    torch.manual_seed(0)
    model = vitcompress.create_source_model("vit_large_patch16_224")
    kinds = ("heads", "qk", "v", "mlp", "embed")
    groups = build_groups(model, kinds)
    scores = SCORERS.get("l1")(model, groups)
    t0 = time.perf_counter()
    plan, achieved = select(model, groups, scores, Budget("macs", 0.5))
    t1 = time.perf_counter()
    slice_model(model, plan)
    t2 = time.perf_counter()
    return {
        "task": "vit_large_patch16_224: select (-50% MACs) and slice, scores given",
        "seconds": t2 - t0,
        "select_seconds": t1 - t0,
        "slice_seconds": t2 - t1,
        "achieved": achieved,
    }


def _child(task: str, calib: int) -> None:
    out = _prune_deit_b(calib) if task == "prune" else _slice_vit_l()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.calib_images)
        return
    results = []
    for task in ("prune", "slice"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vitcompress.benchmarks.prune_bench",
                "--child",
                task,
                "--calib-images",
                str(args.calib_images),
            ],
            capture_output=True,
            text=True,
        )
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{task} benchmark failed")
        results.append(json.loads(line[0][7:]))
    print(f"threads: {torch.get_num_threads()}  torch {torch.__version__}")
    for r in results:
        if "select_seconds" in r:
            extra = f"  (select {r['select_seconds']:.2f} s, slice {r['slice_seconds']:.2f} s)"
        else:
            extra = f"  phases {', '.join(f'{k} {v:.1f} s' for k, v in r['phases'].items())}"
        print(f"{r['task']}: {r['seconds']:.2f} s total, peak RSS {r['peak_rss_mib']:.0f} MiB{extra}")
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
