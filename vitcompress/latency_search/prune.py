"""Pruning to a latency target, checked by measurement: ``vitcompress prune --latency-reduction R``.

    res = prune_to_latency("deit_small_patch16_224", latency_reduction=0.424, backend="ort-cpu",
                           output="runs/lat42")
    print(res.check.format())     # predicted and measured latency side by side

1. the latency table: ``latency_table`` (a file written by ``vitcompress profile``), ``table`` (a
   ``LatencyTable``), or measured now on ``backend`` at ``latency_batch`` (``profile``;
   written into the artifact folder as ``latency_table.json``);
2. the one-shot prune with the latency budget (``vitcompress.prune``: the plan is chosen on the
   predicted latency, widths at the measured steps);
3. the check: the input model and the pruned model measured together with the bench runners on the
   table's backend, batch, precision and threads (interleaved rounds; the cut is one minus the
   paired latency ratio). A measured cut more than ``MEASURED_TOLERANCE`` (3 points) from the
   target is reported (``LatencyCheck.warning``); the artifact is written either way, with the check
   in ``latency.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from vitcompress.artifact import check_output
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.errors import VitCompressError
from vitcompress.io import atomic_file, output_lock
from vitcompress.latency import LatencyTable
from vitcompress.pruner import PruneConfig, PruneResult, prune
from vitcompress.resolve import resolve_model

from .probes import QUANTIZED, quantized_copy
from .profile import ProfileConfig, profile_latency, run_precision

MEASURED_TOLERANCE = 0.03  # the measured cut lands within 3 points of the target, or the check says so
TABLE_FILE = "latency_table.json"
CHECK_FILE = "latency.json"


@dataclass
class LatencyCheck:
    """Predicted and measured latency of a model against a reference (the unpruned input)."""

    target: float | None
    backend: str
    batch: int
    predicted_ms: tuple[float, float]  # (reference, model)
    measured_ms: tuple[float, float]  # medians
    measured_cut: float  # 1 - paired latency ratio
    macs: tuple[int, int]
    bench: dict = field(default_factory=dict, repr=False)
    measured_cut_ci95: tuple[float, float] | None = None  # from the latency ratio's 95% CI
    flags: list = field(default_factory=list)  # the bench row's flags (busy, wide-ci)

    @property
    def predicted_cut(self) -> float:
        return 1.0 - self.predicted_ms[1] / self.predicted_ms[0]

    @property
    def ok(self) -> bool:
        return self.target is None or abs(self.measured_cut - self.target) <= MEASURED_TOLERANCE

    @property
    def ci_ok(self) -> bool:
        """The measured cut's 95% CI within ``MEASURED_TOLERANCE`` of the cut on both sides."""
        ci = self.measured_cut_ci95
        return ci is None or max(self.measured_cut - ci[0], ci[1] - self.measured_cut) <= MEASURED_TOLERANCE

    def warning(self) -> str | None:
        """One line when the measured cut misses the target by more than ``MEASURED_TOLERANCE``, or when
        the measurement is too uncertain to tell (CI wider than that, or a busy machine)."""
        if not self.ci_ok or "busy" in self.flags:
            ci = self.measured_cut_ci95 or (self.measured_cut, self.measured_cut)
            return (
                f"the measured latency cut {self.measured_cut:.1%} (95% CI {ci[0]:.1%} to {ci[1]:.1%}) is not "
                "reliable: "
                + ("other processes kept the cores busy" if "busy" in self.flags else "")
                + ("; " if "busy" in self.flags and not self.ci_ok else "")
                + (f"the CI is wider than +-{MEASURED_TOLERANCE * 100:.0f} points" if not self.ci_ok else "")
                + "; re-run the measurement on a quiet machine"
            )
        if self.ok or self.target is None:
            return None
        return (
            f"the measured latency cut {self.measured_cut:.1%} is {abs(self.measured_cut - self.target) * 100:.1f} "
            f"points from the target {self.target:.1%} (more than {MEASURED_TOLERANCE * 100:.0f}): the table may "
            "be stale or the machine busy; profile again on a quiet machine or re-run the measurement"
        )

    def format(self) -> str:
        (p0, p1), (m0, m1), (c0, c1) = self.predicted_ms, self.measured_ms, self.macs
        rows = [
            f"latency on {self.backend}, batch {self.batch} (ms per batch): predicted vs measured",
            f"{'':10s}{'predicted':>12s}{'measured':>12s}{'MACs (G)':>10s}",
            f"{'input':10s}{p0:>12.2f}{m0:>12.2f}{c0 / 1e9:>10.3f}",
            f"{'pruned':10s}{p1:>12.2f}{m1:>12.2f}{c1 / 1e9:>10.3f}",
            f"{'cut':10s}{self.predicted_cut:>12.1%}{self.measured_cut:>12.1%}{1 - c1 / c0:>10.1%}"
            + (f"   target {self.target:.1%}" if self.target is not None else ""),
        ]
        if self.measured_cut_ci95 is not None:
            lo, hi = self.measured_cut_ci95
            rows.append(
                f"measured cut 95% CI {lo:.1%} to {hi:.1%} (bootstrap over the interleaved rounds)"
                + (f"; flags: {', '.join(self.flags)}" if self.flags else "")
            )
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "backend": self.backend,
            "batch": self.batch,
            "predicted_ms": list(self.predicted_ms),
            "measured_ms": list(self.measured_ms),
            "predicted_cut": self.predicted_cut,
            "measured_cut": self.measured_cut,
            "macs": list(self.macs),
            "measured_cut_ci95": list(self.measured_cut_ci95) if self.measured_cut_ci95 else None,
            "flags": list(self.flags),
            "warnings": self.bench.get("warnings", []),
            "within_tolerance": self.ok,
            "tolerance": MEASURED_TOLERANCE,
            "env": self.bench.get("env"),
            "timing": {k: self.bench.get("config", {}).get(k) for k in ("warmup", "iters", "rounds")},
        }


def check_latency(
    reference: nn.Module,
    model: nn.Module,
    table: LatencyTable,
    target: float | None = None,
    *,
    warmup: int = 3,
    iters: int = 5,
    rounds: int = 5,
    progress: bool = False,
) -> LatencyCheck:
    """Measure ``reference`` and ``model`` together on the table's backend (``run_bench``) and put
    the measurement next to the table's prediction."""
    cfg = BenchConfig(
        backends=[table.backend],
        batches=[table.batch],
        precision=run_precision(table.precision),
        mode=table.mode,
        warmup=warmup,
        iters=iters,
        rounds=rounds,
        threads=table.threads,
    )
    if table.precision in QUANTIZED:  # an int8/fp8 table: both measured as quantized graphs
        reference, model = (quantized_copy(resolve_model(m), table.precision) for m in (reference, model))
    ref, var = load_variant(reference, name="input", max_batch=table.batch), load_variant(model, name="pruned")
    result = run_bench([ref, var], cfg, baseline="input", progress=progress)
    by = {m["variant"]: m for m in result["measurements"]}
    if "pruned" not in by:
        reason = "; ".join(s["reason"] for s in result["skipped"]) or "no measurement"
        raise VitCompressError(f"could not measure on {table.backend}: {reason}")
    return LatencyCheck(
        target,
        table.backend,
        table.batch,
        (table.model_ms(reference), table.model_ms(model)),
        (by["input"]["median_ms"], by["pruned"]["median_ms"]),
        1.0 - by["pruned"]["latency_ratio"],
        (ref.macs, var.macs),
        result,
        (1.0 - ci[1], 1.0 - ci[0]) if (ci := by["pruned"].get("latency_ratio_ci95")) else None,
        sorted(set(by["pruned"].get("flags", [])) | set(by["input"].get("flags", []))),
    )


@dataclass
class LatencyPruneResult:
    """The prune's result, the table it used (and where it was written), and the measured check."""

    result: PruneResult
    table: LatencyTable
    table_path: Path | None
    check: LatencyCheck | None


def prune_to_latency(
    model: str | os.PathLike | nn.Module,
    config: PruneConfig | None = None,
    *,
    table: LatencyTable | None = None,
    backend: str | None = None,
    latency_batch: int = 8,
    latency_precision: str = "fp32",
    profile: ProfileConfig | None = None,
    measure: bool = True,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **options: Any,
) -> LatencyPruneResult:
    """Prune ``model`` to remove ``latency_reduction`` of its latency (see the module docstring).

    The settings are a ``PruneConfig`` and/or its fields as keywords; the table comes from
    ``latency_table`` (a path), ``table``, or a profile on ``backend`` (``profile`` holds the
    profile's other settings)."""
    cfg = PruneConfig.from_options(config, **options)
    cfg.validate()
    if cfg.latency_reduction is None:
        raise VitCompressError("pass latency_reduction (the share of latency to remove)", params=["latency_reduction"])
    sources = [x for x in (cfg.latency_table, table, backend) if x is not None]
    if len(sources) != 1:
        raise VitCompressError(
            "give one latency table: latency_table=FILE (vitcompress profile writes one) or backend=B to measure "
            "one now",
            params=["latency_table", "backend"],
        )
    inputs = (model, checkpoint, cfg.latency_table)
    if output is None:
        return _prune_to_latency(
            model, cfg, table, backend, latency_batch, latency_precision, profile, measure, None, force, progress,
            pretrained, checkpoint, num_classes, img_size,
        )  # fmt: skip
    check_output(output, force=force, inputs=inputs)
    with output_lock(output):  # the artifact, the table and the check are written under one lock
        check_output(output, force=force, inputs=inputs)
        return _prune_to_latency(
            model, cfg, table, backend, latency_batch, latency_precision, profile, measure, output, force, progress,
            pretrained, checkpoint, num_classes, img_size,
        )  # fmt: skip


def _prune_to_latency(
    model: str | os.PathLike | nn.Module,
    cfg: PruneConfig,
    table: LatencyTable | None,
    backend: str | None,
    latency_batch: int,
    latency_precision: str,
    profile: ProfileConfig | None,
    measure: bool,
    output: str | os.PathLike | None,
    force: bool,
    progress: bool,
    pretrained: bool,
    checkpoint: str | None,
    num_classes: int | None,
    img_size: int | None,
) -> LatencyPruneResult:
    """``prune_to_latency`` once the request is valid and the output locked."""
    net = resolve_model(model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size)
    profiled = False
    if cfg.latency_table is not None:
        table = LatencyTable.load(cfg.latency_table)
    elif table is None:
        pcfg = ProfileConfig.from_options(profile, backend=backend, batch=latency_batch, precision=latency_precision)
        table = profile_latency(net, pcfg, progress=progress)
        profiled = True
    assert table is not None
    table.check(net)
    res = prune(net, cfg, table=table, output=output, force=force, progress=progress)
    table_path = Path(cfg.latency_table) if cfg.latency_table else None
    if profiled and output is not None:
        table_path = table.save(Path(output) / TABLE_FILE)
    check = check_latency(net, res.model, table, cfg.latency_reduction, progress=progress) if measure else None
    if check is not None and output is not None:
        with atomic_file(Path(output) / CHECK_FILE) as tmp:
            tmp.write_text(json.dumps(check.to_dict(), indent=1) + "\n")
    return LatencyPruneResult(res, table, table_path, check)
