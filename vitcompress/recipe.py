"""The width-then-depth compression recipe: prune width (taylor) -> distil -> prune depth -> distil.

Run by ``vitcompress pipeline`` (``run_pipeline(teacher, PipelineConfig(...), output)``).

The final target (remove ``reduction`` of MACs or params, relative to the teacher) is split
between the two pruning stages: the depth stage removes ``depth_blocks`` whole blocks (by default
about ``depth_share`` of the total reduction, in log space, rounded to whole blocks), the width
stage removes the rest. Depth is chosen in whole blocks, those whose removal changes the
calibration loss least first (measured exactly by skipping each block: first-order Taylor scores
are unreliable for a perturbation as large as a whole block), as many as brings the model closest
to the target without overshooting it by more than 1.5 points; where whole blocks fall short, the
depth stage also trims the widths (the same scorer and granularity as the width stage) so the
final model lands within 1.5 points of the target; the summary reports what was achieved. Every
stage writes an artifact under ``output/`` and the run ends with a summary table
(``summary.md``, ``summary.json`` and ``summary.png``): MACs, params and validation top-1 per stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .artifact import check_output, history_record, is_artifact, load, record_step, save
from .budget import TOLERANCE
from .config import check_fields, merge_config, setting
from .counting import count
from .data import calibration_loader
from .distill import DistillConfig
from .distributed import dist_info, init_distributed, launch_rank
from .errors import VitCompressError
from .evaluate import evaluate_data
from .families import Family, family_of
from .groups import parse_kinds
from .io import atomic_file, output_lock
from .logits import logits_of
from .plan import Plan
from .pruner import prune
from .resolve import Resolved, resolve
from .scorers import SCORERS
from .slicers import slice_model
from .training import TrainConfig, fit

logger = logging.getLogger(__name__)

STAGES = ("teacher", "width_pruned", "width_distilled", "depth_pruned", "depth_distilled")


@dataclass
class PipelineConfig:
    """The whole recipe (serialisable; ``load_config(PipelineConfig, "pipe.json")`` reads a JSON or YAML file)."""

    flops_reduction: float | None = setting(None, "Final fraction of MACs to remove.")
    params_reduction: float | None = setting(None, "Final fraction of params to remove.")
    importance: str = setting("taylor", "Scorer of the width stages: taylor, l1, l2, random.")
    width_granularity: tuple[str, ...] = setting(("heads", "mlp"), "Structures the width stages prune (comma list).")
    round_to: int = setting(8, "Keep pruned widths multiples of N (1 = off).", ge=1, le=2**16)
    depth_share: float = setting(0.3, "Share of the reduction (log space) taken by depth.", ge=0, lt=1)
    depth_blocks: int | None = setting(
        None, "Blocks the depth stage removes (instead of the depth share).", ge=1, le=1024
    )
    calib_images: int = setting(256, "Calibration images for scoring and block importance.", ge=1, le=2**24)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        given = [r for r in (self.flops_reduction, self.params_reduction) if r is not None]
        if len(given) != 1 or not 0 < given[0] < 1:
            raise VitCompressError(
                "give exactly one final budget: flops_reduction=R or params_reduction=R (0 < R < 1)",
                params=["flops_reduction", "params_reduction"],
            )
        check_fields(self)
        parse_kinds(self.width_granularity)
        SCORERS.get(self.importance)
        self.train.validate()
        self.distill.validate()

    @property
    def metric(self) -> str:
        return "macs" if self.flops_reduction is not None else "params"

    @property
    def reduction(self) -> float:
        r = self.flops_reduction if self.flops_reduction is not None else self.params_reduction
        if r is None:
            raise VitCompressError(
                "give exactly one final budget: flops_reduction=R or params_reduction=R (0 < R < 1)",
                params=["flops_reduction", "params_reduction"],
            )
        return r

    def to_dict(self) -> dict:
        d = asdict(self)
        d["width_granularity"] = list(self.width_granularity)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PipelineConfig:
        """The defaults with ``d``'s settings (type-checked; unknown keys are one-line errors)."""
        return merge_config(cls(), d, "pipeline")


def _measure(model: nn.Module, metric: str, family: Family | None = None) -> float:
    c = count(model, family=family)
    return float(c.macs if metric == "macs" else c.params)


def check_teacher(ctx: Resolved, cfg: PipelineConfig) -> int:
    """The teacher's number of blocks; a one-line error for a teacher the recipe cannot compress: a
    family with several residual streams (its depth stage ranks the blocks of one stream), one that
    cannot prune the width granularity or whole blocks, or fewer than 2 blocks."""
    spec, fam = ctx.spec, ctx.family
    if len(spec.stage_dims) > 1:
        raise VitCompressError(
            f"the pipeline ranks the blocks of one residual stream, and this {fam.name} model has "
            f"{len(spec.stage_dims)} stages; compress it with prune (granularity including depth) and train instead"
        )
    fam.check_kinds(ctx.model, (*cfg.width_granularity, "depth"))
    n_blocks = len(spec.blocks)
    if n_blocks < 2:
        raise VitCompressError("the pipeline's depth stage needs a teacher with at least 2 blocks; prune widths only")
    return n_blocks


@torch.no_grad()
def block_importance(model: nn.Module, loader, family: Family | None = None) -> torch.Tensor:
    """Loss change when each block is skipped: mean CE of the model without block b (sliced out by
    its family, ``family`` or ``family_of(model)``) minus the full model's mean CE, over the
    calibration images (labels when the data has the model's classes, else the model's own
    predictions)."""
    fam = family or family_of(model)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n_cls = getattr(loader.dataset, "num_classes", None)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    targets = [y if n_cls == model.num_classes else logits_of(model(x)).argmax(-1) for x, y in batches]

    def loss(net: nn.Module) -> float:
        tot = sum(
            float(nn.functional.cross_entropy(logits_of(net(x)), t, reduction="sum"))
            for (x, _), t in zip(batches, targets)
        )
        return tot / sum(len(t) for t in targets)

    base = loss(model)
    out = [
        loss(slice_model(model, without_blocks(model, {b}, fam), family=fam).eval()) - base
        for b in range(len(fam.spec(model).blocks))
    ]
    model.train(was)
    return torch.tensor(out)


def without_blocks(model: nn.Module, drop: Collection[int], family: Family | None = None) -> Plan:
    """``model``'s identity plan less the blocks ``drop`` (block indices of ``model``); ``family`` is the
    model's (else asked with ``family_of``)."""
    drop = set(drop)
    plan = (family or family_of(model)).identity_plan(model)
    plan.blocks = [b for b in plan.blocks if b not in drop]
    plan.layers = {b: lp for b, lp in plan.layers.items() if b not in drop}
    return plan


def drop_blocks(
    model: nn.Module,
    drop: Collection[int],
    importance: Sequence[float],
    target: tuple[str, float],
    config: dict | None = None,
    family: Family | None = None,
) -> nn.Module:
    """``model`` sliced without the blocks ``drop``, in eval mode, with a ``depth-loss`` history
    step: ``importance`` (``block_importance``), the ``target`` the removal served and ``config``
    (settings recorded next to the criterion); ``family`` is the model's (else asked with ``family_of``)."""
    fam = family or family_of(model)
    before = count(model, family=fam)
    pruned = slice_model(model, without_blocks(model, drop, fam), family=fam)
    rec = history_record(
        "depth-loss",
        {"granularity": ["depth"], "importance": "loss change when skipped", **(config or {})},
        target,
        before,
        count(pruned, family=fam),
        block_importance=[round(float(v), 6) for v in importance],
        removed_blocks=sorted(set(drop)),
    )
    record_step(pruned, rec, fam)
    return pruned.eval()


def training_done(path: str | os.PathLike, epochs: int) -> bool:
    """Whether ``path`` holds an artifact whose training ran all ``epochs`` (a resumed run skips
    that stage)."""
    return is_artifact(path) and load(path).vitcompress_meta.extra.get("training", {}).get("epochs_done") == epochs


def depth_prune(
    model: nn.Module,
    cfg: PipelineConfig,
    needed: float,
    n_planned: int,
    progress: bool = False,
    family: Family | None = None,
) -> nn.Module:
    """Remove whole blocks, the smallest loss change first (``block_importance``): ``depth_blocks``
    of them, or the number that brings the model closest to removing ``needed`` of the metric.
    Returns the sliced model with its artifact record (history entry ``depth-loss``); ``family``
    is the model's (else asked with ``family_of``)."""
    fam = family or family_of(model)
    depth = len(fam.spec(model).blocks)
    loader = calibration_loader(cfg.train.data, model, cfg.calib_images, 32, cfg.train.seed, family=fam)
    imp = block_importance(model, loader, fam)
    order = torch.argsort(imp, stable=True).tolist()

    def plan_without(n):
        return without_blocks(model, order[:n], fam)

    base = _measure(model, cfg.metric, fam)
    options = []
    for n in range(1, depth):
        net = slice_model(model, plan_without(n), family=fam)
        options.append((n, 1 - _measure(net, cfg.metric, fam) / base))
    if cfg.depth_blocks is not None:
        if not 1 <= cfg.depth_blocks < depth:
            raise VitCompressError(
                f"depth_blocks must be between 1 and {depth - 1}, got {cfg.depth_blocks}",
                params=["depth_blocks"],
            )
        n = cfg.depth_blocks
    else:  # closest to the need without overshooting it (a shortfall is trimmed in width afterwards)
        fit_ = [o for o in options if o[1] <= needed + TOLERANCE] or options[:1]
        n = min(fit_, key=lambda o: (abs(o[1] - needed), abs(o[0] - n_planned)))[0]
    config = {"data": cfg.train.data, "calib_images": cfg.calib_images, "seed": cfg.train.seed}
    pruned = drop_blocks(model, order[:n], imp, (cfg.metric, needed), config, fam)
    pruned.vitcompress_meta.extra.pop("training", None)
    return pruned


def run_pipeline(
    model,
    cfg: PipelineConfig,
    output: str | os.PathLike,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Run width prune -> distil -> depth prune -> distil from ``model`` (the teacher: a model
    name, an artifact folder or a module). Writes ``output/<stage>/`` artifacts and the summary;
    returns the summary as a dict (one row per stage)."""
    cfg.validate()
    out = check_output(output, force=force, exists_ok=resume, resumable=True, inputs=(model,))
    if out.exists() and not (force or resume):
        raise VitCompressError(
            f"output {str(out)!r} already exists; pass resume=True to continue it, "
            "force=True to overwrite it, or choose another path",
            params=["resume", "force"],
        )
    with output_lock(out) if launch_rank() == 0 else contextlib.nullcontext():
        created_group = init_distributed()
        try:
            return _run(model, cfg, out, resume, progress)
        finally:
            if created_group:
                torch.distributed.destroy_process_group()


def _run(model, cfg: PipelineConfig, out: Path, resume: bool, progress: bool) -> dict:
    rank, _, _ = dist_info()
    ctx = resolve(model)  # the teacher and its family, asked once; every stage's model is of the same family
    n_blocks = check_teacher(ctx, cfg)
    teacher, fam = ctx.model, ctx.family
    teacher.eval()
    rows = []

    def row(stage: str, net: nn.Module) -> None:
        c = count(net, family=fam)
        r = evaluate_data(
            net,
            cfg.train.data,
            teacher=None if stage == "teacher" else teacher,
            batch_size=cfg.train.batch_size * 2,
            device=next(teacher.parameters()).device,
        )
        rows.append(
            {
                "stage": stage,
                "macs": c.macs,
                "params": c.params,
                "depth": len(fam.spec(net).blocks),
                "top1": r.top1,
                "agreement": r.agreement,
            }
        )
        if rank == 0 and progress:
            logger.info(f"[{stage}] {c.macs / 1e6:.2f} M MACs  {c.params / 1e6:.3f} M params  top-1 {r.top1:.2%}")

    if cfg.depth_blocks is not None and not cfg.depth_blocks < n_blocks:
        raise VitCompressError(
            f"depth_blocks must be between 1 and {n_blocks - 1} (the teacher has {n_blocks} blocks), "
            f"got {cfg.depth_blocks}",
            params=["depth_blocks"],
        )
    keep = 1 - cfg.reduction
    n_depth = (
        cfg.depth_blocks
        if cfg.depth_blocks is not None
        else min(n_blocks - 1, max(1, round(n_blocks * (1 - keep**cfg.depth_share))))
    )
    k_depth = 1 - n_depth / n_blocks  # estimate: blocks of equal cost
    width_r = 1 - keep / k_depth
    if not 0 < width_r < 1:
        raise VitCompressError(
            f"the depth stage alone reaches the target (width reduction {width_r:.1%}); "
            "lower depth_share or depth_blocks",
            params=["depth_share", "depth_blocks"],
        )
    row("teacher", teacher)
    base = _measure(teacher, cfg.metric, fam)
    budget = {"flops_reduction": width_r} if cfg.metric == "macs" else {"params_reduction": width_r}

    def stage_path(name: str) -> Path:
        return out / name

    def pruned(name, src, **kw):
        p = stage_path(name)
        if resume and is_artifact(p):
            return load(p)
        if rank == 0:
            prune(
                src,
                importance=cfg.importance,
                round_to=cfg.round_to,
                data=cfg.train.data,
                calib_images=cfg.calib_images,
                seed=cfg.train.seed,
                output=p,
                force=True,
                progress=progress,
                **kw,
            )
        if dist_info()[1] > 1:
            torch.distributed.barrier()
        return load(p)

    def distilled(name, student):
        p = stage_path(name)
        if resume and training_done(p, cfg.train.epochs):
            return load(p)
        res = fit(
            student,
            cfg.train,
            p,
            teacher=teacher,
            distill=cfg.distill,
            resume=resume and p.exists(),
            force=True,
            record={"stage": name},
        )
        return res.model

    w = pruned("width_pruned", teacher, granularity=cfg.width_granularity, **budget)
    row("width_pruned", w)
    w = distilled("width_distilled", w)
    row("width_distilled", w)
    needed = 1 - keep * base / _measure(w, cfg.metric, fam)
    p = stage_path("depth_pruned")
    if not (resume and is_artifact(p)):
        d = depth_prune(w, cfg, needed, n_depth, progress and rank == 0, fam)
        short = 1 - keep * base / _measure(d, cfg.metric, fam)  # what is still to remove, as a share of d
        if short > TOLERANCE / 3:  # whole blocks fell short: trim the widths to the target
            d = prune(
                d,
                flops_reduction=short if cfg.metric == "macs" else None,
                params_reduction=short if cfg.metric == "params" else None,
                importance=cfg.importance,
                granularity=cfg.width_granularity,
                round_to=cfg.round_to,
                data=cfg.train.data,
                calib_images=cfg.calib_images,
                seed=cfg.train.seed,
            ).model
        if rank == 0:
            save(d, p, force=True, meta=d.vitcompress_meta)
        if dist_info()[1] > 1:
            torch.distributed.barrier()
    d = load(p)
    row("depth_pruned", d)
    d = distilled("depth_distilled", d)
    row("depth_distilled", d)

    summary = {
        "config": cfg.to_dict(),
        "metric": cfg.metric,
        "target": cfg.reduction,
        "achieved": 1 - _measure(d, cfg.metric, fam) / base,
        "rows": rows,
    }
    if rank == 0:
        with atomic_file(out / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
        with atomic_file(out / "summary.md") as tmp:
            tmp.write_text(format_summary(summary) + "\n")
        plot_summary(summary, out / "summary.png")
    return summary


def format_summary(summary: dict) -> str:
    """Markdown table: MACs, params, depth and top-1 per stage."""
    rows = summary["rows"]
    m0 = rows[0]["macs"]
    lines = [
        "| stage | MACs (M) | MACs removed | params (M) | depth | val top-1 | agreement with teacher |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = "" if r.get("agreement") is None else f"{r['agreement']:.2%}"
        lines.append(
            f"| {r['stage']} | {r['macs'] / 1e6:.2f} | {1 - r['macs'] / m0:.1%} | {r['params'] / 1e6:.3f} | "
            f"{r['depth']} | {r['top1']:.2%} | {agree} |"
        )
    lines.append("")
    lines.append(f"target: remove {summary['target']:.1%} of {summary['metric']}; achieved {summary['achieved']:.1%}")
    return "\n".join(lines)


def plot_summary(summary: dict, path: str | os.PathLike) -> None:
    """Top-1 against MACs per stage (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["macs"] / 1e6 for r in rows]
    ys = [r["top1"] * 100 for r in rows]
    ax.plot(xs, ys, "-o")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["stage"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("width-then-depth pipeline")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
