"""Scorer study: which importance score to prune with, measured on the ``mnist10k`` reference teacher.

For every MACs reduction (default 30%, 46.2%, 60%), every scorer (default: every registered
formula, aliases left out) and every calibration seed (default 0, 1, 2), the teacher is pruned one
shot with the library's ``prune`` (default granularity heads,qk,v,mlp, default round-to,
``--calib-images`` calibration images drawn with the seed), its top-1 on the fixed 2,000-image
``mnist10k`` validation split is measured (``evaluate_data``), and then again after the same short
plain fine-tune for every run (the library's ``fit`` on the labels, no teacher: ``--epochs`` epochs,
batch ``--batch-size``, peak learning rate ``--lr``, every other setting the ``TrainConfig``
default, i.e. what ``vitcompress finetune ART --epochs 2 --lr 5e-4 --batch-size 128`` does; its
data-order seed is the calibration seed). The pruning methods (``ihp``, ``gohsp``, ``amap`` at their
default options) run the same way at ``--method-reductions`` for reference.

Writes (atomically, after every run, so a stopped study keeps what it measured; ``--resume``
skips the runs an earlier record already holds) into ``--out``: ``scorer_study.json`` (every run
and the exact command), ``scorer_study.md`` (mean and min-max over the seeds, and the pick of the
default by the rule below) and ``scorer_study.png``.

The default rule: the scorer with the highest mean fine-tuned top-1 at ``--pick-at`` (46.2%);
scorers within ``--noise`` points of it tie, and ties go to the higher mean one-shot top-1 (again
within noise), then to the cheaper scorer (data-free before one gradient pass), then to the higher
mean one-shot top-1.

Run (one thread per process on a shared CPU)::

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.scorer_study --teacher runs/teacher_mnist10k --out docs/study
    python -m vitcompress.benchmarks.studies.scorer_study --smoke --out /tmp/study    # wiring check only

``--smoke`` replaces the teacher by a tiny random ViT and shrinks every budget: it checks that the
script runs end to end; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import vitcompress
from vitcompress.artifact import is_artifact
from vitcompress.counting import count
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate_data
from vitcompress.families import spec_from_model
from vitcompress.io import atomic_file
from vitcompress.scorers import ALIASES, SCORERS, needs_data
from vitcompress.training import TrainConfig, fit

METHODS = ("ihp", "gohsp", "amap")


def default_scorers() -> list[str]:
    """Every registered scorer formula (aliases such as ``taylor`` and ``magnitude`` left out)."""
    return [n for n in SCORERS.list() if n not in ALIASES]


def kept_shares(model, teacher) -> dict:
    """Share of the teacher's heads, q/k dims, v dims and MLP neurons the pruned model keeps."""
    a, b = spec_from_model(teacher), spec_from_model(model)
    tot = {
        "heads": sum(x.num_heads for x in a.blocks),
        "qk": sum(x.num_heads * x.qk_dim for x in a.blocks),
        "v": sum(x.num_heads * x.v_dim for x in a.blocks),
        "mlp": sum(x.mlp_hidden for x in a.blocks),
    }
    kept = {
        "heads": sum(x.num_heads for x in b.blocks),
        "qk": sum(x.num_heads * x.qk_dim for x in b.blocks),
        "v": sum(x.num_heads * x.v_dim for x in b.blocks),
        "mlp": sum(x.mlp_hidden for x in b.blocks),
    }
    return {k: round(kept[k] / tot[k], 4) for k in tot}


def run_one(teacher, criterion: str, reduction: float, seed: int, args) -> dict:
    """Prune, evaluate, fine-tune, evaluate: one run of the study."""
    row = {"criterion": criterion, "target": reduction, "seed": seed}
    kw = dict(flops_reduction=reduction, data=args.data, calib_images=args.calib_images, seed=seed)
    if criterion in METHODS:
        kw["method"] = criterion
    else:
        kw["importance"] = criterion
    t0 = time.perf_counter()
    try:
        res = vitcompress.prune(copy.deepcopy(teacher), **kw)
    except VitCompressError as e:
        row["error"] = str(e)
        return row
    row["prune_seconds"] = round(time.perf_counter() - t0, 2)
    row["score_seconds"] = round(res.seconds.get("score", res.seconds.get("method", 0.0)), 3)
    step = res.meta.history[-1]
    c = count(res.model)
    row.update(
        achieved=round(step["achieved"]["macs_reduction"], 4),
        macs=c.macs,
        params=c.params,
        labels_used=step.get("labels_used"),
        kept=kept_shares(res.model, teacher),
        top1_pruned=evaluate_data(res.model, args.data, limit=args.eval_images or None).top1,
    )
    cfg = TrainConfig(
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        progress=False,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    t0 = time.perf_counter()
    ft = fit(res.model, cfg)
    row["finetune_seconds"] = round(time.perf_counter() - t0, 2)
    row["top1_finetuned"] = (
        ft.val["top1"] if not args.eval_images else evaluate_data(ft.model, args.data, limit=args.eval_images).top1
    )
    return row


# ------------------------------------------------------------------------------------ summaries
def _cost(criterion: str) -> int:
    """Passes over the calibration images: 0 for data-free scorers, 1 for gradient scorers, 2 for methods."""
    if criterion in METHODS or criterion not in SCORERS:
        return 2
    return int(needs_data(criterion))


def summarise(rows: list[dict]) -> dict:
    """``(criterion, target) -> {n, achieved, pruned/finetuned: (mean, min, max), score_seconds, cost, ...}``."""
    out: dict = {}
    for r in rows:
        if "top1_finetuned" in r:
            out.setdefault((r["criterion"], r["target"]), []).append(r)
    summ = {}
    for key, rs in out.items():

        def stat(k, rs=rs):
            v = [100 * r[k] for r in rs]
            return sum(v) / len(v), min(v), max(v)

        summ[key] = {
            "n": len(rs),
            "achieved": sum(r["achieved"] for r in rs) / len(rs),
            "pruned": stat("top1_pruned"),
            "finetuned": stat("top1_finetuned"),
            "score_seconds": sum(r["score_seconds"] for r in rs) / len(rs),
            "cost": _cost(key[0]),
            "labels": sorted({r.get("labels_used") or "-" for r in rs}),
            "kept": {k: sum(r["kept"][k] for r in rs) / len(rs) for k in rs[0]["kept"]},
        }
    return summ


def pick_default(summ: dict, target: float, candidates, noise: float) -> tuple[str | None, list[str]]:
    """The default by the study's rule; returns (name, the reasons as lines)."""
    have = [c for c in candidates if (c, target) in summ]
    if not have:
        return None, []
    best_ft = max(summ[(c, target)]["finetuned"][0] for c in have)
    tied = [c for c in have if summ[(c, target)]["finetuned"][0] >= best_ft - noise]
    why = [
        f"best mean fine-tuned top-1 at -{target:.1%}: {best_ft:.2f}%; within {noise} points: {', '.join(tied)}",
    ]
    if len(tied) > 1:
        best_os = max(summ[(c, target)]["pruned"][0] for c in tied)
        tied = [c for c in tied if summ[(c, target)]["pruned"][0] >= best_os - noise]
        why.append(f"best mean one-shot top-1 among them: {best_os:.2f}%; within {noise} points: {', '.join(tied)}")
    if len(tied) > 1:
        cheapest = min(summ[(c, target)]["cost"] for c in tied)
        tied = [c for c in tied if summ[(c, target)]["cost"] == cheapest]
        what = "no calibration data" if cheapest == 0 else "one gradient pass over the calibration images"
        why.append(f"cheapest of them to score ({what}): {', '.join(tied)}")
    if len(tied) > 1:
        tied.sort(key=lambda c: -summ[(c, target)]["pruned"][0])
        why.append(f"same cost: the highest mean one-shot top-1 of them, {tied[0]}")
    return tied[0], why


def _cell(s: tuple[float, float, float]) -> str:
    return f"{s[0]:.2f} ({s[1]:.2f}-{s[2]:.2f})"


def markdown(record: dict, summ: dict, reductions, criteria, done: bool) -> str:
    """The study's tables (mean and min-max over seeds) and the default pick."""
    s = record["settings"]
    md = [
        f"Teacher: `{record['teacher']}`, {100 * record['teacher_top1']:.2f}% mnist10k val top-1 "
        f"({record['teacher_macs'] / 1e6:.2f} M MACs).",
        "",
        f"Command: `{record['command']}`" + "".join(f"; resumed with `{c}`" for c in record.get("resumed_with", [])),
        "",
        f"Each cell: mean top-1 (%) over calibration seeds {s['seeds']} (min-max); {s['calib_images']} calibration "
        f"images; fine-tune: {s['epochs']} epochs, lr {s['lr']}, batch {s['batch_size']}, plain (labels, no teacher).",
        "",
    ]
    if not done:
        md += [f"(incomplete: {len(record['runs'])} runs so far)", ""]
    for red in reductions:
        rows = [c for c in criteria if (c, red) in summ]
        if not rows:
            continue
        md += [
            f"### -{red:.1%} MACs",
            "",
            "| scorer | MACs cut | one-shot top-1 | after fine-tune | kept heads / qk / v / mlp | labels | score s |",
            "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for c in sorted(rows, key=lambda c: -summ[(c, red)]["finetuned"][0]):
            x = summ[(c, red)]
            k = x["kept"]
            kept = f"{k['heads']:.2f} / {k['qk']:.2f} / {k['v']:.2f} / {k['mlp']:.2f}"
            md.append(
                f"| {c} | {100 * x['achieved']:.1f}% | {_cell(x['pruned'])} | {_cell(x['finetuned'])} | {kept} | "
                f"{'/'.join(x['labels'])} | {x['score_seconds']:.2f} |"
            )
        md.append("")
    pick, why = pick_default(summ, s["pick_at"], [c for c in criteria if c not in METHODS], s["noise"])
    if pick:
        md += [f"Default by the rule (`--pick-at {s['pick_at']}`, `--noise {s['noise']}`): **{pick}**", ""]
        md += [f"- {w}" for w in why] + [""]
    errors = [r for r in record["runs"] if "error" in r]
    if errors:
        md += ["Runs that could not be made:", ""]
        md += [f"- {r['criterion']} -{r['target']:.1%} seed {r['seed']}: {r['error']}" for r in errors] + [""]
    return "\n".join(md)


def plot(summ: dict, path, teacher_top1: float, criteria) -> None:
    """Mean top-1 against MACs reduction (min-max bars), one-shot and after fine-tuning.

    The y range of each panel spans the non-random criteria; ``random`` points below it are
    listed in the panel instead of squeezing the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, title in zip(axes, ("pruned", "finetuned"), ("one-shot (right after pruning)", "after fine-tuning")):
        floor = min((v[key][1] for (c, _), v in summ.items() if c != "random"), default=0.0)
        floor = min(floor, 100 * teacher_top1) - 1.0
        off = []
        for i, c in enumerate(criteria):
            pts = sorted((v["achieved"] * 100, *v[key]) for (cc, _), v in summ.items() if cc == c)
            if not pts:
                continue
            x, m, lo, hi = zip(*pts)
            err = [[max(a - b, 0.0) for a, b in zip(m, lo)], [max(b - a, 0.0) for a, b in zip(m, hi)]]
            method = c in METHODS
            ax.errorbar(
                x,
                m,
                yerr=err,
                marker="s" if method else "o",
                ms=7 if method else 5,
                ls="none" if method else "-",
                color=f"C{i}" if i < 10 else "k",
                label=c + (" (method)" if method else ""),
                capsize=3,
                lw=1.2,
            )
            off += [f"{c} {v:.1f}% at -{a:.0f}%" for a, v in zip(x, m) if v < floor]
        ax.axhline(100 * teacher_top1, color="k", lw=0.8, ls=":", label="teacher")
        ax.set_ylim(floor, 100 * teacher_top1 + 0.1 * (100 * teacher_top1 - floor) + 0.1)
        if off:
            ax.text(0.02, 0.02, "below the axis: " + ", ".join(off), transform=ax.transAxes, fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("MACs removed (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mnist10k val top-1 (%), mean over seeds, bars: min-max")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(out: Path, record: dict, reductions, criteria, done: bool) -> None:
    """Write json/md/png atomically."""
    record["complete"] = done
    with atomic_file(out / "scorer_study.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    summ = summarise(record["runs"])
    with atomic_file(out / "scorer_study.md") as tmp:
        tmp.write_text(markdown(record, summ, reductions, criteria, done))
    plot(summ, out / "scorer_study.png", record["teacher_top1"], criteria)


def _smoke_teacher():
    torch.manual_seed(0)
    return vitcompress.create_source_model(
        "vit_tiny_patch16_224",
        img_size=28,
        patch_size=7,
        in_chans=1,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        global_pool="avg",
    )


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", default="runs/teacher_mnist10k", help="artifact folder of the reference teacher")
    ap.add_argument("--out", default="docs/study", help="folder for scorer_study.{json,md,png}")
    ap.add_argument("--reductions", default="0.3,0.462,0.6", help="MACs reductions for the scorers")
    ap.add_argument("--scorers", default="", help="comma list (default: every registered formula)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of methods run for reference ('' = none)")
    ap.add_argument("--method-reductions", default="0.462", help="MACs reductions for the methods")
    ap.add_argument("--seeds", default="0,1,2", help="calibration (and fine-tune data order) seeds")
    ap.add_argument("--data", default="mnist10k")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2, help="fine-tune epochs")
    ap.add_argument("--lr", type=float, default=5e-4, help="fine-tune peak learning rate")
    ap.add_argument("--batch-size", type=int, default=128, help="fine-tune batch size")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eval-images", type=int, default=0, help="validation subset size (0: the whole split)")
    ap.add_argument("--pick-at", type=float, default=0.462, help="reduction at which the default is picked")
    ap.add_argument("--noise", type=float, default=0.5, help="points within which two means tie")
    ap.add_argument("--resume", action="store_true", help="keep the runs of an existing scorer_study.json")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--smoke", action="store_true", help="tiny random teacher, tiny budgets: wiring check only")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    reductions, method_reductions = _floats(args.reductions), _floats(args.method_reductions)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()] or default_scorers()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for s in scorers:
        if s not in SCORERS:
            raise SystemExit(f"error: unknown scorer {s!r}; choose from {', '.join(SCORERS.list())}")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"error: unknown method {m!r}; choose from {', '.join(METHODS)}")
    if args.smoke:
        teacher = _smoke_teacher()
        args.calib_images = min(args.calib_images, 16)
        args.max_steps_per_epoch, args.epochs = 2, min(args.epochs, 1)
        args.eval_images = args.eval_images or 64
        teacher_name = "smoke (tiny random ViT)"
    else:
        if not is_artifact(args.teacher):
            raise SystemExit(
                f"error: --teacher {args.teacher!r} is not an artifact folder; train the mnist10k reference "
                "teacher first (make teacher) or pass --smoke"
            )
        teacher = vitcompress.load(args.teacher)
        teacher_name = args.teacher
    teacher.eval()
    teacher_top1 = evaluate_data(teacher, args.data, limit=args.eval_images or None).top1
    print(f"teacher top-1 {100 * teacher_top1:.2f}%", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "threads", "out")}
    settings.update(seeds=seeds, scorers=scorers, methods=methods)
    record = {
        "command": "python -m vitcompress.benchmarks.studies.scorer_study "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher": teacher_name,
        "teacher_sha256": None if args.smoke else _sha256(args.teacher),
        "teacher_top1": teacher_top1,
        "teacher_macs": count(teacher).macs,
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "runs": [],
    }
    old = out / "scorer_study.json"
    if args.resume and old.is_file():
        prev = json.loads(old.read_text())
        if prev.get("teacher_sha256") == record["teacher_sha256"]:
            record["runs"] = [r for r in prev["runs"] if "error" not in r]
            record["resumed_with"] = prev.get("resumed_with", [])
            record["command"], resumed_by = prev["command"], record["command"]
    done = {(r["criterion"], r["target"], r["seed"]) for r in record["runs"]}
    todo = [(red, c, s) for red in reductions for s in seeds for c in scorers]
    todo += [(red, m, s) for red in method_reductions for s in seeds for m in methods]
    todo = [t for t in todo if (t[1], t[0], t[2]) not in done]
    if "resumed_with" in record and todo:  # a resume that only rewrites the tables is not recorded
        record["resumed_with"].append(resumed_by)
    criteria = scorers + methods
    all_reductions = sorted(set(reductions) | set(method_reductions))
    for red, c, s in tqdm(todo, desc="scorer study"):
        row = run_one(teacher, c, red, s, args)
        record["runs"].append(row)
        msg = row.get("error") or (
            f"achieved {row['achieved']:.1%}  one-shot {100 * row['top1_pruned']:.2f}%  "
            f"fine-tuned {100 * row['top1_finetuned']:.2f}%  ({row['prune_seconds']:.0f}+{row['finetune_seconds']:.0f} s)"
        )
        tqdm.write(f"{c:>10} -{red:.1%} seed {s}: {msg}")
        write_results(out, record, all_reductions, criteria, done=False)
    write_results(out, record, all_reductions, criteria, done=True)
    print(f"wrote {out}/scorer_study.{{json,md,png}}")
    return 0


def _sha256(artifact: str) -> str:
    return hashlib.sha256(Path(artifact, "model.safetensors").read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
