"""Side-by-side study of the pruning criteria on the ``mnist10k`` reference teacher.

For every MACs reduction (default 30%, 46.2%, 60%, 75%), every criterion (``random``, ``l1``
(magnitude), ``taylor``: one-shot; ``ihp``, ``gohsp``, ``amap``: methods) and two granularities
(``heads``: whole heads + MLP neurons; ``intra``: heads + q/k dims + v dims + MLP neurons), the
teacher is pruned, its top-1 on the ``mnist10k`` validation split is measured right after pruning
(``vitcompress.evaluate.evaluate``), then after the same short distillation budget for every run:
the library's training loop (``vitcompress.training.fit``) for about ``--distill-steps`` AdamW
steps (no weight decay, cosine from ``--lr`` to 0 without warmup, no gradient clipping, no
augmentation or label smoothing) on the loss ``0.5 * T^2 * KL(teacher || student) + 0.5 * CE`` at
temperature ``--temperature`` (``DistillConfig(kind="soft", ce=0.5, kd=0.5)``), batch
``--batch-size``.

Writes (atomically) into ``--out``: ``criteria_study.json`` (every run, with the exact command),
``criteria_study.csv``, ``criteria_study.md`` (tables) and ``criteria_study.png`` (top-1 against
MACs reduction, after pruning and after distillation).

Run::

    python -m vitcompress.benchmarks.studies.criteria_study --teacher TEACHER_ARTIFACT --out docs/study
    python -m vitcompress.benchmarks.studies.criteria_study --smoke --out /tmp/study    # wiring check only

``--smoke`` replaces the teacher by a tiny random ViT and shrinks every budget: it checks that the
script runs end to end; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import vitcompress
from vitcompress.artifact import is_artifact
from vitcompress.counting import count
from vitcompress.data import DataConfig, make_dataset
from vitcompress.distill import DistillConfig
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate
from vitcompress.io import atomic_file
from vitcompress.training import TrainConfig, fit

ONESHOT = ("random", "l1", "taylor")
METHODS = ("ihp", "gohsp", "amap")
GRANULARITY = {"heads": ("heads", "mlp"), "intra": ("heads", "qk", "v", "mlp")}


def _val_loader(model, eval_images: int | None, seed: int) -> DataLoader:
    """The ``mnist10k`` validation split (or a fixed random subset of ``eval_images``) in the model's geometry."""
    val = make_dataset("mnist10k", DataConfig.from_model(model), "val")
    if eval_images and eval_images < len(val):
        idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed))[:eval_images]
        val = Subset(val, sorted(idx.tolist()))
    return DataLoader(val, batch_size=256, shuffle=False)


def top1(model, loader) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``loader``."""
    return evaluate(model, loader).top1


def distill(student, teacher, args, alpha: float = 0.5):
    """About ``args.distill_steps`` steps of the library's training loop on
    alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE (in place; see the module docstring)."""
    steps = args.distill_steps
    if steps <= 0:
        return student
    per_epoch = len(make_dataset("mnist10k", DataConfig.from_model(student), "train")) // args.batch_size
    epochs = max(1, math.ceil(steps / per_epoch))
    cfg = TrainConfig(
        data="mnist10k",
        epochs=epochs,
        max_steps_per_epoch=math.ceil(steps / epochs),
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=0.0,
        weight_decay=0.0,
        warmup_epochs=0.0,
        clip_grad=None,
        shift=0,
        smoothing=0.0,
        seed=args.seed,
        progress=False,
        eval_every=0,  # the study evaluates on its own validation subset
    )
    for p in student.parameters():
        p.requires_grad_(True)
    loss = DistillConfig(kind="soft", ce=1 - alpha, kd=alpha, temperature=args.temperature)
    return fit(student, cfg, teacher=teacher, distill=loss).model


def _method_options(pairs: list[str]) -> dict[str, dict]:
    """``['ihp.steps=200', 'gohsp.rounds=3']`` -> ``{'ihp': {'steps': '200'}, 'gohsp': {...}}``."""
    out: dict[str, dict] = {}
    for p in pairs:
        name, _, kv = p.partition(".")
        key, eq, val = kv.partition("=")
        if name not in METHODS or not eq:
            raise SystemExit(f"error: --method-opt {p!r} is not METHOD.KEY=VALUE with METHOD in {', '.join(METHODS)}")
        out.setdefault(name, {})[key] = val
    return out


def run_one(teacher, criterion: str, granularity: str, reduction: float, args, val_loader, options) -> dict:
    """Prune, evaluate, distil, evaluate: one row of the study."""
    row = {"criterion": criterion, "granularity": granularity, "target": reduction}
    kw = dict(
        flops_reduction=reduction,
        granularity=GRANULARITY[granularity],
        round_to=args.round_to,
        data="mnist10k",
        calib_images=args.calib_images,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if criterion in ONESHOT:
        kw["importance"] = criterion
    else:
        kw.update(method=criterion, method_options=options.get(criterion, {}))
    t0 = time.perf_counter()
    try:
        res = vitcompress.prune(copy.deepcopy(teacher), **kw)
    except VitCompressError as e:
        row["error"] = str(e)
        return row
    row["prune_seconds"] = round(time.perf_counter() - t0, 2)
    c = count(res.model)
    row.update(achieved=round(res.achieved, 4), macs=c.macs, params=c.params, top1_pruned=top1(res.model, val_loader))
    t0 = time.perf_counter()
    student = distill(res.model, teacher, args)
    row["distill_seconds"] = round(time.perf_counter() - t0, 2)
    row["top1_distilled"] = top1(student, val_loader)
    return row


def _table(rows: list[dict], key: str, reductions, criteria, granularities) -> str:
    head = "| criterion | granularity | " + " | ".join(f"-{r:.1%} MACs" for r in reductions) + " |"
    lines = [head, "| --- | --- |" + " --- |" * len(reductions)]
    by = {(r["criterion"], r["granularity"], r["target"]): r for r in rows}
    for c in criteria:
        for g in granularities:
            cells = []
            for red in reductions:
                r = by.get((c, g, red), {})
                cells.append("n/a" if key not in r else f"{100 * r[key]:.2f}")
            lines.append(f"| {c} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path, teacher_top1: float, criteria) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in zip(axes, ("top1_pruned", "top1_distilled"), ("right after pruning", "after distillation")):
        for i, c in enumerate(criteria):
            for g, style in (("heads", "--"), ("intra", "-")):
                pts = sorted(
                    (r["achieved"], 100 * r[key])
                    for r in rows
                    if r["criterion"] == c and r["granularity"] == g and key in r
                )
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=f"{c} ({g})")
        ax.axhline(100 * teacher_top1, color="k", lw=0.8, ls=":", label="teacher")
        ax.set_title(title)
        ax.set_xlabel("MACs reduction")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mnist10k val top-1 (%)")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(out, record: dict, args, reductions, criteria, granularities, done: bool = True) -> None:
    """Write the json/csv/md/png results (atomically; called after every run, so a stopped study
    keeps what it measured)."""
    rows = record["runs"]
    record["complete"] = done
    with atomic_file(out / "criteria_study.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    fields = [
        "criterion",
        "granularity",
        "target",
        "achieved",
        "macs",
        "params",
        "top1_pruned",
        "top1_distilled",
        "prune_seconds",
        "distill_seconds",
        "error",
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    with atomic_file(out / "criteria_study.csv") as tmp:
        tmp.write_text(buf.getvalue())
    md = [f"Teacher top-1: {100 * record['teacher_top1']:.2f}% (mnist10k val). Command: `{record['command']}`", ""]
    if not done:
        md += [f"(incomplete: {len(rows)} runs so far)", ""]
    md += [
        "Top-1 (%) right after pruning:",
        "",
        _table(rows, "top1_pruned", reductions, criteria, granularities),
        "",
        f"Top-1 (%) after {args.distill_steps} distillation steps:",
        "",
        _table(rows, "top1_distilled", reductions, criteria, granularities),
        "",
    ]
    errors = [r for r in rows if "error" in r]
    if errors:
        md += (
            ["Runs that could not be made:", ""]
            + [f"- {r['criterion']} {r['granularity']} -{r['target']:.1%}: {r['error']}" for r in errors]
            + [""]
        )
    with atomic_file(out / "criteria_study.md") as tmp:
        tmp.write_text("\n".join(md))
    _plot(rows, out / "criteria_study.png", record["teacher_top1"], criteria)


def _sha256(artifact: str) -> str:
    return hashlib.sha256(Path(artifact, "model.safetensors").read_bytes()).hexdigest()


def _smoke_teacher():
    torch.manual_seed(0)
    return vitcompress.create_source_model(
        "deit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", help="artifact folder of the mnist10k reference teacher")
    ap.add_argument("--out", required=True, help="folder for the json/csv/md/png results")
    ap.add_argument("--reductions", default="0.3,0.462,0.6,0.75")
    ap.add_argument("--criteria", default="random,l1,taylor,ihp,gohsp,amap")
    ap.add_argument("--granularities", default="heads,intra")
    ap.add_argument("--round-to", type=int, default=4)
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-images", type=int, default=0, help="validation subset size (0: all 2000)")
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--method-opt",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="hyperparameter of ihp/gohsp/amap, e.g. ihp.steps=200 (repeatable)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--smoke", action="store_true", help="tiny random teacher, tiny budgets: wiring check only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = _method_options(args.method_opt)
    reductions = [float(r) for r in args.reductions.split(",") if r.strip()]
    criteria = [c.strip() for c in args.criteria.split(",") if c.strip()]
    granularities = [g.strip() for g in args.granularities.split(",") if g.strip()]
    for c in criteria:
        if c not in ONESHOT + METHODS:
            raise SystemExit(f"error: unknown criterion {c!r}; choose from {', '.join(ONESHOT + METHODS)}")
    for g in granularities:
        if g not in GRANULARITY:
            raise SystemExit(f"error: unknown granularity {g!r}; choose from {', '.join(GRANULARITY)}")
    if args.smoke:
        teacher = _smoke_teacher()
        args.calib_images, args.distill_steps, args.batch_size = 16, min(args.distill_steps, 2), 16
        args.eval_images = args.eval_images or 64
        for m, o in (
            ("ihp", {"steps": "2"}),
            ("gohsp", {"rounds": "1", "steps_per_round": "2"}),
            ("amap", {"steps": "2"}),
        ):
            options.setdefault(m, {}).update({k: v for k, v in o.items() if k not in options.get(m, {})})
    else:
        if not args.teacher or not is_artifact(args.teacher):
            raise SystemExit(
                f"error: --teacher {args.teacher!r} is not an artifact folder; train the mnist10k "
                "reference teacher first (vitcompress train ... -o DIR) or pass --smoke"
            )
        teacher = vitcompress.load(args.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    val_loader = _val_loader(teacher, args.eval_images, args.seed)
    teacher_top1 = top1(teacher, val_loader)
    print(f"teacher top-1 {100 * teacher_top1:.2f}%")
    out = Path(args.out)
    record = {
        "command": "python -m vitcompress.benchmarks.studies.criteria_study "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher": args.teacher if not args.smoke else "smoke (tiny random ViT)",
        "teacher_sha256": _sha256(args.teacher) if not args.smoke else None,
        "teacher_top1": teacher_top1,
        "settings": {k: v for k, v in vars(args).items()},
        "method_options": options,
        "runs": [],
    }
    todo = [(r, g, c) for r in reductions for g in granularities for c in criteria]
    for red, g, c in tqdm(todo, desc="criteria study"):
        row = run_one(teacher, c, g, red, args, val_loader, options)
        record["runs"].append(row)
        msg = row.get("error") or (
            f"achieved {row['achieved']:.1%}  pruned {100 * row['top1_pruned']:.2f}%  "
            f"distilled {100 * row['top1_distilled']:.2f}%"
        )
        tqdm.write(f"{c:>6} {g:>5} -{red:.1%}: {msg}")
        write_results(out, record, args, reductions, criteria, granularities, done=len(record["runs"]) == len(todo))
    print(f"wrote {out}/criteria_study.{{json,csv,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
