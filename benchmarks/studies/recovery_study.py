"""Recovery study: how much top-1 pruning costs on mnist10k, and how much fine-tuning and distillation win back.

For each MACs reduction (default 50% and 70%) the reference teacher is pruned with the ``taylor``
scorer (heads, q/k, v and MLP widths, one shot), then

- evaluated right after pruning,
- fine-tuned on the labels for ``--epochs`` epochs (plain fine-tuning),
- separately, distilled from the teacher for ``--epochs`` epochs (soft KD + labels),
- and, separately, compressed by the width-then-depth pipeline (width prune -> distil -> depth
  prune -> distil, ``--epochs``/2 epochs per distillation stage, so the same training budget).

Prints a Markdown table (validation top-1 on the fixed 2,000-image val split) and writes it with a
JSON record and a plot under ``--out``. Run with one thread per process on a shared CPU::

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.recovery_study --teacher runs/teacher_mnist10k
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import vitcompress
from vitcompress.artifact import load
from vitcompress.counting import count
from vitcompress.distill import DistillConfig
from vitcompress.evaluate import evaluate_data
from vitcompress.recipe import PipelineConfig, run_pipeline
from vitcompress.training import TrainConfig, fit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/teacher_mnist10k", help="Teacher artifact (make teacher).")
    ap.add_argument("--out", default="runs/recovery", help="Folder for the stage artifacts and the table.")
    ap.add_argument("--reductions", default="0.5,0.7", help="MACs reductions to study.")
    ap.add_argument("--epochs", type=int, default=4, help="Training epochs after pruning.")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--calib-images", type=int, default=512)
    ap.add_argument("--data", default="mnist10k")
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load(args.teacher)
    t_top1 = evaluate_data(teacher, args.data).top1
    t_macs = count(teacher).macs
    print(f"teacher {args.teacher}: top-1 {t_top1:.2%}, {t_macs / 1e6:.2f} M MACs", flush=True)

    def tcfg(epochs):
        return TrainConfig(
            data=args.data,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            min_lr=1e-5,
            warmup_epochs=0.5,
            smoothing=0.0,
            progress=False,
            seed=0,
        )

    rows = []
    for r in [float(v) for v in args.reductions.split(",")]:
        t0 = time.perf_counter()
        tag = f"r{int(round(r * 100))}"
        res = vitcompress.prune(
            args.teacher,
            flops_reduction=r,
            importance="taylor",
            data=args.data,
            calib_images=args.calib_images,
            output=out / f"{tag}_pruned",
            force=True,
        )
        pruned_top1 = evaluate_data(res.model, args.data).top1
        print(f"[{tag}] pruned: top-1 {pruned_top1:.2%}", flush=True)
        ft = fit(load(out / f"{tag}_pruned"), tcfg(args.epochs), out / f"{tag}_finetuned", force=True)
        print(f"[{tag}] fine-tuned: top-1 {ft.val['top1']:.2%}", flush=True)
        kd = fit(
            load(out / f"{tag}_pruned"),
            tcfg(args.epochs),
            out / f"{tag}_distilled",
            force=True,
            teacher=load(args.teacher),
            distill=DistillConfig(kind="soft", ce=1.0, kd=1.0, temperature=2.0),
        )
        print(f"[{tag}] distilled: top-1 {kd.val['top1']:.2%}", flush=True)
        row = {
            "reduction": r,
            "macs": count(res.model).macs,
            "achieved": 1 - count(res.model).macs / t_macs,
            "pruned": pruned_top1,
            "finetuned": ft.val["top1"],
            "distilled": kd.val["top1"],
        }
        if not args.skip_pipeline:
            pcfg = PipelineConfig(
                flops_reduction=r,
                calib_images=args.calib_images,
                train=tcfg(max(1, math.ceil(args.epochs / 2))),
                distill=DistillConfig(kind="soft", ce=1.0, kd=1.0, temperature=2.0, hidden=1.0),
            )
            s = run_pipeline(args.teacher, pcfg, out / f"{tag}_pipeline", force=True, progress=False)
            by = {x["stage"]: x for x in s["rows"]}
            row.update(
                pipeline_achieved=s["achieved"],
                pipeline_width_pruned=by["width_pruned"]["top1"],
                pipeline_final=by["depth_distilled"]["top1"],
                pipeline_depth=by["depth_distilled"]["depth"],
            )
            print(
                f"[{tag}] pipeline: top-1 {row['pipeline_final']:.2%} at {s['achieved']:.1%} MACs removed", flush=True
            )
        row["minutes"] = (time.perf_counter() - t0) / 60
        rows.append(row)

    table = format_table(t_top1, t_macs, rows, args)
    print(table)
    (out / "recovery.md").write_text(table + "\n")
    (out / "recovery.json").write_text(
        json.dumps({"teacher_top1": t_top1, "teacher_macs": t_macs, "rows": rows, "args": vars(args)}, indent=1) + "\n"
    )
    plot(t_top1, rows, out / "recovery.png")
    print(f"wrote {out / 'recovery.md'}")
    return 0


def format_table(t_top1, t_macs, rows, args) -> str:
    lines = [
        f"Teacher: {t_top1:.2%} val top-1, {t_macs / 1e6:.2f} M MACs. Training after pruning: "
        f"{args.epochs} epochs (pipeline: {max(1, math.ceil(args.epochs / 2))} per distillation stage).",
        "",
        "| MACs removed (target / achieved) | after pruning | fine-tuned | distilled | width-then-depth pipeline (achieved) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pipe = (
            f"{r['pipeline_final']:.2%} ({r['pipeline_achieved']:.1%}, depth {r['pipeline_depth']})"
            if "pipeline_final" in r
            else "-"
        )
        lines.append(
            f"| {r['reduction']:.0%} / {r['achieved']:.1%} | {r['pruned']:.2%} | {r['finetuned']:.2%} | "
            f"{r['distilled']:.2%} | {pipe} |"
        )
    return "\n".join(lines)


def plot(t_top1, rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, at in (
        ("pruned", "after pruning", "achieved"),
        ("finetuned", "fine-tuned", "achieved"),
        ("distilled", "distilled", "achieved"),
        ("pipeline_final", "width-then-depth", "pipeline_achieved"),
    ):
        if all(key in r for r in rows):  # each at the MACs reduction it achieved
            ax.plot([r[at] * 100 for r in rows], [r[key] * 100 for r in rows], "-o", label=label)
    ax.axhline(t_top1 * 100, color="k", ls="--", lw=1, label="teacher")
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("Recovery after taylor pruning, mnist10k")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
