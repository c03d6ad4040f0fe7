"""Token study on the mnist10k teacher: accuracy against MACs per reducer, the calibration search, and GAS.

1. Inference only (no training): every reducer at a grid of amounts (pruning rate from block 1,
   ``rate=R``; merges per block for ``tome``), validation top-1 against the share of MACs removed.
   ``topk-vpa`` with and without VPA (``topk``) is the ablation.
2. The calibration search for ``topk-vpa``: the largest rate within ``--tolerance`` top-1.
3. GAS: fine-tune ``topk-vpa`` (distilled from the unreduced teacher) with the rate controller
   moving from ``--gas-start`` toward ``--gas-target`` MACs reduction; the rate trajectory and
   top-1 at the rate it settles on, next to the same rate without fine-tuning and the same rate
   fine-tuned from the first step with the same budget.

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.tokens_study --teacher runs/teacher_mnist10k --out runs/tokens_study

Writes ``tokens_study.md`` / ``.json`` / ``.png`` (top-1 vs MACs removed per reducer, and the GAS
trajectory) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from vitcompress.artifact import is_artifact, load
from vitcompress.callbacks import GASConfig, GASController
from vitcompress.distill import DistillConfig
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate_data
from vitcompress.token_search import held_out, predict, search_amount
from vitcompress.tokens.amount import macs_reduction
from vitcompress.tokens.apply import apply_tokens, remove_tokens, schedule_of
from vitcompress.tokens.counting import patch_tokens
from vitcompress.tokens.schedule import parse_schedule
from vitcompress.training import TrainConfig, fit

REDUCERS = ["topk", "topk-vpa", "evit", "etps", "tome"]
RATES = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35]


def curves(teacher, data: str, images: int, rates, progress: bool) -> list[dict]:
    """Top-1 and MACs removed for every reducer over the grid (held-out ``val`` images)."""
    net = remove_tokens(teacher).eval()
    x, y = held_out(net, data, images)
    n = patch_tokens(net)
    merges = sorted({int(round(r * n / 2)) for r in rates})  # comparable range of token counts
    jobs = [(m, f"rate={r}@1") for m in REDUCERS if m != "tome" for r in rates]
    jobs += [("tome", f"merge={k}@1") for k in merges]
    rows = []
    for method, spec in tqdm(jobs, desc="curves", disable=not progress):
        s = parse_schedule(spec, method)
        pred = predict(apply_tokens(net, s), x, 256)
        rows.append(
            {
                "method": method,
                "schedule": spec,
                "macs_reduction": macs_reduction(net, s),
                "top1": float((pred == y).float().mean()),
            }
        )
    remove_tokens(net)
    return rows


def gas_run(teacher_path: str, out: Path, args) -> dict:
    """Fine-tune topk-vpa with the GAS controller; returns the trajectory and the final numbers."""
    student = apply_tokens(load(teacher_path), f"rate={args.gas_start}@1", method="topk-vpa")
    teacher = remove_tokens(load(teacher_path))
    gas = GASController(student, GASConfig(args.gas_target, interval=args.gas_interval))
    cfg = TrainConfig(
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=1e-5,
        warmup_epochs=0.5,
        smoothing=0.0,
        progress=False,
        seed=0,
    )
    t0 = time.perf_counter()
    res = fit(
        student,
        cfg,
        out / "gas",
        teacher=teacher,
        distill=DistillConfig(kind="soft"),
        callbacks=[gas],
        force=True,
        record={"gas": gas.log},
    )
    seconds = time.perf_counter() - t0
    settled = schedule_of(res.model)
    untrained = apply_tokens(load(teacher_path), settled)
    # the same budget at the settled rate from the first step (no controller)
    fixed = fit(
        apply_tokens(load(teacher_path), settled),
        cfg,
        out / "fixed",
        teacher=teacher,
        distill=DistillConfig(kind="soft"),
        force=True,
    )
    return {
        "trajectory": gas.trajectory,
        "ceiling": gas.ceiling,
        "target": args.gas_target,
        "rate": gas.rate,
        "macs_reduction": macs_reduction(res.model, settled),
        "top1_finetuned": res.val["top1"],
        "top1_without_finetuning": evaluate_data(untrained, args.data).top1,
        "top1_fixed_rate": fixed.val["top1"],
        "epochs": args.epochs,
        "seconds": seconds,
    }


def plot(rec: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for m in REDUCERS:
        pts = sorted((r["macs_reduction"], r["top1"]) for r in rec["curves"] if r["method"] == m)
        a.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o", ms=3, label=m)
    a.axhline(rec["teacher_top1"] * 100, color="grey", lw=0.8, ls="--", label="teacher")
    a.set_xlabel("MACs removed (%)")
    a.set_ylabel("val top-1 (%), no training")
    a.set_title(f"token reducers on {Path(rec['teacher']).name}", fontsize=9)
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    if rec.get("gas"):
        t = rec["gas"]["trajectory"]
        b.plot([p["step"] for p in t], [p["rate"] for p in t], label="rate")
        b.plot([p["step"] for p in t], [p["macs_reduction"] for p in t], label="MACs removed")
        b.axhline(rec["gas"]["target"], color="grey", lw=0.8, ls="--", label="target")
        b2 = b.twinx()
        b2.plot(
            [p["step"] for p in t if p["loss"] is not None],
            [p["loss"] for p in t if p["loss"] is not None],
            color="tab:red",
            lw=0.8,
            alpha=0.6,
        )
        b2.set_ylabel("window loss", color="tab:red")
        b.set_xlabel("optimizer step")
        b.set_title("GAS: rate trajectory while fine-tuning", fontsize=9)
        b.legend(fontsize=7, loc="center right")
        b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(rec: dict) -> str:
    lines = [
        f"Teacher: {rec['teacher']} (val top-1 {rec['teacher_top1']:.2%} on the whole val split; the curves and "
        f"the search use its first {rec['images']} images). "
        f"Command: `{rec['command']}`",
        "",
        "Top-1 without training, by MACs removed:",
        "",
        "| reducer | schedule | MACs removed | val top-1 |",
        "|---|---|---:|---:|",
    ]
    for r in rec["curves"]:
        lines.append(f"| {r['method']} | {r['schedule']} | {r['macs_reduction']:.1%} | {r['top1']:.2%} |")
    s = rec.get("search")
    if s and "error" in s:
        lines += ["", f"Calibration search (topk-vpa, tolerance {s['tolerance']:.2%}): {s['error']}."]
    elif s:
        lines += [
            "",
            f"Calibration search (topk-vpa, tolerance {s['tolerance']:.2%}, {s['images']} images): rate "
            f"{s['amount']:g}, {s['macs_reduction']:.1%} of MACs removed, top-1 {s['top1']:.2%} "
            f"(unreduced {s['baseline_top1']:.2%}).",
        ]
    g = rec.get("gas")
    if g:
        lines += [
            "",
            f"GAS (topk-vpa, target {g['target']:.0%} MACs removed, {g['epochs']} epoch(s), distilled): settled "
            f"at rate {g['rate']:.3f} ({g['macs_reduction']:.1%} removed; ceiling rate {g['ceiling']:.3f}); "
            f"val top-1 {g['top1_finetuned']:.2%} after fine-tuning, {g['top1_without_finetuning']:.2%} at "
            f"the same rate without it, {g['top1_fixed_rate']:.2%} when fine-tuned at that rate from the "
            f"first step with the same budget ({g['seconds'] / 60:.1f} min).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/teacher_mnist10k")
    ap.add_argument("--out", default="runs/tokens_study")
    ap.add_argument("--data", default="mnist10k")
    ap.add_argument("--images", type=int, default=2000, help="Held-out images for the curves and the search.")
    ap.add_argument("--rates", default=",".join(str(r) for r in RATES))
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--gas-target", type=float, default=0.5)
    ap.add_argument("--gas-start", type=float, default=0.05)
    ap.add_argument("--gas-interval", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--skip-gas", action="store_true")
    args = ap.parse_args(argv)

    if not is_artifact(args.teacher):
        raise SystemExit(f"error: {args.teacher!r} is not an artifact folder; build the teacher with `make teacher`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load(args.teacher)
    t1 = evaluate_data(teacher, args.data).top1
    rec = {
        "teacher": args.teacher,
        "teacher_top1": t1,
        "images": args.images,
        "command": " ".join(
            ["python -m vitcompress.benchmarks.studies.tokens_study", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    rec["curves"] = curves(teacher, args.data, args.images, [float(r) for r in args.rates.split(",")], True)
    try:
        s = search_amount(
            teacher,
            parse_schedule("rate=0.1@1", "topk-vpa"),
            data=args.data,
            images=args.images,
            tolerance=args.tolerance,
        )
        rec["search"] = s.to_dict()
    except VitCompressError as e:  # nothing that removes MACs passes the tolerance: the study records why
        rec["search"] = {"tolerance": args.tolerance, "images": args.images, "error": str(e)}
    if not args.skip_gas:
        rec["gas"] = gas_run(args.teacher, out, args)
    (out / "tokens_study.json").write_text(json.dumps(rec, indent=1) + "\n")
    (out / "tokens_study.md").write_text(to_markdown(rec))
    plot(rec, out / "tokens_study.png")
    print(to_markdown(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
