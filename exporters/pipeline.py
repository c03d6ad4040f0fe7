"""``vitcompress export``: ONNX export, then (``trt=True``) the TensorRT check, engine and engine parity."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitcompress.errors import VitCompressError

from .onnx_export import DEFAULT_OPSET, ExportResult, export_onnx
from .outputs import created_dirs
from .profiles import ProfileLike, parity_batches, parity_img_sizes
from .trt_build import sidecar_path


@dataclass
class ExportRun:
    """Everything one ``export`` produced."""

    onnx: ExportResult
    compat: object | None = None  # CompatReport
    engine: Path | None = None
    sidecar: dict | None = None
    engine_parity: object | None = None  # ParityReport


def export(
    artifact: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch: ProfileLike = (1, 8, 32),
    dynamic_size: bool = False,
    img_size: ProfileLike = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float | None = None,
    trt: bool = False,
    engine: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
    timing_cache: str | None = None,
    opt_level: int = 3,
    progress: bool = False,
    runtime_keep: bool = False,
    echo: Callable[[str], None] = print,
) -> ExportRun:
    """Export ``artifact`` to ``output``; with ``trt``, check the graph for TensorRT, build the engine
    (``engine``, default ``<output>.engine``) and compare it with ONNX Runtime where CUDA is present.

    The ONNX file is written before anything TensorRT-related runs, so it exists even when the
    check fails or TensorRT is missing (both raise ``VitCompressError``). ``runtime_keep`` exports
    the ``keep_rate`` input (``exporters.runtime_keep``); with ``trt`` such a graph is checked, but
    no engine is built (its ``keep_rate`` would be a shape-tensor input, not supported yet).

    The engine and its sidecar are built in a temporary folder next to ``engine`` and moved into
    place only after the engine parity check passed (it runs where CUDA is present); a failed build
    or parity check leaves neither file, nor a folder created for them."""
    from .trt_build import BuildConfig

    cfg = BuildConfig.make(batch, img_size, precision, workspace_gib, opt_level, timing_cache) if trt else None
    res = export_onnx(
        artifact,
        output,
        batch=batch,
        dynamic_size=dynamic_size,
        img_size=img_size,
        precision=precision,
        opset=opset,
        check=check,
        tolerance=tolerance,
        progress=progress,
        runtime_keep=runtime_keep,
    )
    echo(f"nodes: {res.nodes_before} exported -> {res.nodes_after} after clean-up")
    if res.parity is not None:
        echo(res.parity.format())
    mb = res.size_bytes / 1e6
    echo(
        f"wrote {res.path} ({mb:.1f} MB{', external data ' + str(res.external_data) if res.external_data else ''}) "
        f"in {res.seconds:.1f} s"
    )
    run = ExportRun(res)
    if not trt:
        return run
    from .trt_check import check_tensorrt, input_max_shapes, input_max_values, token_bound

    shapes = input_max_shapes(res.path, res.batch.max, res.img_size.max if res.img_size else None)
    run.compat = check_tensorrt(res.path, shapes, input_max_values(res.path), token_bound(res.path, shapes))
    echo(run.compat.format())
    if not run.compat.ok:
        first = run.compat.errors[0]
        raise VitCompressError(
            f"the graph cannot build in TensorRT: node {first.node!r} ({first.op}) {first.message} "
            f"({len(run.compat.errors)} problem(s) listed above); no engine was built, the ONNX file {str(res.path)!r} "
            "is kept (valid ONNX for ONNX Runtime): change the model or the profile so that these nodes pass"
        )
    if res.runtime_keep:
        raise VitCompressError(
            "building a TensorRT engine from a --runtime-keep graph is not supported yet (its keep_rate input "
            "would be a shape-tensor input of the engine); the ONNX file was written and checked, build the "
            "engine from an export without --runtime-keep"
        )
    from .trt_build import build_engine, require_tensorrt

    require_tensorrt()
    if res.img_size is not None:
        cfg.img_size = res.img_size
    run.engine = Path(engine) if engine else Path(str(res.path.with_suffix("")) + ".engine")
    if run.engine.is_dir():
        raise VitCompressError(
            f"engine path {str(run.engine)!r} is a folder; pass --engine with a file path "
            f"such as {run.engine / 'model.engine'}"
        )
    source = str(artifact) if not hasattr(artifact, "forward") else None
    with created_dirs(run.engine.parent):  # removed again (where empty) when the build or its parity fails
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{run.engine.name}.tmp-", dir=run.engine.parent))
        try:
            # built under its own name in a temporary folder next to the target (so the sidecar names
            # it correctly), checked there, and moved into place only when the parity check passed
            staged = tmpdir / run.engine.name
            run.sidecar = build_engine(res.path, staged, cfg, source=source)
            run.engine_parity = _engine_parity(staged, res, run.sidecar, precision, echo)
            _install_engine(staged, run.engine)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    echo(
        f"wrote {run.engine} (TensorRT {run.sidecar['tensorrt_version']}, {precision}, profile "
        f"{run.sidecar['profile']['min']} .. {run.sidecar['profile']['max']}) and {sidecar_path(run.engine)}"
    )
    return run


def _engine_parity(staged: Path, res: ExportResult, side_info: dict, precision: str, echo: Callable[[str], None]):
    """Engine vs ONNX Runtime where CUDA is present (else None): three distinct batch sizes inside
    the engine's batch profile where it has them (``parity_batches(within=True)``) at the OPT
    image side, and, for a dynamic-size export, the second image side of the ONNX parity check.
    Raises ``VitCompressError`` when the engine differs."""
    import torch

    if not torch.cuda.is_available():
        return None
    from .trt_runner import engine_parity

    side = res.img_size.opt if res.img_size else side_info["profile"]["opt"][2]
    sizes = [(b, side) for b in parity_batches(res.batch, within=True)]
    sizes += [(res.batch.min, s) for s in parity_img_sizes(res.img_size)[1:]]
    report = engine_parity(staged, res.path, sizes, precision=precision)
    echo(report.format())
    if not report.ok:
        fix = "rebuild with --precision fp32 or report it" if precision == "fp16" else "report it with the table above"
        raise VitCompressError(
            f"the TensorRT engine differs from ONNX Runtime (max rel {report.max_rel:.2e}); "
            f"no engine was written: {fix}"
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
