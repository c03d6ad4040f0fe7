"""``vitcompress compress``: one command from a model to a deployable, measured, smaller model.

    compress("runs/teacher", CompressConfig(latency_reduction=0.4, backend="ort-cpu"), "runs/c40")

Stages, each written to its own folder under the output, atomically, and skipped by ``resume``
once complete:

1. ``profile/latency_table.json``: the model's latency table on the backend (``profile``;
   or the given ``latency_table``, copied in);
2. ``search/search.json`` and ``pruned/``: the joint search over depth, token schedule and widths
   for the latency target (``search``) and the one-shot pruned winner (an artifact);
3. ``distilled/``: the recovery loop (``training.fit`` with distillation from the teacher; the
   teacher is the input model unless ``teacher`` is given); a killed run resumes from the last
   epoch's checkpoint;
4. with ``precision`` int8 or fp8 (the profile then measures that precision, so the search cuts
   the quantized model's latency): ``quantized/``, the distilled model quantized after training
   (``vitcompress.quantize``, on ``calib_images`` training images; the dense model too, in
   ``dense_quantized/``, the reference of the quantized rows), then ``qat/``, ``qat_epochs`` of
   quantization-aware distillation from the teacher at ``qat_lr`` without warm-up (a killed run
   resumes from the last epoch's checkpoint);
5. ``export/model.onnx``: the ONNX export of the last model with its parity check
   (``exporters.export``; a Q/DQ graph for a quantized model; with ``trt`` also
   ``export/model.engine``, built and checked against ONNX Runtime);
6. ``bench/``: the dense, pruned and distilled models (and the quantized ones) measured together on
   the backend (``bench.run_bench``: ``report.md``, ``report.json``, ``report.png``);
7. ``report.md`` / ``report.json``: per stage, validation top-1, MACs, predicted and measured
   latency, the search's candidates and the time each stage took.

``compress.json`` holds the settings; ``resume`` refuses different ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from vitcompress.artifact import check_output, is_artifact, load, save
from vitcompress.benchmarks.backends import get_runner
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.benchmarks.report import to_markdown, write_report
from vitcompress.config import check_fields, setting, with_options
from vitcompress.counting import count
from vitcompress.data import check_teacher
from vitcompress.datapipe import check_data
from vitcompress.distill import DistillConfig
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate_data
from vitcompress.exporters.export import export
from vitcompress.families import family_of
from vitcompress.groups import parse_kinds
from vitcompress.io import atomic_dir, atomic_file, output_lock
from vitcompress.latency import LatencyTable
from vitcompress.quantization import CALIBRATIONS, QuantizeConfig, quantize
from vitcompress.recipe import training_done
from vitcompress.resolve import resolve_model
from vitcompress.scorers import SCORERS
from vitcompress.tokens.registry import REDUCERS
from vitcompress.training import TrainConfig, fit

from .probes import QUANTIZED
from .profile import ProfileConfig, profile_latency, quantized_unavailable, run_precision
from .search import Candidate, SearchSpace, search

logger = logging.getLogger("vitcompress.compress")

TABLE = Path("profile") / "latency_table.json"
SEARCH = Path("search") / "search.json"
PRUNED, DISTILLED = Path("pruned"), Path("distilled")
QUANTIZED_DIR, DENSE_QUANTIZED, QAT = Path("quantized"), Path("dense_quantized"), Path("qat")
ONNX = Path("export") / "model.onnx"
BENCH = Path("bench") / "report.json"
SETTINGS = "compress.json"


@dataclass
class CompressConfig:
    """The whole ``compress`` run (``train``/``distill``: the recovery stage's settings)."""

    latency_reduction: float | None = setting(
        None, "Fraction of the latency on --backend to remove, 0 < R < 1.", gt=0, lt=1
    )
    backend: str = setting("ort-cpu", "Backend the latency is profiled, predicted and measured on.")
    latency_batch: int = setting(8, "Batch size of the latency target.", ge=1, le=65_536)
    latency_precision: str = setting("fp32", "Precision of the latency target and the export: fp32 or fp16.")
    precision: str = setting(
        "fp32",
        "fp32 (as latency_precision), or int8 / fp8: profile and search at that precision, then quantize, "
        "quantization-aware distil and export a Q/DQ graph.",
        choices=("fp32", *QUANTIZED),
    )
    calibration: str = setting(
        "minmax",
        "With --precision int8/fp8: how input scales are chosen (minmax, percentile, entropy).",
        choices=CALIBRATIONS,
    )
    qat_epochs: int = setting(
        1,
        "With --precision int8/fp8: epochs of quantization-aware distillation (0: post-training only).",
        ge=0,
        le=10_000,
    )
    qat_lr: float = setting(1e-4, "Learning rate of the quantization-aware epochs (no warm-up).", gt=0, le=10)
    latency_table: str | None = setting(
        None, "A latency table of the model (vitcompress profile) instead of profiling."
    )
    importance: str = setting("taylor-abs", "Scorer of the width prune (see vitcompress prune).")
    granularity: tuple[str, ...] = setting(("heads", "qk", "v", "mlp"), "Widths the search prunes (comma list).")
    calib_images: int = setting(
        128, "Calibration images for block importance, width scores and quantization scales.", ge=1
    )
    search_images: int = setting(256, "Training images the search compares candidates on (KL to the teacher).", ge=1)
    max_depth_drop: int | None = setting(
        None, "Most blocks the search removes (default: as many as the target allows).", ge=0, le=1024
    )
    token_method: str = setting("topk-vpa", "Token reducer the search tries, or none.")
    token_keeps: tuple[str, ...] = setting(
        ("0.9", "0.8", "0.7"), "Keep rates the search tries (at a quarter, half and three quarters of the depth)."
    )
    trt: bool = setting(False, "Also build a TensorRT engine from the ONNX export (needs TensorRT and a GPU).")
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> None:
        check_fields(self)  # every number in its range (the nested train/distill settings too)
        r = self.latency_reduction
        if r is None or not 0 < r < 1:
            raise VitCompressError(
                f"latency_reduction must be in (0, 1), got {r}; pass the share of latency to remove, e.g. 0.4",
                params=["latency_reduction"],
            )
        self.granularity = parse_kinds(self.granularity)
        if "depth" in self.granularity:
            raise VitCompressError(
                "compress chooses depth itself (whole blocks, by their loss when skipped); drop depth from granularity",
                params=["granularity"],
            )
        SCORERS.get(self.importance)
        if self.token_method != "none":
            REDUCERS.get(self.token_method)
            if self.token_method == "tome":
                raise VitCompressError("the search tries keep-rate reducers (topk, topk-vpa, evit, etps), not tome")
        try:
            keeps = [float(k) for k in self.token_keeps]
        except ValueError:
            raise VitCompressError(
                f"token_keeps must be numbers in (0, 1), got {self.token_keeps}", params=["token_keeps"]
            ) from None
        if any(not 0 < k < 1 for k in keeps):
            raise VitCompressError(f"token_keeps must be in (0, 1), got {self.token_keeps}", params=["token_keeps"])
        if self.latency_precision not in ("fp32", "fp16"):
            raise VitCompressError(
                f"latency_precision is fp32 or fp16 (the export's precisions), got {self.latency_precision!r}",
                params=["latency_precision"],
            )
        if self.calib_images < 1 or self.search_images < 1:
            raise VitCompressError(
                "calib_images and search_images must be at least 1", params=["calib_images", "search_images"]
            )
        if self.precision in QUANTIZED and self.latency_precision != "fp32":
            raise VitCompressError(
                f"precision {self.precision} exports a Q/DQ graph whose unquantized parts are fp32; "
                "leave latency_precision at fp32",
                params=["precision", "latency_precision"],
            )
        self.train.validate()
        self.distill.validate()

    def profile_config(self) -> ProfileConfig:
        """The profile of the model: on the target backend, batch and precision, with the search's
        token reducer."""
        return ProfileConfig(
            backend=self.backend,
            batch=self.latency_batch,
            precision=self.precision if self.precision in QUANTIZED else self.latency_precision,
            token_method=None if self.token_method == "none" else self.token_method,
        )

    def space(self) -> SearchSpace:
        return SearchSpace(
            reduction=float(self.latency_reduction or 0.0),
            importance=self.importance,
            granularity=tuple(self.granularity),
            data=self.train.data,
            calib_images=self.calib_images,
            search_images=self.search_images,
            seed=self.train.seed,
            max_depth_drop=self.max_depth_drop,
            token_method=None if self.token_method == "none" else self.token_method,
            token_keeps=[float(k) for k in self.token_keeps],
        )

    def quantize_config(self) -> QuantizeConfig:
        """The post-training quantization of the distilled (and the dense) model."""
        return QuantizeConfig(
            precision=self.precision,
            calibration=self.calibration,
            data=self.train.data,
            calib_images=self.calib_images,
            seed=self.train.seed,
        )

    def qat_train(self) -> TrainConfig:
        """The quantization-aware epochs: the recovery settings at ``qat_lr``, without warm-up."""
        return replace(
            self.train,
            epochs=self.qat_epochs,
            lr=self.qat_lr,
            min_lr=min(self.train.min_lr, self.qat_lr),
            warmup_epochs=0.0,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["granularity"] = list(self.granularity)
        d["token_keeps"] = list(self.token_keeps)
        return d


@dataclass
class CompressResult:
    """What a run produced: the distilled model, the output folder and the report."""

    model: nn.Module
    output: Path
    report: dict


def _json(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _settings(out: Path, cfg: CompressConfig, model, teacher, resume: bool) -> None:
    """Write the run's settings, or on resume check that they are the same."""
    mine = {"model": str(model) if not isinstance(model, nn.Module) else None, "teacher": teacher, **cfg.to_dict()}
    path = out / SETTINGS
    if resume and path.is_file():
        old = json.loads(path.read_text())
        new = CompressConfig().to_dict()  # a setting added since the run began counts at its default
        diff = sorted(k for k in set(old) | set(mine) if old.get(k, new.get(k)) != mine.get(k))
        if diff:
            raise VitCompressError(
                f"resume with the settings of the run in {str(out)!r}: {diff[0]} differs; "
                "drop resume=True and pass force=True to start again",
                params=["resume", "force"],
            )
    _json(path, mine)


def compress(
    model: str | os.PathLike | nn.Module,
    config: CompressConfig | None = None,
    output: str | os.PathLike = "compressed",
    *,
    teacher: str | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    callbacks: Sequence = (),
    **options: Any,
) -> CompressResult:
    """Profile, search, prune, distil, export and bench ``model`` for a latency target (module docstring).

    ``config`` and/or its top-level fields as keywords; ``callbacks`` go to the training loop."""
    cfg = with_options(CompressConfig, config, options, "compress")
    cfg.validate()
    inputs = (model, teacher, cfg.latency_table, cfg.train.data)
    out = check_output(output, force=force, exists_ok=resume, resumable=True, inputs=inputs)
    check_data(cfg.train.data)
    if cfg.latency_table is not None:
        table = LatencyTable.load(cfg.latency_table)  # a bad file fails before anything is written
        backend, precision, mode = table.backend, table.precision, table.mode
        if (precision in QUANTIZED or cfg.precision in QUANTIZED) and precision != cfg.precision:
            raise VitCompressError(
                f"the latency table was measured in {precision}, not {cfg.precision}; profile with "
                f"precision={cfg.precision} or pass precision={precision if precision in QUANTIZED else 'fp32'}",
                params=["latency_table", "precision"],
            )
    else:
        cfg.profile_config().validate()  # the backend, batch and precision can be measured here
        backend, mode = cfg.backend, "eager"
        precision = cfg.precision if cfg.precision in QUANTIZED else cfg.latency_precision
    reason = quantized_unavailable(backend, precision) or get_runner(backend).unavailable(
        run_precision(precision), mode
    )
    if reason:
        raise VitCompressError(
            f"backend {backend} cannot measure here ({reason}); choose another backend, precision or latency_precision",
            params=["backend", "precision", "latency_precision"],
        )
    dense = resolve_model(model).eval()
    teach = resolve_model(teacher).eval() if teacher is not None else dense
    if teach is not dense:
        check_teacher(dense, teach)  # before the search, not after it
    depth = len(family_of(dense).spec(dense).blocks)
    if cfg.max_depth_drop is not None and cfg.max_depth_drop > depth - 1:
        raise VitCompressError(
            f"max_depth_drop must be at most {depth - 1} (the model has {depth} blocks), got {cfg.max_depth_drop}",
            params=["max_depth_drop"],
        )
    with output_lock(out):  # one writer of the folder for all the stages
        check_output(out, force=force, exists_ok=resume, resumable=True, inputs=inputs)  # now that it is ours
        if out.exists() and not resume:
            # --force: the new run is built beside the old one and swapped in when complete; any
            # failure or interrupt leaves the old output as it was
            with atomic_dir(out, force=True) as tmp:
                res = _compress(model, dense, teach, cfg, tmp, out, teacher, False, progress, callbacks)
            return CompressResult(res.model, out, res.report)
        fresh = not out.exists()
        try:
            return _compress(model, dense, teach, cfg, out, out, teacher, resume, progress, callbacks)
        except Exception:
            if fresh:  # an error leaves no half-made folder (a kill or Ctrl-C leaves it for resume)
                shutil.rmtree(out, ignore_errors=True)
            raise


def _compress(
    model: str | os.PathLike | nn.Module,
    dense: nn.Module,
    teach: nn.Module,
    cfg: CompressConfig,
    out: Path,
    final: Path,
    teacher: str | None,
    resume: bool,
    progress: bool,
    callbacks: Sequence,
) -> CompressResult:
    """``compress`` once the request is valid and the output folder locked: the stages are written
    to ``out`` (``final``, or a temporary sibling swapped onto it afterwards)."""
    out.mkdir(parents=True, exist_ok=True)
    _settings(out, cfg, model, teacher, resume)
    seconds: dict[str, float] = {}

    def stage(name: str, done: bool) -> bool:
        logger.info(f"[{name}] {'done, skipped' if done else 'running'}")
        return done

    t0 = time.perf_counter()
    if not stage("profile", resume and (out / TABLE).is_file()):
        if cfg.latency_table is not None:
            table = LatencyTable.load(cfg.latency_table)
            table.check(dense)
        else:
            table = profile_latency(dense, cfg.profile_config(), progress=progress)
        table.save(out / TABLE)
    table = LatencyTable.load(out / TABLE)
    table.check(dense)
    if cfg.token_method != "none" and cfg.token_method not in table.reducers:
        logger.info(
            f"warning: the latency table has no measurement of {cfg.token_method}'s own time; token schedules are "
            f"predicted without it (profile with --token-method {cfg.token_method})"
        )
    seconds["profile"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not stage("search", resume and (out / SEARCH).is_file() and is_artifact(out / PRUNED)):
        best, rows = search(dense, teach, table, cfg.space(), progress=progress)
        assert best.model is not None
        save(best.model, out / PRUNED, force=True)
        _json(out / SEARCH, {"chosen": rows.index(best), "candidates": [c.to_dict() for c in rows]})
    found = json.loads((out / SEARCH).read_text())
    pruned = load(out / PRUNED)
    seconds["search"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    p = out / DISTILLED
    if not stage("distil", resume and training_done(p, cfg.train.epochs)):
        student = load(out / PRUNED)
        fit(
            student,
            cfg.train,
            p,
            teacher=teach,
            distill=cfg.distill,
            resume=resume and p.exists(),
            force=True,
            record={"stage": "compress", "teacher": teacher},
            callbacks=callbacks,
        )
    distilled = load(p)
    seconds["distil"] = time.perf_counter() - t0

    quant = cfg.precision if cfg.precision in QUANTIZED else None
    last, quantized, dense_q, qat = p, None, None, None
    if quant is not None:
        t0 = time.perf_counter()
        if not stage("quantize", resume and is_artifact(out / QUANTIZED_DIR) and is_artifact(out / DENSE_QUANTIZED)):
            quantize(p, cfg.quantize_config(), output=out / QUANTIZED_DIR, force=True, progress=progress)
            quantize(dense, cfg.quantize_config(), output=out / DENSE_QUANTIZED, force=True, progress=progress)
        quantized, dense_q, last = load(out / QUANTIZED_DIR), load(out / DENSE_QUANTIZED), out / QUANTIZED_DIR
        seconds["quantize"] = time.perf_counter() - t0
        if cfg.qat_epochs > 0:
            t0 = time.perf_counter()
            q = out / QAT
            done = is_artifact(q) and load(q).vitcompress_meta.extra.get("training", {}).get("epochs_done") == (
                cfg.qat_epochs
            )
            if not stage("qat", resume and done):
                fit(
                    load(out / QUANTIZED_DIR),
                    cfg.qat_train(),
                    q,
                    teacher=teach,  # the unquantized teacher
                    distill=cfg.distill,
                    resume=resume and q.exists(),
                    force=True,
                    record={"stage": "compress-qat", "teacher": teacher},
                    callbacks=callbacks,
                )
            qat, last = load(q), q
            seconds["qat"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    b = cfg.latency_batch
    export_info = None
    if not stage(
        "export", resume and (out / ONNX).is_file() and (not cfg.trt or (out / ONNX).with_suffix(".engine").is_file())
    ):
        run = export(
            last,
            out / ONNX,
            force=True,  # the folder is this run's: a file an interrupted run left is replaced
            batch=(1, b, max(b, 32)),
            precision=cfg.latency_precision,
            trt=cfg.trt,
            progress=progress,
        )
        export_info = {  # the paths the files have once the run is complete
            "onnx": str(final / ONNX),
            "size_bytes": run.onnx.size_bytes,
            "parity_max_rel": run.onnx.parity.max_rel if run.onnx.parity is not None else None,
            "engine": str(final / ONNX.with_suffix(".engine")) if run.engine else None,
        }
        _json(out / "export" / "export.json", export_info)
    export_info = json.loads((out / "export" / "export.json").read_text())
    seconds["export"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not stage("bench", resume and (out / BENCH).is_file()):
        bcfg = BenchConfig(
            backends=[table.backend],
            batches=[table.batch],
            precision=run_precision(table.precision),
            mode=table.mode,
            threads=table.threads,
        )
        variants = [
            load_variant(net, name=name, max_batch=b)
            for name, net, _ in _stages(dense, pruned, distilled, quantized, dense_q, qat, quant)
        ]
        result = run_bench(variants, bcfg, baseline="dense", progress=progress)
        write_report(result, out / "bench")
    bench = json.loads((out / BENCH).read_text())
    seconds["bench"] = time.perf_counter() - t0

    nets = _stages(dense, pruned, distilled, quantized, dense_q, qat, quant)
    report = _report(cfg, dense, teach, nets, table, found, bench, export_info, seconds, model)
    _json(out / "report.json", report)
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(format_report(report, bench) + "\n")
    logger.info(f"wrote {final / 'report.md'}")
    return CompressResult(qat if qat is not None else quantized if quantized is not None else distilled, final, report)


def _stages(dense, pruned, distilled, quantized, dense_q, qat, quant) -> list[tuple[str, nn.Module, str]]:
    """The models a run made, as (stage, model, precision), the quantized ones when there are."""
    rows = [("dense", dense, "fp32"), ("pruned", pruned, "fp32"), ("distilled", distilled, "fp32")]
    if quant is not None:
        rows[1:1] = [(f"dense-{quant}", dense_q, quant)]
        rows.append(("quantized", quantized, quant))
        if qat is not None:
            rows.append(("qat", qat, quant))
    return rows


def _report(cfg, dense, teacher, nets, table, found, bench, export_info, seconds, model) -> dict:
    """Per stage: validation top-1, MACs, predicted and measured latency; the search; the timings.

    A quantized stage's measured cut is against the dense model quantized alike (``dense-int8``),
    a float stage's against the dense model; ``ratio_to_dense`` is every stage's latency over the
    dense model's as run."""
    measured = {m["variant"]: m for m in bench["measurements"]}
    rows = []
    base_pred = table.model_ms(dense)
    base_macs = count(dense).macs
    for name, net, precision in nets:
        ev = evaluate_data(net, cfg.train.data, teacher=None if net is teacher else teacher)
        pred = table.model_ms(net)
        m = measured.get(name, {})
        ref = measured.get(f"dense-{precision}") if precision in QUANTIZED else None
        if ref is not None and m:  # a quantized stage against the quantized dense model
            ci = [1.0, 1.0] if name == ref["variant"] else None
            m = {**m, "latency_ratio": m["latency_ratio"] / ref["latency_ratio"], "latency_ratio_ci95": ci}
        rows.append(
            {
                "stage": name,
                "precision": precision,
                "ratio_to_dense": measured[name]["latency_ratio"] if name in measured else None,
                "top1": ev.top1,
                "agreement": ev.agreement,
                "macs": count(net).macs,
                "macs_cut": 1 - count(net).macs / base_macs,
                "predicted_ms": pred,
                "predicted_cut": 1 - pred / base_pred,
                "measured_ms": m.get("median_ms"),
                "measured_cut": 1 - m["latency_ratio"] if m else None,
                "measured_cut_ci95": [1 - ci[1], 1 - ci[0]] if (ci := m.get("latency_ratio_ci95")) else None,
                "flags": m.get("flags", []),
            }
        )
    chosen = Candidate(**{k: v for k, v in found["candidates"][found["chosen"]].items()})
    return {
        "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "target": cfg.latency_reduction,
        "backend": table.backend,
        "batch": table.batch,
        "precision": table.precision,
        "threads": table.threads,
        "table": table.describe(),
        "steps": table.steps,
        "rows": rows,
        "chosen": chosen.describe(),
        "candidates": found["candidates"],
        "export": export_info,
        "seconds": seconds,
        "config": cfg.to_dict(),
    }


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _cut_ci(row: dict) -> str:
    ci = row.get("measured_cut_ci95")
    return _pct(row["measured_cut"]) + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def format_report(report: dict, bench: dict | None = None) -> str:
    """The run's report as Markdown."""
    lines = [
        f"# compress: {report['model']}, {report['target']:.1%} latency cut on {report['backend']} "
        f"(batch {report['batch']}, {report['precision']}, {report['threads']} threads)",
        "",
        "| stage | precision | val top-1 | MACs (G) | MACs cut | predicted ms | predicted cut | measured ms "
        "| ratio to dense | measured cut [95% CI] | flags |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        ms = "-" if r["measured_ms"] is None else f"{r['measured_ms']:.2f}"
        ratio = "-" if r.get("ratio_to_dense") is None else f"{r['ratio_to_dense']:.3f}"
        lines.append(
            f"| {r['stage']} | {r.get('precision', report['precision'])} | {r['top1']:.2%} | {r['macs'] / 1e9:.4f} | "
            f"{_pct(r['macs_cut'])} | {r['predicted_ms']:.2f} | {_pct(r['predicted_cut'])} | {ms} | {ratio} | "
            f"{_cut_ci(r)} | {', '.join(r.get('flags') or []) or '-'} |"
        )
    ex = report.get("export") or {}
    lines += [
        "",
        f"Latency table: {report['table']}; steps {report['steps']}. Predicted: at the table's precision; "
        "measured cut: against the dense model at the stage's precision; ratio to dense: against the dense "
        "model as given.",
        f"Chosen by the search: {report['chosen']}.",
        f"Export: {ex.get('onnx')} ({(ex.get('size_bytes') or 0) / 1e6:.1f} MB, parity max rel "
        f"{ex.get('parity_max_rel') or 0:.1e})"
        + (f", TensorRT engine {ex['engine']}" if ex.get("engine") else "")
        + ".",
        "",
        "## Search",
        "",
        "| blocks removed | tokens | width cut | predicted cut | MACs (G) | KL to teacher | agreement | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["candidates"]:
        kl = "-" if c["kl"] is None else f"{c['kl']:.4f}"
        ag = "-" if c["agreement"] is None else f"{c['agreement']:.1%}"
        lines.append(
            f"| {c['blocks_removed'] or '-'} | {c['tokens'] or '-'} | {c['width_cut']:.1%} | {_pct(c['predicted_cut'])} | "
            f"{c['macs'] / 1e9:.4f} | {kl} | {ag} | {c['status']} |"
        )
    lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()) + "."]
    if bench is not None:
        lines += ["", "## Bench", "", to_markdown(bench)]
    return "\n".join(lines)
