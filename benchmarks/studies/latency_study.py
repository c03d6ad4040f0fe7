"""Latency study: pruning to a latency target against the MACs-targeted plan (printed figures and a plot).

Two parts, run separately (each adds its figures to ``OUT/latency_study.json``; the plot
``OUT/latency_study.png`` shows every part recorded there):

``deit``: DeiT-S (random weights: latency does not depend on weight values) on ``--backend``
(default ``ort-cpu``, batch 8, fp32, ``--threads``):

1. its latency table (``vitcompress profile``; ``--table FILE`` reuses one), with the time it took;
2. the MACs-targeted plan: ``prune --flops-reduction 0.462`` (taylor scores on 32 digits images);
3. the latency-targeted plan: ``prune --latency-reduction 0.424`` with the table (same scores);
4. the dense model and both plans measured together with the bench runners (interleaved rounds);
   printed: MACs cut, predicted and measured latency cut of each plan. The latency-targeted plan
   should keep more MACs than the MACs-targeted one at (about) the same measured latency.

``mnist``: the mnist10k reference teacher (``make teacher``) on the same backend:

1. its latency table with the token reducer's own time (``--token-method``, as ``compress``);
2. per latency cut R (default 40% and 60%): ``compress`` (joint search of depth, tokens and
   widths, then distillation, export and bench); and the MACs-targeted pipeline: a one-shot
   ``prune --flops-reduction F`` of the widths, F bisected until the table predicts the same cut
   R, then the same distillation (same epochs, settings and teacher);
3. the dense teacher and both compressed models measured together with the bench runners;
   printed: validation top-1, MACs cut, predicted and measured latency cut of each.

Run on the CPU (one process; ``--threads`` is what ONNX Runtime uses)::

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.latency_study deit --threads 2 --out runs/latency
    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.latency_study mnist --threads 2 --out runs/latency

On a GPU, the DeiT-S part on PyTorch fp16 with CUDA graphs (the table is profiled in the same mode)::

    python -m vitcompress.benchmarks.studies.latency_study deit --backend torch-cuda --precision fp16 --mode graph \\
        --out runs/latency-gpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

import vitcompress
from vitcompress.artifact import load
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.counting import count
from vitcompress.distill import DistillConfig
from vitcompress.evaluate import evaluate_data
from vitcompress.io import atomic_file
from vitcompress.latency import LatencyTable
from vitcompress.latency_search.compress import CompressConfig, compress
from vitcompress.latency_search.profile import ProfileConfig, profile_latency
from vitcompress.latency_search.tables import format_table
from vitcompress.resolve import resolve_model
from vitcompress.training import TrainConfig, fit

RESULTS = "latency_study.json"


def _table(model, path: Path, args, token_method: str | None = None) -> LatencyTable:
    """The model's table at ``path`` (profiled and written there when missing)."""
    if path.is_file():
        table = LatencyTable.load(path)
        print(f"latency table {path} (measured in {table.seconds:.0f} s)", flush=True)
        print(format_table(table), flush=True)
        return table
    cfg = ProfileConfig(
        backend=args.backend,
        batch=args.batch,
        precision=args.precision,
        mode=args.mode,
        threads=args.threads,
        token_method=token_method,
    )
    table = profile_latency(model, cfg, progress=True)
    table.save(path)
    print(format_table(table), flush=True)
    print(f"profiled {table.describe()} in {table.seconds:.0f} s ({table.seconds / 60:.1f} min)", flush=True)
    return table


def _bench(models: dict, args) -> tuple[dict, dict]:
    """Measure the models together (the first is the baseline): per name the median ms and the
    measured cut (one minus the paired latency ratio: the bench stage's figure), the fastest pass
    and the cut between fastest passes (on a busy CPU the uncontended figure), and the environment."""
    cfg = BenchConfig(
        backends=[args.backend],
        batches=[args.batch],
        precision=args.precision,
        mode=args.mode,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
    )
    names = list(models)
    variants = [load_variant(m, name=n, max_batch=args.batch) for n, m in models.items()]
    res = run_bench(variants, cfg, baseline=names[0], progress=True)
    if res["skipped"]:
        raise SystemExit(f"could not measure on {args.backend}: {res['skipped']}")
    by = {m["variant"]: m for m in res["measurements"]}
    fastest = {n: min(s for rnd in by[n]["samples_ms"] for s in rnd) for n in names}
    out = {
        n: {
            "ms": by[n]["median_ms"],
            "cut": 1 - by[n]["latency_ratio"],
            "min_ms": fastest[n],
            "cut_min": 1 - fastest[n] / fastest[names[0]],
        }
        for n in names
    }
    return out, res["env"]


def _row(name, model, dense, table, measured) -> dict:
    m0, m = count(dense).macs, count(model).macs
    p0, p = table.model_ms(dense), table.model_ms(model)
    return {
        "plan": name,
        "macs": m,
        "macs_cut": 1 - m / m0,
        "predicted_cut": 1 - p / p0,
        "measured_ms": measured[name]["ms"],
        "measured_cut": measured[name]["cut"],
        "min_ms": measured[name]["min_ms"],
        "measured_cut_min": measured[name]["cut_min"],
    }


def deit(args, out: Path) -> dict:
    """The DeiT-S part (module docstring)."""
    torch.manual_seed(0)
    dense = resolve_model(args.model).eval()
    tag = f"{args.backend}.b{args.batch}.{args.precision}" + (f".{args.mode}" if args.mode != "eager" else "")
    table = _table(dense, Path(args.table) if args.table else out / f"deit_s.{tag}.json", args)
    common = dict(importance="taylor", data="digits", calib_images=args.calib_images, seed=0)
    t0 = time.perf_counter()
    by_macs = vitcompress.prune(copy.deepcopy(dense), flops_reduction=args.macs_reduction, **common).model
    by_latency = vitcompress.prune(
        copy.deepcopy(dense), latency_reduction=args.latency_reduction, table=table, **common
    ).model
    print(f"pruned both plans in {time.perf_counter() - t0:.0f} s", flush=True)
    models = {"dense": dense, "macs-targeted": by_macs, "latency-targeted": by_latency}
    measured, env = _bench(models, args)
    rows = [_row(n, m, dense, table, measured) for n, m in models.items()]
    return {
        "model": args.model,
        "table": table.describe(),
        "profile_seconds": table.seconds,
        "steps": table.steps,
        "macs_reduction": args.macs_reduction,
        "latency_reduction": args.latency_reduction,
        "rows": rows,
        "env": env,
        "load": _load(),
    }


def _macs_matched(teacher, table: LatencyTable, target: float, args) -> tuple[torch.nn.Module, float]:
    """The one-shot MACs-targeted prune whose predicted latency cut is ``target`` (bisected MACs cut)."""
    base = table.model_ms(teacher)
    lo, hi, best = 0.02, 0.95, None
    for _ in range(args.bisect):
        f = (lo + hi) / 2
        net = vitcompress.prune(
            copy.deepcopy(teacher),
            flops_reduction=f,
            importance="taylor",
            data=args.data,
            calib_images=args.calib_images,
            seed=0,
        ).model
        cut = 1 - table.model_ms(net) / base
        if best is None or abs(cut - target) < abs(best[2] - target):
            best = (net, f, cut)
        lo, hi = (f, hi) if cut < target else (lo, f)
    assert best is not None
    print(f"MACs-targeted: -{best[1]:.1%} MACs predicts a {best[2]:.1%} latency cut (target {target:.0%})", flush=True)
    return best[0], best[1]


def mnist(args, out: Path) -> dict:
    """The mnist10k part (module docstring)."""
    teacher = load(args.teacher).eval()
    tag = f"{args.backend}.b{args.batch}.{args.precision}" + (f".{args.mode}" if args.mode != "eager" else "")
    table_path = Path(args.table) if args.table else out / f"mnist_teacher.{tag}.json"
    table = _table(teacher, table_path, args, token_method=args.token_method)
    train = TrainConfig(
        data=args.data,
        epochs=args.epochs,
        batch_size=128,
        lr=5e-4,
        min_lr=1e-5,
        warmup_epochs=0.5,
        smoothing=0.0,
        progress=False,
        seed=0,
    )
    distill = DistillConfig()
    rows: list[dict] = []
    found: list[str] = []
    env: dict = {}
    for r in args.reductions:
        t0 = time.perf_counter()
        name = f"r{round(r * 100)}"
        cfg = CompressConfig(
            latency_reduction=r,
            backend=args.backend,
            latency_batch=args.batch,
            latency_precision=args.precision,
            latency_table=str(table_path),
            importance="taylor",
            calib_images=args.calib_images,
            token_method=args.token_method,
            token_keeps=tuple(args.token_keeps.split(",")),
            train=copy.deepcopy(train),
            distill=copy.deepcopy(distill),
        )
        res = compress(args.teacher, cfg, out / f"compress_{name}", resume=True, progress=True)
        found.append(res.report["chosen"])
        print(f"[{name}] compress: {res.report['chosen']}", flush=True)
        pruned, f = _macs_matched(teacher, table, r, args)
        base = fit(
            pruned,
            copy.deepcopy(train),
            out / f"macs_{name}",
            teacher=teacher,
            distill=copy.deepcopy(distill),
            force=True,
        ).model
        models = {"dense": teacher, f"compress {name}": res.model, f"macs-targeted {name}": base}
        measured, env = _bench(models, args)
        for n, m in models.items():
            if n == "dense" and rows:
                continue
            row = _row(n, m, teacher, table, measured)
            row.update(target=r, top1=evaluate_data(m, args.data).top1)
            if n.startswith("macs"):
                row["flops_reduction"] = f
            rows.append(row)
        print(format_rows(rows[-2:]), flush=True)
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    return {
        "teacher": args.teacher,
        "table": table.describe(),
        "profile_seconds": table.seconds,
        "steps": table.steps,
        "epochs": args.epochs,
        "chosen": found,
        "rows": rows,
        "env": env,
        "load": _load(),
    }


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine's business while measuring)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def format_rows(rows: list[dict]) -> str:
    """The rows as a Markdown table (top-1 where measured)."""
    acc = any("top1" in r for r in rows)
    head = (
        "| plan | MACs (M) | MACs cut | predicted latency cut | measured ms (median) | measured cut (median) "
        "| fastest pass ms | measured cut (fastest) |"
    )
    head += " val top-1 |" if acc else ""
    lines = [head, "|---" + "|---:" * (7 + acc) + "|"]
    for r in rows:
        line = (
            f"| {r['plan']} | {r['macs'] / 1e6:.1f} | {r['macs_cut']:.1%} | {r['predicted_cut']:.1%} | "
            f"{r['measured_ms']:.2f} | {r['measured_cut']:.1%} | {r['min_ms']:.2f} | {r['measured_cut_min']:.1%} |"
        )
        lines.append(line + (f" {r['top1']:.2%} |" if acc else ""))
    return "\n".join(lines)


def verdict(part: str, rec: dict) -> str:
    """One line per claim of the study, with the figures it rests on."""
    rows = {r["plan"]: r for r in rec["rows"]}
    if part == "deit":
        a, b = rows["macs-targeted"], rows["latency-targeted"]
        more = a["macs_cut"] > b["macs_cut"]
        return (
            f"latency-targeted keeps {'more' if more else 'no more'} MACs ({1 - b['macs_cut']:.1%} vs "
            f"{1 - a['macs_cut']:.1%} of the dense MACs) at a measured latency cut of {b['measured_cut']:.1%} "
            f"vs {a['measured_cut']:.1%} (fastest passes: {b['measured_cut_min']:.1%} vs {a['measured_cut_min']:.1%})"
        )
    lines = []
    for r in sorted({x["target"] for x in rec["rows"] if "target" in x}):
        name = f"r{round(r * 100)}"
        c, m = rows[f"compress {name}"], rows[f"macs-targeted {name}"]
        ok = c["top1"] >= m["top1"]
        lines.append(
            f"{r:.0%} latency cut: compress {c['top1']:.2%} at a measured cut of {c['measured_cut']:.1%} "
            f"(fastest passes {c['measured_cut_min']:.1%}), MACs-targeted {m['top1']:.2%} at "
            f"{m['measured_cut']:.1%} ({m['measured_cut_min']:.1%}): compress is "
            f"{'at least as accurate' if ok else 'less accurate'}"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """DeiT-S: MACs kept against measured latency cut per plan; mnist10k: top-1 against measured cut
    (the cut between fastest passes filled, between medians hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("deit", "mnist") if p in results]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.2 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        rec = results[part]
        if part == "deit":
            for r in rec["rows"]:
                y = (1 - r["macs_cut"]) * 100
                dot = ax.scatter(r["measured_cut_min"] * 100, y, s=40, label=r["plan"])
                ax.scatter(r["measured_cut"] * 100, y, s=40, facecolors="none", edgecolors=dot.get_facecolor())
            ax.set_ylabel("MACs kept (% of dense)")
            ax.set_title(rec["table"].replace(" on ", "\non "), fontsize=8)
        else:
            for kind, marker in (("compress", "o"), ("macs-targeted", "s")):
                rows = sorted((r for r in rec["rows"] if r["plan"].startswith(kind)), key=lambda r: r["target"])
                if rows:
                    x = [r["measured_cut_min"] * 100 for r in rows]
                    (line,) = ax.plot(x, [r["top1"] * 100 for r in rows], marker=marker, label=kind)
                    ax.scatter([r["measured_cut"] * 100 for r in rows], [r["top1"] * 100 for r in rows],
                               marker=marker, facecolors="none", edgecolors=line.get_color())  # fmt: skip
            dense = next(r for r in rec["rows"] if r["plan"] == "dense")
            ax.axhline(dense["top1"] * 100, color="grey", lw=0.8, ls="--", label="teacher")
            ax.set_ylabel("val top-1 (%)")
            ax.set_title(
                f"mnist10k teacher, {rec['epochs']} distillation epochs\non {rec['table'].split(' on ')[-1]}",
                fontsize=8,
            )
        ax.set_xlabel("measured latency cut (%): fastest passes (filled), medians (hollow)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("deit", "mnist"))
    ap.add_argument("--out", default="runs/latency", help="Folder for the tables, models, JSON and plot.")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--mode", default="eager", help="torch backends: eager, compile or graph (CUDA graphs).")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable cores).")
    ap.add_argument("--table", help="Reuse this latency table instead of profiling.")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--model", default="deit_small_patch16_224", help="deit: the model (timm name or artifact).")
    ap.add_argument("--macs-reduction", type=float, default=0.462, help="deit: the MACs-targeted plan's cut.")
    ap.add_argument("--latency-reduction", type=float, default=0.424, help="deit: the latency-targeted plan's cut.")
    ap.add_argument("--teacher", default="runs/teacher_mnist10k", help="mnist: the teacher artifact (make teacher).")
    ap.add_argument("--data", default="mnist10k")
    ap.add_argument("--reductions", type=lambda s: [float(x) for x in s.split(",")], default=[0.4, 0.6])
    ap.add_argument("--epochs", type=int, default=4, help="mnist: distillation epochs (both pipelines).")
    ap.add_argument("--token-method", default="topk-vpa", help="mnist: the token reducer compress tries.")
    ap.add_argument("--token-keeps", default="0.9,0.8,0.7", help="mnist: the keep rates compress tries.")
    ap.add_argument("--bisect", type=int, default=7, help="mnist: bisection steps of the MACs-targeted cut.")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rec = deit(args, out) if args.part == "deit" else mnist(args, out)
    rec["seconds"] = time.perf_counter() - t0
    path = out / RESULTS
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[args.part] = rec
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print(format_rows(rec["rows"]))
    print(verdict(args.part, rec))
    print(f"load average {rec['load']}; {rec['seconds'] / 60:.1f} min; wrote {path}")
    plot(results, out / "latency_study.png")
    print(f"wrote {out / 'latency_study.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
