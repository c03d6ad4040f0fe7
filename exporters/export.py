"""``vitcompress export``: the export stage's order of steps.

1. ONNX export, clean-up and parity (``onnx_export.export_onnx``): the same graph with or without
   ``trt`` (a dynamic-size export resamples its position embeddings with MatMuls, ``resampling``);
2. with ``trt``: the TensorRT compatibility check (``trt_check``), on CPU, before TensorRT is imported;
3. the engine build (``trt_build.build_engine``) into a temporary folder next to the target;
4. the engine parity check against ONNX Runtime (``trt_runner.engine_parity``), where TensorRT runs;
5. the engine and its sidecar moved into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitcompress.artifact import check_output
from vitcompress.config import check_keys, with_options
from vitcompress.errors import VitCompressError
from vitcompress.io import output_lock

from . import trt_build, trt_check, trt_runner
from .onnx_export import ExportConfig, ExportResult, export_onnx
from .outputs import created_dirs
from .parity import ParityReport
from .profiles import parity_batches, parity_img_sizes
from .trt_build import BuildConfig, sidecar_path
from .trt_check import CompatReport

log = logging.getLogger(__name__)


@dataclass
class ExportRun:
    """Everything one ``export`` produced."""

    onnx: ExportResult
    compat: CompatReport | None = None
    engine: Path | None = None
    sidecar: dict | None = None
    engine_parity: ParityReport | None = None


def export(
    artifact: str | os.PathLike,
    output: str | os.PathLike,
    config: ExportConfig | None = None,
    build: BuildConfig | None = None,
    *,
    trt: bool = False,
    engine: str | os.PathLike | None = None,
    progress: bool = False,
    force: bool = False,
    **options: Any,
) -> ExportRun:
    """Export ``artifact`` to ``output``; with ``trt``, check the graph for TensorRT, build the engine
    (``engine``, default ``<output>.engine``) and compare it with ONNX Runtime.

    ``config`` (``ExportConfig``: profiles, precision, opset, parity check) and ``build``
    (``BuildConfig``: workspace, optimisation level, timing cache, ``keep_permille`` profile; read
    with ``trt`` only), each with any of its fields overridden by keyword (``batch="1:8:32"``,
    ``workspace_gib=8``); another keyword is a one-line error naming the fields of both. The
    engine's batch and image profiles and its precision are the export's (``config``'s).

    The ONNX file is written before anything TensorRT-related runs, so it exists even when the
    check fails or TensorRT is missing (both raise ``VitCompressError``). A dynamic-size export is the
    same graph with or without ``trt``: its position embeddings are resampled as timm does, with
    MatMuls TensorRT parses (``exporters.resampling``). A ``runtime_keep``
    graph's ``keep_permille`` input becomes a shape-tensor input of the engine, ranging over
    ``keep_permille`` MIN:OPT:MAX (default 1, the schedule's own rate, 1000).

    The engine and its sidecar are built in a temporary folder next to ``engine`` and moved into
    place only after the engine parity check passed; a failed build or parity check leaves neither
    file, nor a folder created for them.

    What it did (node counts, parity tables, the files written) goes to the ``vitcompress`` logger
    at INFO, which the command line prints.

    Existing files are replaced only with ``force``, and nothing is written inside the artifact
    exported (``artifact.check_output``); the ONNX file and the engine are locked for the whole
    export (``io.output_lock``)."""
    onnx_keys = {f.name for f in dataclasses.fields(ExportConfig)}
    build_keys = {f.name for f in dataclasses.fields(BuildConfig)} - onnx_keys
    check_keys(options, onnx_keys | build_keys, "export", "option")
    cfg = with_options(ExportConfig, config, {k: v for k, v in options.items() if k in onnx_keys}, "export")
    cfg.validate()
    bcfg = None
    if trt:
        shared = {"batch": cfg.batch, "img_size": cfg.img_size, "precision": cfg.precision}
        bcfg = with_options(
            BuildConfig, build, {**{k: v for k, v in options.items() if k in build_keys}, **shared}, "export"
        ).validate()
    output = check_output(output, force=force, inputs=(artifact,), kind="file")
    engine_path = None
    if bcfg is not None:
        engine_path = Path(engine) if engine else Path(str(output.with_suffix("")) + ".engine")
        check_output(engine_path, force=force, inputs=(artifact,), kind="file", what="engine path")
        if bcfg.timing_cache:
            check_output(bcfg.timing_cache, force=True, inputs=(artifact,), kind="file", what="timing cache")
    with contextlib.ExitStack() as stack:
        for p in (output, engine_path):
            if p is not None:
                stack.enter_context(output_lock(p))
        res = export_onnx(artifact, output, cfg, progress=progress, force=force)
        return _finish(artifact, res, engine_path, bcfg, cfg.precision)


def _finish(artifact, res: ExportResult, engine: Path | None, cfg: BuildConfig | None, precision: str) -> ExportRun:
    """Report the ONNX export; with ``cfg`` (``trt``) check the graph, build the engine at
    ``engine`` and check it against ONNX Runtime."""
    log.info(f"nodes: {res.nodes_before} exported -> {res.nodes_after} after clean-up")
    if res.parity is not None:
        log.info(res.parity.format())
    mb = res.size_bytes / 1e6
    log.info(
        f"wrote {res.path} ({mb:.1f} MB{', external data ' + str(res.external_data) if res.external_data else ''}) "
        f"in {res.seconds:.1f} s"
    )
    run = ExportRun(res)
    if cfg is None or engine is None:
        return run
    run.compat = _compat(res)
    log.info(run.compat.format())
    if not run.compat.ok:
        first = run.compat.errors[0]
        raise VitCompressError(
            f"the graph cannot build in TensorRT: node {first.node!r} ({first.op}) {first.message} "
            f"({len(run.compat.errors)} problem(s) listed above); no engine was built, the ONNX file {str(res.path)!r} "
            "is kept (valid ONNX for ONNX Runtime): change the model or the profile so that these nodes pass",
            params=[],
        )
    trt_build.require_tensorrt()
    if res.img_size is not None:
        cfg.img_size = res.img_size
    run.engine = engine
    source = str(artifact) if not hasattr(artifact, "forward") else None
    with created_dirs(run.engine.parent):  # removed again (where empty) when the build or its parity fails
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{run.engine.name}.tmp-", dir=run.engine.parent))
        try:
            # built under its own name in a temporary folder next to the target (so the sidecar names
            # it correctly), checked there, and moved into place only when the parity check passed
            staged = tmpdir / run.engine.name
            run.sidecar = trt_build.build_engine(res.path, staged, cfg, source=source)
            run.engine_parity = _engine_parity(staged, res, run.sidecar, precision)
            _install_engine(staged, run.engine)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    log.info(
        f"wrote {run.engine} (TensorRT {run.sidecar['tensorrt_version']}, {precision}, profile "
        f"{run.sidecar['profile']['min']} .. {run.sidecar['profile']['max']}) and {sidecar_path(run.engine)}"
    )
    return run


def _compat(res: ExportResult) -> CompatReport:
    """The TensorRT check of the written file at its largest profile shape (and keep rate)."""
    shapes = trt_check.input_max_shapes(res.path, res.batch.max, res.img_size.max if res.img_size else None)
    return trt_check.check_tensorrt(
        res.path, shapes, trt_check.input_max_values(res.path), trt_check.token_bound(res.path, shapes)
    )


def _engine_parity(staged: Path, res: ExportResult, side_info: dict, precision: str):
    """Engine vs ONNX Runtime: three distinct batch sizes inside the engine's batch profile where it
    has them (``parity_batches(within=True)``) at the OPT image side, for a dynamic-size export the
    second image side of the ONNX parity check, and for a runtime-keep engine the keep rates of the
    ONNX parity check. Raises ``VitCompressError`` when the engine differs."""
    side = res.img_size.opt if res.img_size else side_info["profile"]["opt"][2]
    sizes = [(b, side) for b in parity_batches(res.batch, within=True)]
    sizes += [(res.batch.min, s) for s in parity_img_sizes(res.img_size)[1:]]
    report = trt_runner.engine_parity(staged, res.path, sizes, precision=precision, keeps=res.keeps)
    log.info(report.format())
    if not report.ok:
        fix = "rebuild with precision=fp32 or report it" if precision == "fp16" else "report it with the table above"
        raise VitCompressError(
            f"the TensorRT engine differs from ONNX Runtime (max rel {report.max_rel:.2e}); "
            f"no engine was written: {fix}",
            params=["precision"] if precision == "fp16" else [],
        )
    return report


def _install_engine(staged: Path, engine: Path) -> None:
    """Move a checked engine and its sidecar from the temporary folder onto ``engine``.

    The old sidecar is deleted first, then the engine and the new sidecar are renamed into place:
    a crash in between leaves an engine without a sidecar (refused by ``read_sidecar``: "rebuild
    the engine"), never an engine next to the sidecar of another build."""
    sidecar_path(engine).unlink(missing_ok=True)
    os.replace(staged, engine)
    os.replace(sidecar_path(staged), sidecar_path(engine))
