"""One-shot structured pruning: score groups, choose under a budget, slice, record.

``prune`` is the library entry point behind ``vitcompress prune``. It validates everything cheap
first (so bad input fails before minutes of scoring), then:
model -> groups (groups.py) -> scores (scorers/) -> plan (budget.py) -> dense model (slicers.py)
-> artifact record with the plan composed back to the source numbering (artifact.py).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from .artifact import ArtifactMeta, is_artifact, load, meta_of, save
from .budget import Budget, select
from .config import setting
from .counting import count
from .data import calibration_loader
from .errors import VitCompressError
from .groups import build_groups, parse_kinds
from .models import create_source_model
from .plan import compose
from .scorers import SCORERS, labels_used, needs_data
from .slicers import slice_model

DEFAULT_GRANULARITY = ("heads", "qk", "v", "mlp")


@dataclass
class PruneConfig:
    """Serialisable settings of one pruning step (stored in the artifact's history)."""

    flops_reduction: float | None = setting(None, "Fraction of MACs to remove, 0 < R < 1.")
    params_reduction: float | None = setting(None, "Fraction of parameters to remove, 0 < R < 1.")
    importance: str = setting(
        "taylor-abs",
        "Scorer: taylor-abs (= taylor), taylor-act, taylor-sq, fisher, taylor-sum, l1 (= magnitude), l2, random. "
        "The default scored best one shot and after fine-tuning in the scorer study (table below).",
    )
    granularity: tuple[str, ...] = setting(DEFAULT_GRANULARITY, "Comma list of heads, qk, v, mlp, embed, depth.")
    uniform: bool = setting(False, "Remove the same fraction in every layer instead of ranking globally.")
    round_to: int = setting(8, "Keep pruned widths multiples of N (1 = off).")
    data: str = setting("digits", "digits, mnist10k or an ImageFolder directory.")
    calib_images: int = setting(64, "Calibration images for scoring.")
    batch_size: int = setting(32, "Calibration batch size.")
    seed: int = setting(0, "Seed of the calibration sample (and of the random scorer).")
    labels: str = setting("auto", "Scoring labels: auto, true or pseudo (the model's own predictions).")

    def validate(self) -> None:
        given = [r for r in (self.flops_reduction, self.params_reduction) if r is not None]
        if len(given) != 1:
            raise VitCompressError("give exactly one budget: --flops-reduction R or --params-reduction R (0 < R < 1)")
        r = given[0]
        if not 0 < r < 1:
            raise VitCompressError(f"reduction {r} is outside (0, 1); pass the fraction to remove, e.g. 0.462")
        self.granularity = parse_kinds(self.granularity)
        SCORERS.get(self.importance)
        if self.round_to < 1:
            raise VitCompressError(f"--round-to must be at least 1 (1 turns alignment off), got {self.round_to}")
        if self.calib_images < 1 or self.batch_size < 1:
            raise VitCompressError("--calib-images and --batch-size must be at least 1")
        if self.labels not in ("auto", "true", "pseudo"):
            raise VitCompressError(f"labels must be auto, true or pseudo, got {self.labels!r}")

    @property
    def metric(self) -> str:
        return "macs" if self.flops_reduction is not None else "params"

    @property
    def reduction(self) -> float:
        r = self.flops_reduction if self.flops_reduction is not None else self.params_reduction
        if r is None:
            raise VitCompressError("give exactly one budget: --flops-reduction R or --params-reduction R (0 < R < 1)")
        return r

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = list(self.granularity)
        return d


@dataclass
class PruneResult:
    model: nn.Module
    meta: ArtifactMeta
    achieved: float
    seconds: dict = field(default_factory=dict)


def model_path_problem(s: str) -> str | None:
    """Why ``s``, given where a model is expected, is a path but not an artifact folder (None when it
    is an artifact or does not look like a path, i.e. may be a timm model name)."""
    if is_artifact(s):
        return None
    if os.path.isdir(s):
        return f"folder {s!r} is not a vitcompress artifact (no vitcompress.json)"
    if os.path.exists(s):
        return f"{s!r} is a file, not a vitcompress artifact folder"
    if "/" in s or os.sep in s or s.endswith((".pth", ".pt", ".safetensors", ".onnx", ".engine")):
        return f"{s!r} does not exist"
    return None


def resolve_model(
    model: str | os.PathLike | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """An ``nn.Module`` from a module, an artifact folder or a timm model name."""
    if isinstance(model, nn.Module):
        return model
    s = str(model)
    if is_artifact(s):
        if pretrained or checkpoint or num_classes or img_size:
            raise VitCompressError(
                f"{s!r} is an artifact; --pretrained/--checkpoint/--num-classes/--img-size apply to model names only"
            )
        return load(s)
    problem = model_path_problem(s)
    if problem:
        raise VitCompressError(f"{problem}; pass an artifact folder or a timm model name (weights go in --checkpoint)")
    return create_source_model(
        s, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size
    )


def prune(
    model: str | os.PathLike | nn.Module,
    *,
    flops_reduction: float | None = None,
    params_reduction: float | None = None,
    importance: str = "taylor-abs",
    granularity: Sequence[str] = DEFAULT_GRANULARITY,
    uniform: bool = False,
    round_to: int = 8,
    data: str = "digits",
    calib_images: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    labels: str = "auto",
    method: str = "oneshot",
    method_options: Mapping | None = None,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
) -> PruneResult:
    """Prune a ViT to remove ``flops_reduction`` of its MACs (or ``params_reduction`` of its params).

    ``model`` is a timm model name, an artifact folder or a module. The reduction is relative to
    that input model. Returns the pruned dense model and its artifact record; with ``output`` the
    artifact is also written (atomically; an existing folder needs ``force``).

    ``method`` picks how elements are chosen: ``oneshot`` (score with ``importance``, select, slice)
    or a registered method (``ihp``, ``gohsp``, ``amap``; see ``vitcompress.methods``) with its
    hyperparameters in ``method_options`` (a dict, or the method's options dataclass).
    """
    cfg = PruneConfig(
        flops_reduction,
        params_reduction,
        importance,
        tuple(granularity),
        uniform,
        round_to,
        data,
        calib_images,
        batch_size,
        seed,
        labels,
    )
    cfg.validate()
    meth = opts = out = None
    if method != "oneshot":
        from .methods import get as get_method

        meth = get_method(method)
        meth.check_kinds(cfg.granularity)
        opts = meth.parse_options(method_options)
    elif method_options:
        raise VitCompressError("method options apply to --method ihp, gohsp or amap only; drop them or choose a method")
    if output is not None and os.path.exists(output) and not force:
        raise VitCompressError(
            f"output {str(output)!r} already exists; pass --force to overwrite it or choose another path"
        )
    times = {}
    t0 = time.perf_counter()
    net = resolve_model(model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size)
    sched = getattr(net, "vitcompress_tokens", None)
    if sched is not None:  # widths are chosen on the plain model; the schedule is applied again after slicing
        if "depth" in cfg.granularity:
            raise VitCompressError(
                "this model carries a token schedule, and depth pruning renumbers its blocks; "
                "prune depth first, then apply token reduction (vitcompress tokens)"
            )
        from .tokens import remove_tokens

        net = remove_tokens(copy.deepcopy(net))
    if "qk" in cfg.granularity and any(not isinstance(b.attn.q_norm, nn.Identity) for b in net.blocks):
        raise VitCompressError(
            "this model normalises q and k per head (qk_norm), so q/k dims cannot be pruned exactly; drop qk from --granularity"
        )
    prev = meta_of(net)
    before = count(net)
    loader = None
    if meth is None and needs_data(cfg.importance):
        loader = calibration_loader(cfg.data, net, cfg.calib_images, cfg.batch_size, cfg.seed)
    times["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if meth is None:
        groups = build_groups(net, cfg.granularity)
        scores = SCORERS.get(cfg.importance)(
            net, groups, loader=loader, seed=cfg.seed, labels=cfg.labels, progress=progress
        )
        times["score"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        plan, achieved = select(net, groups, scores, Budget(cfg.metric, cfg.reduction, cfg.round_to, cfg.uniform))
        times["select"] = time.perf_counter() - t0
    else:  # the method trains/scores, folds its scales into a copy and selects with the core budget
        out = meth.run(net, cfg, opts, progress=progress)
        plan, achieved = out.plan, out.achieved
        times["method"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pruned = slice_model(net if out is None else out.model, plan)
    times["slice"] = time.perf_counter() - t0
    if out is not None and out.finish is not None:
        t0 = time.perf_counter()
        pruned = out.finish(pruned)
        times["finish"] = time.perf_counter() - t0

    after = count(pruned)
    if meth is None:  # which targets the scorer used (None: a data-free scorer)
        how: dict = {"labels_used": labels_used(cfg.importance, net, loader, cfg.labels)}
    else:
        how = {} if opts is None or out is None else {"method_options": opts.to_dict(), "method_log": out.extra}
    meta = ArtifactMeta(
        source=prev.source,
        spec=pruned.vitcompress_spec,
        plan=compose(prev.plan, plan),
        counts_source=prev.counts_source or before.to_dict(),
        counts=after.to_dict(),
        history=[
            *prev.history,
            {
                "method": "oneshot" if meth is None else meth.name,
                **how,
                "config": cfg.to_dict(),
                "target": {"metric": cfg.metric, "reduction": cfg.reduction},
                "achieved": {
                    "macs_reduction": 1 - after.macs / before.macs,
                    "params_reduction": 1 - after.params / before.params,
                },
                "before": before.to_dict(),
                "after": after.to_dict(),
            },
        ],
        tokens=prev.tokens,
        extra=dict(prev.extra),
    )
    pruned.vitcompress_meta = meta
    pruned.vitcompress_source = prev.source
    if sched is not None:
        from .tokens import apply_tokens

        apply_tokens(pruned, copy.deepcopy(sched))
    if output is not None:
        t0 = time.perf_counter()
        save(pruned, output, force=force, meta=meta)
        times["save"] = time.perf_counter() - t0
    return PruneResult(pruned.eval(), meta, achieved, times)
