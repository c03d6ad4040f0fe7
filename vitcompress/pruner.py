"""One-shot structured pruning: score groups, choose under a budget, slice, record.

``prune`` is the library entry point behind ``vitcompress prune``. It runs named steps:

1. ``check_request`` - validate everything cheap first (budget, granularity, scorer, method and
   its options, the latency table, the output path), so bad input fails before minutes of scoring;
2. ``load_for_pruning`` - resolve the model and its family once (``resolve.resolve``: a
   ``Resolved`` holding the module, its family, its widths and its token schedule, passed down to
   every later step) and set the token schedule aside (widths are chosen on the plain model);
3. ``choose_plan`` - groups (the family's) -> scores (``scorers/``) -> plan (``budget.py``), or a
   registered method (``methods/``) that trains/scores and selects with the same budget; a latency
   target selects on the predicted latency of a measured table (``latency.py``);
4. ``slice_model`` - the dense model (``slicers.py``), then the method's finishing step;
5. ``record`` - the history entry (``artifact.history_record``), the schedule applied again, and
   the artifact written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .artifact import ArtifactMeta, check_output, history_record, meta_of, record_step, save
from .budget import Budget, select
from .config import check_fields, setting, with_options
from .counting import Counts, count
from .data import calibration_loader
from .datapipe import check_data
from .errors import VitCompressError
from .families import Family, family_of
from .groups import parse_kinds
from .io import output_lock
from .latency import LatencyTable, latency_budget
from .latency import summary as table_summary
from .methods import METHODS, ONESHOT, Method, MethodOptions, MethodOutput
from .models import infer_source
from .plan import Plan
from .resolve import Resolved, resolve
from .scorers import SCORERS, labels_used, needs_data
from .slicers import slice_model
from .tokens.apply import apply_tokens, remove_tokens
from .tokens.counting import macs_with
from .tokens.schedule import TokenSchedule

__all__ = ["DEFAULT_GRANULARITY", "Choice", "PruneConfig", "PruneResult", "prune"]

DEFAULT_GRANULARITY = ("heads", "qk", "v", "mlp")


@dataclass
class PruneConfig:
    """Serialisable settings of one pruning step (stored in the artifact's history)."""

    flops_reduction: float | None = setting(None, "Fraction of MACs to remove, 0 < R < 1.", gt=0, lt=1)
    params_reduction: float | None = setting(None, "Fraction of parameters to remove, 0 < R < 1.", gt=0, lt=1)
    latency_reduction: float | None = setting(
        None,
        "Fraction of the latency on a backend to remove, 0 < R < 1, predicted by --latency-table "
        "(or, on the command line, by a table measured now with --backend).",
        gt=0,
        lt=1,
    )
    latency_table: str | None = setting(
        None, "Latency table of this model (written by vitcompress profile) for --latency-reduction."
    )
    importance: str = setting(
        "taylor-abs",
        "Scorer: taylor-abs (= taylor), taylor-act, taylor-sq, fisher, taylor-sum, l1 (= magnitude), l2, random. "
        "The default scored best one shot and after fine-tuning in the scorer study (table below).",
    )
    granularity: tuple[str, ...] = setting(DEFAULT_GRANULARITY, "Comma list of heads, qk, v, mlp, embed, depth.")
    uniform: bool = setting(False, "Remove the same fraction in every layer instead of ranking globally.")
    round_to: int = setting(8, "Keep pruned widths multiples of N (1 = off).", ge=1, le=2**16)
    data: str = setting("digits", "digits, mnist10k or an ImageFolder directory.")
    calib_images: int = setting(64, "Calibration images for scoring.", ge=1, le=2**24)
    batch_size: int = setting(32, "Calibration batch size.", ge=1, le=2**16)
    max_memory: float | None = setting(
        None,
        "Memory budget in GiB for the gradient scorers' backward passes: each calibration batch runs in "
        "micro-batches sized to it, gradients accumulated (same scores up to float rounding). "
        "Default: parameters and gradients plus 0.5 GiB of activations on the CPU (at most half the free "
        "memory), half the free memory on a GPU.",
        gt=0,
        le=2**20,
    )
    seed: int = setting(0, "Seed of the calibration sample (and of the random scorer).", ge=0, lt=2**32)
    labels: str = setting(
        "auto",
        "Scoring labels: auto, true or pseudo (the model's own predictions).",
        choices=("auto", "true", "pseudo"),
    )
    change_features: bool = setting(
        False, "Allow pruning embed on a model without classifier (num_classes=0): its output features narrow."
    )

    def validate(self) -> None:
        """One-line ``VitCompressError`` for a budget that is not one fraction in (0, 1), an unknown
        granularity, scorer or labels, a number out of its range (``setting``) or missing data."""
        names = ("flops_reduction", "params_reduction", "latency_reduction")
        for name in names:
            r = getattr(self, name)
            if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1):
                raise VitCompressError(
                    f"{name} {r!r} is outside (0, 1); pass the fraction to remove, e.g. 0.462", params=[name]
                )
        given = [getattr(self, n) for n in names if getattr(self, n) is not None]
        if len(given) != 1:
            raise VitCompressError(
                "give exactly one budget: flops_reduction, params_reduction or latency_reduction (0 < R < 1)",
                params=list(names),
            )
        self.granularity = parse_kinds(self.granularity)
        SCORERS.get(self.importance)
        if self.labels not in ("auto", "true", "pseudo"):
            raise VitCompressError(f"labels must be auto, true or pseudo, got {self.labels!r}")
        check_fields(self)
        check_data(self.data)

    @property
    def metric(self) -> str:
        if self.latency_reduction is not None:
            return "latency"
        return "macs" if self.flops_reduction is not None else "params"

    @property
    def reduction(self) -> float:
        r = next(
            (r for r in (self.flops_reduction, self.params_reduction, self.latency_reduction) if r is not None), None
        )
        if r is None:
            raise VitCompressError(
                "give exactly one budget: flops_reduction, params_reduction or latency_reduction (0 < R < 1)",
                params=["flops_reduction", "params_reduction", "latency_reduction"],
            )
        return r

    def budget(
        self,
        model: nn.Module | None = None,
        table: LatencyTable | None = None,
        schedule: TokenSchedule | None = None,
        family: Family | None = None,
    ) -> Budget:
        """The budget this step selects under (a latency budget needs the model and its table; MACs
        and latency are counted with ``schedule``, the token schedule the pruned model will run;
        ``family``: the model's, when the caller already knows it)."""
        if self.metric != "latency":
            return Budget(self.metric, self.reduction, self.round_to, self.uniform, tokens=schedule)
        if model is None or table is None:
            raise VitCompressError("a latency budget needs the model and its latency table", params=["latency_table"])
        return latency_budget(
            model,
            table,
            self.reduction,
            uniform=self.uniform,
            schedule=schedule,
            kinds=self.granularity,
            family=family,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = list(self.granularity)
        return d

    @classmethod
    def from_options(cls, config: PruneConfig | None = None, **options: Any) -> PruneConfig:
        """``config`` (default: the defaults) with ``options`` (field names) replacing its fields;
        a one-line error for a name that is not a field (``config.with_options``)."""
        return with_options(cls, config, options, "prune")


@dataclass
class PruneResult:
    model: nn.Module
    meta: ArtifactMeta
    achieved: float
    seconds: dict = field(default_factory=dict)


@dataclass
class Choice:
    """What ``choose_plan`` decided: the model to slice, the plan, the achieved reduction, the
    method's output (None for one-shot pruning) and how the elements were chosen (for the history:
    the scorer's targets, or the method's options and log)."""

    model: nn.Module
    plan: Plan
    achieved: float
    out: MethodOutput | None = None
    details: dict = field(default_factory=dict)


def check_request(
    cfg: PruneConfig,
    method: str,
    method_options: Mapping | MethodOptions | None,
    output: str | os.PathLike | None,
    force: bool,
    table: LatencyTable | None = None,
    inputs: tuple = (),
) -> tuple[Method | None, MethodOptions | None, LatencyTable | None]:
    """Validate the config, the method and its options, the latency table and the output path
    (``artifact.check_output``: never inside or around ``inputs``, the paths the run reads); returns
    the method and its parsed options (None, None for one-shot pruning) and the latency table of a
    latency budget (``table``, else read from ``cfg.latency_table``)."""
    cfg.validate()
    if cfg.metric == "latency":
        if method != ONESHOT:
            raise VitCompressError(
                f"latency_reduction selects with the one-shot method; drop method={method} or use flops_reduction",
                params=["latency_reduction", "method", "flops_reduction"],
            )
        if table is None:
            if cfg.latency_table is None:
                raise VitCompressError(
                    "latency_reduction needs a latency table: pass latency_table=TABLE (written by vitcompress "
                    "profile MODEL with backend=B), or on the command line backend=B to measure one now",
                    params=["latency_reduction", "latency_table", "backend"],
                )
            table = LatencyTable.load(cfg.latency_table)
    elif cfg.latency_table is not None or table is not None:
        raise VitCompressError(
            "a latency table is used with latency_reduction only; drop it or pass latency_reduction",
            params=["latency_table", "latency_reduction"],
        )
    meth = opts = None
    if method != ONESHOT:
        meth = METHODS.get(method)
        meth.check_kinds(cfg.granularity)
        opts = meth.parse_options(method_options)
    elif method_options:
        raise VitCompressError(
            "method_options apply to method=ihp, gohsp or amap only; drop them or choose one of those",
            params=["method_options", "method"],
        )
    if output is not None:
        check_output(output, force=force, inputs=inputs)
    return meth, opts, table


def _refusal(fam, net: nn.Module, kinds: list[str]) -> str:
    """Why ``fam`` refuses ``kinds`` on ``net``: its one-line error without the advice to drop them."""
    try:
        fam.check_kinds(net, kinds)
    except VitCompressError as e:
        return str(e).split("; drop ")[0].split("; pass granularity")[0]
    return "not supported"


def load_for_pruning(model, cfg: PruneConfig, meth: Method | None = None, **source: Any) -> Resolved:
    """The model to prune, resolved with its family (asked once), without its token schedule (a
    copy when it had one; the schedule stays in ``Resolved.schedule``)."""
    ctx = resolve(model, **source)
    net, fam = ctx.model, ctx.family
    if tuple(cfg.granularity) == parse_kinds(DEFAULT_GRANULARITY):  # not asked for: what the family supports
        supported = fam.supported_kinds(net, cfg.granularity)
        dropped = [k for k in cfg.granularity if k not in supported]
        if dropped and supported:
            reason = _refusal(fam, net, dropped)
            warnings.warn(
                f"the default granularity prunes {','.join(supported)} on this {fam.name} model, not "
                f"{','.join(dropped)} ({reason})",
                UserWarning,
                stacklevel=2,
            )
            cfg.granularity = supported
    fam.check_kinds(net, cfg.granularity)
    if meth is not None:
        fam.check_method(net, meth.name)
    changed = [k for k in fam.feature_kinds(net) if k in cfg.granularity]
    if changed and not cfg.change_features:
        raise VitCompressError(
            f"this model has no classifier, so pruning {','.join(changed)} narrows its output features; "
            "pass change_features=True to prune them anyway, or drop them from granularity",
            params=["change_features", "granularity"],
        )
    infer_source(net, fam)  # a module vitcompress did not create must be rebuildable, checked before any work
    if ctx.schedule is not None:  # widths are chosen on the plain model; the schedule is applied again after slicing
        if "depth" in cfg.granularity:
            raise VitCompressError(
                "this model carries a token schedule, and depth pruning renumbers its blocks; "
                "prune depth first, then apply token reduction (vitcompress tokens)"
            )
        ctx.model = remove_tokens(copy.deepcopy(net))
    return ctx


def choose_plan(
    net: nn.Module,
    cfg: PruneConfig,
    meth: Method | None,
    opts: MethodOptions | None,
    *,
    progress: bool = False,
    times: dict | None = None,
    budget: Budget | None = None,
    family: Family | None = None,
) -> Choice:
    """Score and select (one-shot) under ``budget`` (default ``cfg.budget()``), or run the method;
    ``times`` receives the stages' seconds; ``family`` is ``net``'s (else asked with ``family_of``)."""
    fam = family or family_of(net)
    times = {} if times is None else times
    budget = budget or cfg.budget()
    t0 = time.perf_counter()
    if meth is not None:  # the method trains/scores, folds its scales into a copy and selects with the core budget
        out = meth.run(net, cfg, opts, progress=progress, budget=budget, family=fam)
        times["method"] = time.perf_counter() - t0
        details = {} if opts is None else {"method_options": opts.to_dict(), "method_log": out.extra}
        return Choice(out.model, out.plan, out.achieved, out, details)
    loader = None
    if needs_data(cfg.importance):
        loader = calibration_loader(cfg.data, net, cfg.calib_images, cfg.batch_size, cfg.seed, family=fam)
    times["load"] = times.get("load", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    groups = fam.groups(net, cfg.granularity)
    scores = SCORERS.get(cfg.importance)(
        net, groups, loader=loader, seed=cfg.seed, labels=cfg.labels, progress=progress, max_memory=cfg.max_memory
    )
    times["score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan, achieved = select(net, groups, scores, budget, family=fam)
    times["select"] = time.perf_counter() - t0
    # which targets the scorer used (None: a data-free scorer)
    return Choice(net, plan, achieved, details={"labels_used": labels_used(cfg.importance, net, loader, cfg.labels)})


def record(
    pruned: nn.Module,
    cfg: PruneConfig,
    choice: Choice,
    meth: Method | None,
    before: Counts,
    family: Family | None = None,
) -> ArtifactMeta:
    """Append this step's history entry to the pruned model's record; returns the record
    (``family``: the pruned model's, else asked with ``family_of``)."""
    fam = family or family_of(pruned)
    rec = history_record(
        ONESHOT if meth is None else meth.name,
        cfg.to_dict(),
        (cfg.metric, cfg.reduction),
        before,
        count(pruned, family=fam),
        **choice.details,
    )
    return record_step(pruned, rec, fam)


def prune(
    model: str | os.PathLike | nn.Module,
    config: PruneConfig | None = None,
    *,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
    method: str = ONESHOT,
    method_options: Mapping | MethodOptions | None = None,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    table: LatencyTable | None = None,
    **options: Any,
) -> PruneResult:
    """Prune a model to remove ``flops_reduction`` of its MACs (``params_reduction`` of its params,
    ``latency_reduction`` of its latency predicted by a latency table).

    ``model`` is a model name, an artifact folder or a module (``pretrained``, ``checkpoint``,
    ``num_classes``, ``img_size`` apply to names). The settings are a ``PruneConfig`` and/or its
    fields as keywords (``flops_reduction=0.462, importance='taylor', granularity=('heads', 'mlp')``,
    which replace the config's); ``method`` picks how elements are chosen: ``oneshot`` (score with ``importance``, select, slice)
    or a registered method (``ihp``, ``gohsp``, ``amap``; see ``vitcompress.methods``) with its
    hyperparameters in ``method_options`` (a dict, or the method's options dataclass). A latency
    budget reads its table from ``latency_table`` (a path) or ``table`` (a ``LatencyTable``, e.g.
    one just measured), selects one shot on the predicted latency (``vitcompress.latency``), and
    records the table and the predicted milliseconds in the history. The reduction is relative to
    the input model. Returns the pruned dense model and its artifact record; with ``output`` the
    artifact is also written (atomically; an existing folder needs ``force``).
    """
    cfg = PruneConfig.from_options(config, **options)
    inputs = (model, checkpoint, cfg.data, cfg.latency_table)  # everything the run reads
    meth, opts, table = check_request(cfg, method, method_options, output, force, table, inputs)
    with output_lock(output) if output is not None else contextlib.nullcontext():
        if output is not None:
            check_output(output, force=force, inputs=inputs)  # again, now that the output is ours
        return _prune(
            model, cfg, meth, opts, table, output, force, progress, pretrained, checkpoint, num_classes, img_size
        )


def _prune(
    model: str | os.PathLike | nn.Module,
    cfg: PruneConfig,
    meth: Method | None,
    opts: MethodOptions | None,
    table: LatencyTable | None,
    output: str | os.PathLike | None,
    force: bool,
    progress: bool,
    pretrained: bool,
    checkpoint: str | None,
    num_classes: int | None,
    img_size: int | None,
) -> PruneResult:
    """``prune`` once the request is valid and the output locked: load, choose, slice, record, save."""
    times: dict = {}
    t0 = time.perf_counter()
    ctx = load_for_pruning(
        model, cfg, meth, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size
    )
    net, fam, sched = ctx.model, ctx.family, ctx.schedule  # a pruned model is of the same family
    times["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = (
        count(net, family=fam)
        if sched is None
        else Counts(macs_with(net, sched, family=fam), count(net, family=fam).params)
    )
    # widths are chosen on the plain model, their MACs or latency on the schedule it runs
    budget = cfg.budget(net, table, sched, family=fam) if table is not None else cfg.budget(schedule=sched)
    times["count"] = time.perf_counter() - t0
    choice = choose_plan(net, cfg, meth, opts, progress=progress, times=times, budget=budget, family=fam)
    t0 = time.perf_counter()
    pruned = slice_model(choice.model, choice.plan, family=fam)
    times["slice"] = time.perf_counter() - t0
    if choice.out is not None and choice.out.finish is not None:
        t0 = time.perf_counter()
        pruned = choice.out.finish(pruned)
        times["finish"] = time.perf_counter() - t0
    if budget is not None and table is not None and budget.cost is not None:
        ms0, ms1 = budget.cost(ctx.spec), budget.cost(fam.spec(pruned))
        choice.details["latency"] = {
            "table": cfg.latency_table,
            **table_summary(table),
            "predicted_ms_before": ms0,
            "predicted_ms_after": ms1,
            "predicted_reduction": 1 - ms1 / ms0,
        }
    if any(k in cfg.granularity for k in fam.feature_kinds(net)):  # recorded: the output narrowed
        widths = [ctx.spec.stage_dims[-1], fam.spec(pruned).stage_dims[-1]]
        choice.details["output_features"] = {"before": widths[0], "after": widths[1]}
    if sched is not None:  # counted (and recorded) with the schedule the artifact runs
        apply_tokens(pruned, copy.deepcopy(sched), family=fam)
    t0 = time.perf_counter()
    record(pruned, cfg, choice, meth, before, fam)
    times["count"] += time.perf_counter() - t0
    meta = meta_of(pruned, fam)
    if output is not None:
        t0 = time.perf_counter()
        save(pruned, output, force=force, family=fam)
        times["save"] = time.perf_counter() - t0
    return PruneResult(pruned.eval(), meta, achieved=choice.achieved, seconds=times)
