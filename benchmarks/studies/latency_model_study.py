"""How well the latency model predicts measured latency: random plans, predicted against measured.

For each backend (default ``ort-cpu`` and ``torch-cpu``), the model's latency table is profiled
(``vitcompress profile`` with ``topk-vpa``'s own time; ``--tables DIR`` keeps and reuses
``DIR/<backend>.json``), then ``--plans`` random plans are drawn (fixed ``--seed``), in turn of
five structures:

- ``aligned``: random widths (embedding, q/k, v, MLP; heads kept whole) rounded to multiples of 8;
- ``unaligned``: the same with odd widths;
- ``depth``: random blocks removed;
- ``tokens``: ``topk-vpa`` at a random keep rate after a random first block;
- ``mixed``: aligned widths, a block or two removed and a token schedule.

Every plan is built (sliced from the model, random weights: latency does not depend on them) and
measured with the bench (``run_bench``: interleaved rounds with the dense model, in groups of
``--group`` plans plus the dense model), giving a measured latency ratio with its 95% interval;
the table's predicted ratio is ``table.model_ms(plan) / table.model_ms(dense)``. Printed and
written to ``OUT/latency_model_study.json`` and ``.md``: per plan the MACs, predicted and measured
ratio (with the interval) and the error in points of latency cut; per backend the mean absolute
error, the worst error, R2 of measured on predicted, how many intervals contain the prediction,
and the mean error per structure; the warnings of the bench runs (busy machine, wide intervals).

Run on a quiet machine (the figures of a busy one are flagged ``busy``)::

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.latency_model_study --threads 2 --out runs/latency-model \\
        --tables runs/latency-model/tables
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from torch import nn

from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.counting import count
from vitcompress.families import identity_plan
from vitcompress.io import atomic_file
from vitcompress.latency import LatencyTable
from vitcompress.latency_search.profile import ProfileConfig, profile_latency
from vitcompress.plan import Plan
from vitcompress.resolve import resolve_model
from vitcompress.slicers import slice_model
from vitcompress.tokens.apply import apply_tokens

STRUCTURES = ("aligned", "unaligned", "depth", "tokens", "mixed")
TOKEN_METHOD = "topk-vpa"
RESULTS = "latency_model_study"


def _keep(rng: random.Random, full: int, low: float, aligned: bool) -> int:
    """A random kept count in [low * full, full]: a multiple of 8 when aligned (and full allows), odd otherwise."""
    n = rng.randint(max(1, int(low * full)), full)
    if aligned and full >= 8:
        return min(full, max(8, round(n / 8) * 8))
    if not aligned and n % 2 == 0 and n > 1:
        n -= 1
    return n


def _widths(plan: Plan, rng: random.Random, aligned: bool, low: float) -> None:
    plan.embed = sorted(rng.sample(plan.embed, _keep(rng, len(plan.embed), low, aligned)))
    for b in plan.blocks:
        lp = plan.layers[b]
        qk = _keep(rng, len(lp.qk[0]), low, aligned)
        v = _keep(rng, len(lp.v[0]), low, aligned)
        lp.qk = [sorted(rng.sample(q, qk)) for q in lp.qk]
        lp.v = [sorted(rng.sample(x, v)) for x in lp.v]
        lp.mlp = sorted(rng.sample(lp.mlp, _keep(rng, len(lp.mlp), low, aligned)))


def random_plan(model: nn.Module, structure: str, rng: random.Random, low: float = 0.4) -> tuple[Plan, str | None]:
    """A random plan of ``structure`` and its token schedule (None without tokens)."""
    plan = identity_plan(model)
    schedule = None
    n_blocks = len(plan.blocks)
    if structure in ("aligned", "unaligned", "mixed"):
        _widths(plan, rng, structure != "unaligned", low)
    if structure in ("depth", "mixed"):
        drop = rng.randint(1, max(1, n_blocks // 3)) if structure == "depth" else rng.randint(1, 2)
        plan.blocks = sorted(rng.sample(plan.blocks, n_blocks - min(drop, n_blocks - 1)))
        plan.layers = {b: plan.layers[b] for b in plan.blocks}
    if structure in ("tokens", "mixed"):
        kept = len(plan.blocks)
        first = rng.randint(1, max(1, kept // 2))
        keep = round(rng.uniform(0.5, 0.9), 2)
        schedule = f"{keep}@{','.join(str(b) for b in range(first, kept, max(1, kept // 4)))}"
    return plan, schedule


def build(model: nn.Module, plan: Plan, schedule: str | None) -> nn.Module:
    net = slice_model(model, plan)
    if schedule is not None:
        apply_tokens(net, schedule, method=TOKEN_METHOD)
    return net.eval()


def _table(model, backend: str, args, tables: Path | None) -> LatencyTable:
    path = tables / f"{backend}.json" if tables is not None else None
    if path is not None and path.is_file():
        print(f"latency table {path} (measured in {LatencyTable.load(path).seconds:.0f} s)", flush=True)
        return LatencyTable.load(path)
    cfg = ProfileConfig(
        backend=backend,
        batch=args.batch,
        threads=args.threads,
        token_method=TOKEN_METHOD,
        **(json.loads(args.profile_options) if args.profile_options else {}),
    )
    t0 = time.perf_counter()
    table = profile_latency(model, cfg, progress=args.progress)
    print(f"profiled {backend} in {time.perf_counter() - t0:.0f} s", flush=True)
    if path is not None:
        table.save(path)
    return table


def summarize(rows: list[dict]) -> dict:
    """Mean absolute error and worst error (points of latency cut), R2 of measured on predicted, how many
    95% intervals contain the prediction, and the mean absolute error per structure."""
    pred = np.asarray([r["predicted_ratio"] for r in rows])
    meas = np.asarray([r["measured_ratio"] for r in rows])
    err = np.abs(pred - meas) * 100
    ss_tot = float(((meas - meas.mean()) ** 2).sum())
    worst = rows[int(err.argmax())]
    by: dict = {}
    for r, e in zip(rows, err):
        by.setdefault(r["structure"], []).append(float(e))
    return {
        "plans": len(rows),
        "mae_points": float(err.mean()),
        "worst_points": float(err.max()),
        "worst_plan": worst["plan"],
        "r2": 1.0 - float(((meas - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else None,
        "inside_ci": int(sum(r["ci95"][0] <= r["predicted_ratio"] <= r["ci95"][1] for r in rows)),
        "bias_points": float(((pred - meas) * 100).mean()),
        "per_structure": {k: {"plans": len(v), "mae_points": float(np.mean(v))} for k, v in by.items()},
        "busy_rows": sum("busy" in r["flags"] for r in rows),
    }


def study_backend(model: nn.Module, backend: str, args, tables: Path | None) -> dict:
    table = _table(model, backend, args, tables)
    dense_ms = table.model_ms(model)
    rng = random.Random(args.seed)
    plans = []
    for i in range(args.plans):
        structure = STRUCTURES[i % len(STRUCTURES)]
        plan, schedule = random_plan(model, structure, rng)
        net = build(model, plan, schedule)
        plans.append(
            {
                "plan": f"{structure}-{i}",
                "structure": structure,
                "schedule": schedule,
                "net": net,
                "macs_ratio": count(net).macs / count(model).macs,
                "predicted_ratio": table.model_ms(net) / dense_ms,
            }
        )
    cfg = dict(
        backends=[backend],
        batches=[args.batch],
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        threads=args.threads,
        until_stable=args.until_stable,
    )
    rows, warnings = [], []
    for g in range(0, len(plans), args.group):
        group = plans[g : g + args.group]
        variants = [load_variant(model, "dense", max_batch=args.batch)]
        variants += [load_variant(p["net"], p["plan"], max_batch=args.batch) for p in group]
        result = run_bench(variants, BenchConfig(**cfg), baseline="dense")
        warnings += result["warnings"]
        by = {m["variant"]: m for m in result["measurements"]}
        for p in group:
            m = by.get(p["plan"])
            if m is None:
                continue
            rows.append(
                {
                    **{k: v for k, v in p.items() if k != "net"},
                    "measured_ratio": m["latency_ratio"],
                    "ci95": m["latency_ratio_ci95"],
                    "error_points": (p["predicted_ratio"] - m["latency_ratio"]) * 100,
                    "flags": m["flags"],
                    "rounds": m["rounds"],
                }
            )
            print(
                f"{backend} {p['plan']:14s} MACs {p['macs_ratio']:.3f} predicted {p['predicted_ratio']:.3f} "
                f"measured {m['latency_ratio']:.3f} [{m['latency_ratio_ci95'][0]:.3f}, "
                f"{m['latency_ratio_ci95'][1]:.3f}] {' '.join(m['flags'])}",
                flush=True,
            )
    return {
        "backend": backend,
        "table": table.describe(),
        "table_env": {k: table.env.get(k) for k in ("load_before", "load_after", "others_busy", "probe_ci95_reach")},
        "rows": rows,
        "summary": summarize(rows) if rows else None,
        "warnings": warnings,
    }


def to_markdown(results: dict) -> str:
    lines = [f"# Latency model: predicted against measured ({results['model']}, batch {results['batch']})", ""]
    for rec in results["backends"]:
        s = rec["summary"]
        lines += [f"## {rec['backend']}", "", f"Table: {rec['table']}.", ""]
        if s is None:
            lines += ["Nothing measured.", ""]
            continue
        lines += [
            f"{s['plans']} plans: mean absolute error {s['mae_points']:.1f} points of latency cut, worst "
            f"{s['worst_points']:.1f} ({s['worst_plan']}), mean signed error {s['bias_points']:+.1f} (predicted minus "
            f"measured ratio), R2 {'-' if s['r2'] is None else format(s['r2'], '.3f')}; {s['inside_ci']} of "
            f"{s['plans']} measured 95% intervals contain the prediction; {s['busy_rows']} rows flagged busy.",
            "",
            "| structure | plans | mean absolute error (points) |",
            "|---|---:|---:|",
            *[
                f"| {k} | {v['plans']} | {v['mae_points']:.1f} |"
                for k, v in sorted(s["per_structure"].items(), key=lambda kv: -kv[1]["mae_points"])
            ],
            "",
            "| plan | tokens | MACs ratio | predicted ratio | measured ratio [95% CI] | error (points) | flags |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in rec["rows"]:
            lines.append(
                f"| {r['plan']} | {r['schedule'] or '-'} | {r['macs_ratio']:.3f} | {r['predicted_ratio']:.3f} | "
                f"{r['measured_ratio']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['error_points']:+.1f} | "
                f"{', '.join(r['flags']) or '-'} |"
            )
        lines += ["", *[f"- warning: {w}" for w in dict.fromkeys(rec["warnings"])], ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224", help="timm name or artifact folder")
    ap.add_argument("--backends", default="ort-cpu,torch-cpu")
    ap.add_argument("--plans", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--group", type=int, default=5, help="plans measured together with the dense model")
    ap.add_argument("--until-stable", action="store_true", help="bench --until-stable for every group")
    ap.add_argument("--tables", type=Path, help="keep and reuse the latency tables here (<backend>.json)")
    ap.add_argument("--profile-options", help='JSON of ProfileConfig fields, e.g. {"sweep": 8} (tests)')
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    model = resolve_model(args.model).eval()
    if args.tables is not None:
        args.tables.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {
        "model": str(args.model),
        "batch": args.batch,
        "command": "python -m vitcompress.benchmarks.studies.latency_model_study " + " ".join(argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "backends": [study_backend(copy.deepcopy(model), b, args, args.tables) for b in args.backends.split(",")],
    }
    results["seconds"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / f"{RESULTS}.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1))
    md = to_markdown(results)
    with atomic_file(args.out / f"{RESULTS}.md") as tmp:
        tmp.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
