"""ONNX export of a (pruned, token-reduced) timm ViT with a dynamic batch axis and, optionally, a
dynamic image size, followed by graph clean-up, metadata and a parity check.

Exporter: ``torch.onnx.export(..., dynamo=True)``. Every axis declared dynamic stays symbolic in
the graph: the token count is computed from the runtime image shape with integer arithmetic, and
with ``dynamic_size`` the position embeddings are resampled inside the graph (timm's
``dynamic_img_size=True`` path, its antialiased bicubic traced as interpolation matrices built from
the input shape and applied with MatMul, ``exporters.resampling``: the same graph for every runtime).
PyTorch's scaled-dot-product attention is decomposed by the exporter into ``MatMul -> Softmax ->
MatMul`` at the default opset, the pattern TensorRT fuses, so attention modules are exported as
they are.

With ``runtime_keep`` the graph takes a second input ``keep_permille`` (``[1]`` int64) that sets
the keep rate of every token-reducing block at run time (``exporters.runtime_keep``).

Default opset: ``DEFAULT_OPSET`` (20): the first opset with a ``Gelu`` operator, parsed by
TensorRT 10 and 11 and run by ONNX Runtime. Opset 23 would turn attention into the ``Attention``
operator, which TensorRT parses only since 10.14.

``export_onnx`` runs five named steps: ``_prepare`` (load, dynamic-size twin, example input),
``_trace`` (the exporter), ``_finish_graph`` (clean-up, axis names, metadata), ``_check`` (parity
in ONNX Runtime) and the atomic install (``onnx_files``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.export import Dim

import vitcompress
from vitcompress.artifact import check_output
from vitcompress.config import check_fields, check_number, field_range, setting, with_options
from vitcompress.counting import count
from vitcompress.errors import VitCompressError
from vitcompress.io import output_lock
from vitcompress.progress import tqdm
from vitcompress.quantizers import record_of

from . import onnx_files
from . import runtime_keep as rk
from .cleanup import cleanup, node_count
from .outputs import created_dirs
from .parity import ParityReport, check_parity
from .precision import EXPORT_PRECISIONS
from .profiles import (
    Profile,
    ProfileLike,
    check_img_profile,
    default_img_profile,
    example_batch,
    parity_batches,
    parity_img_sizes,
    parse_profile,
)
from .qdq import TOLERANCE as QDQ_TOLERANCE
from .qdq import translations as qdq_translations
from .resampling import MATMUL, matmul_resampling
from .source import load_source, patch_and_size, with_dynamic_size

DEFAULT_OPSET = 20
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
#: Above this many bytes of weights, tensors go to a ``<file>.<hex>.data`` side file (protobuf limit 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
META_PREFIX = "vitcompress."
STEPS = ("load", "export", "cleanup", "save", "parity")


@dataclass
class ExportConfig:
    """What ``export_onnx`` writes and checks (recorded in the file's ``vitcompress.export`` metadata).

    The fields carry their default, help text and range once (``vitcompress.config.setting``); the
    ``export`` command's options are generated from them. ``validate`` checks every field
    (``config.check_fields``) and the rules between them."""

    batch: ProfileLike = setting("1:8:32", "Batch profile MIN:OPT:MAX (the axis is always dynamic).")
    dynamic_size: bool = setting(False, "Dynamic image height/width (position embeddings resampled in the graph).")
    img_size: ProfileLike = setting(
        None, "Image side profile MIN:OPT:MAX, multiples of the patch (default 0.5x:1x:1.5x native)."
    )
    precision: str = setting("fp32", "fp32 or fp16 (weights and activations).", choices=EXPORT_PRECISIONS)
    opset: int = setting(DEFAULT_OPSET, "ONNX opset.", ge=17, le=23)
    check: bool = setting(True, "Compare the file with PyTorch in ONNX Runtime (CPU) before writing it.")
    tolerance: float | None = setting(
        None, "Relative error limit of the parity check (default 1e-4 fp32, 1e-2 fp16).", gt=0, le=1e6
    )
    external_data: bool | None = setting(
        None, "Weights in a side file <output>.<hex>.data (default: above ~1.8 GB of weights)."
    )
    seed: int = setting(0, "Seed of the parity check's random images.", ge=0, lt=2**32)
    runtime_keep: bool = setting(
        False,
        "Token-reduced models (topk, topk-vpa, evit, etps): add the input keep_permille [1] int64 "
        "that sets every reducing block's keep rate at run time (docs/export.md).",
    )

    def validate(self) -> tuple[Profile, Profile | None]:
        """Check the values; returns the parsed batch and image-side profiles."""
        check_number("opset", self.opset, integer=True)
        bounds = field_range(self, "opset")
        low, high = bounds["ge"], bounds["le"]
        if not low <= self.opset <= high:
            raise VitCompressError(
                f"opset={self.opset} is outside {low}..{high}; use the default opset={DEFAULT_OPSET}", params=["opset"]
            )
        check_fields(self)
        batch = parse_profile(self.batch, "batch")
        img = parse_profile(self.img_size, "img_size") if self.img_size is not None else None
        if img is not None and not self.dynamic_size and img.min != img.max:
            raise VitCompressError(
                "an img_size range needs dynamic_size=True; pass dynamic_size=True or one size",
                params=["img_size", "dynamic_size"],
            )
        return batch, img


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and measured."""

    path: Path
    parity: ParityReport | None  # None with check=False
    nodes_before: int
    nodes_after: int
    metadata: dict
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    batch: Profile | None = None
    img_size: Profile | None = None
    dynamic_size: bool = False
    input_name: str = INPUT_NAME
    runtime_keep: bool = False  # the graph has the second input ``keep_permille``
    keeps: list[float] | None = None  # keep rates the parity check ran (runtime keep)
    external_data: Path | None = None
    size_bytes: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "precision": self.precision,
            "opset": self.opset,
            "batch": self.batch.to_dict() if self.batch else None,
            "img_size": self.img_size.to_dict() if self.img_size else None,
            "dynamic_size": self.dynamic_size,
            "input_name": self.input_name,
            "runtime_keep": self.runtime_keep,
            "keeps": self.keeps,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "external_data": str(self.external_data) if self.external_data else None,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "timings": self.timings,
            "parity": self.parity.to_dict() if self.parity is not None else None,
        }


@dataclass
class _Prepared:
    """The model side of one export: what is traced, what it is checked against, at which shapes."""

    model: nn.Module  # fp32 eval copy (dynamic-size twin with ``dynamic_size``)
    meta: Any  # ArtifactMeta
    label: str
    patch: int
    native: int
    in_chans: int
    batch: Profile
    img: Profile | None
    references: dict  # keep rate (None: no keep input) -> what the graph computes, in fp32 PyTorch
    traced: nn.Module  # what the exporter traces (fp16 copy, runtime-keep wrapper)
    example: tuple  # its example inputs

    def parity_shapes(self) -> list[tuple[int, int]]:
        side = self.img.opt if self.img else self.native
        shapes = [(b, side) for b in parity_batches(self.batch)]
        return shapes + [(self.batch.min, s) for s in parity_img_sizes(self.img)[1:]]


# ------------------------------------------------------------------------------------------ steps
def _prepare(source, cfg: ExportConfig, batch: Profile, img: Profile | None) -> _Prepared:
    """Load the model, build its dynamic-size twin where asked, and make the example input."""
    model, meta, label = load_source(source)
    if cfg.runtime_keep:
        rk.check_runtime_keep(model)
    patch, native, in_chans = patch_and_size(model)
    if cfg.dynamic_size:
        img = img or default_img_profile(native, patch)
        check_img_profile(img, patch)
        model = with_dynamic_size(model, meta)
    elif img is not None and img.opt != native:
        raise VitCompressError(
            f"img_size {img} differs from the model's input size {native}; pass dynamic_size=True",
            params=["img_size", "dynamic_size"],
        )
    else:
        img = None
    quant = quant_precision(model)
    if quant is not None and cfg.precision != "fp32":
        raise VitCompressError(
            f"{label} is quantized ({quant}); its Q/DQ graph keeps the unquantized parts in fp32, "
            f"drop precision={cfg.precision}",
            params=["precision"],
        )
    traced = copy.deepcopy(model).half() if cfg.precision == "fp16" else model
    side = img.opt if img else native
    b = example_batch(batch, avoid=(side, native, in_chans))
    dtype = torch.float16 if cfg.precision == "fp16" else torch.float32
    example: tuple = (torch.randn(b, in_chans, side, side, dtype=dtype),)
    references = {None: model}
    if cfg.runtime_keep:
        keeps = rk.parity_keeps(model)
        references = {k: rk.with_keep(model, k) for k in keeps}
        traced, example = rk.RuntimeKeep(traced), example + (rk.keep_tensor(keeps[0]),)
    return _Prepared(model, meta, label, patch, native, in_chans, batch, img, references, traced, example)


def _trace(prep: _Prepared, cfg: ExportConfig) -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo) of the traced module; dynamic axes checked to be symbolic; the
    position embeddings of a dynamic-size model resampled with MatMuls (``resampling.matmul_resampling``)."""
    axes = {0: Dim.DYNAMIC}
    if cfg.dynamic_size:
        axes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    names, shapes = [INPUT_NAME], [axes]
    if cfg.runtime_keep:
        names, shapes = names + [rk.KEEP_INPUT], shapes + [None]
    try:
        with matmul_resampling() if cfg.dynamic_size else contextlib.nullcontext():
            prog = torch.onnx.export(
                prep.traced,
                prep.example,
                dynamo=True,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_shapes=tuple(shapes),
                opset_version=int(cfg.opset),
                verbose=False,
                custom_translation_table=qdq_translations(),
            )
    except Exception as e:
        raise VitCompressError(
            f"the ONNX exporter failed at opset {cfg.opset} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"try the default opset={DEFAULT_OPSET}",
            params=["opset"],
        ) from None
    proto = prog.model_proto
    _check_symbolic(proto, cfg.dynamic_size)
    return proto


def _check_symbolic(proto, dynamic_size: bool) -> None:
    """The exporter must not have specialised a dynamic axis to the example's size."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    axes = (0, 2, 3) if dynamic_size else (0,)
    fixed = [i for i in axes if not dims[i].dim_param]
    if fixed:
        raise VitCompressError(
            f"the exporter fixed input axis {fixed[0]} to {dims[fixed[0]].dim_value} (the model's forward "
            "turns that size into a constant); this model cannot be exported with a dynamic axis there",
            params=[],
        )


def _name_dims(proto) -> None:
    """Give the dynamic axes readable names (batch, height, width) in inputs and outputs."""
    inp = proto.graph.input[0].type.tensor_type.shape.dim
    names = {0: "batch", 2: "height", 3: "width"}
    mapping = {inp[i].dim_param: n for i, n in names.items() if inp[i].dim_param}
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def _metadata(prep: _Prepared, cfg: ExportConfig) -> dict[str, str]:
    """The ``vitcompress.*`` metadata entries (JSON strings)."""
    meta = prep.meta
    macs = (meta.counts or {}).get("macs")
    if macs is None:
        macs = count(prep.model).macs
    data = {
        "source": meta.source.to_dict(),
        "spec": meta.spec.to_dict(),
        "tokens": meta.tokens,
        "macs": macs,
        "counts": meta.counts,
        "counts_source": meta.counts_source,
        "plan": meta.plan.to_dict() if meta.plan is not None else None,
        "export": {
            "precision": cfg.precision,
            "opset": int(cfg.opset),
            "dynamic_size": cfg.dynamic_size,
            "batch": prep.batch.to_dict(),
            "img_size": prep.img.to_dict() if prep.img else None,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "artifact": prep.label,
            "patch_size": prep.patch,
            "pos_embed_resampling": MATMUL if cfg.dynamic_size else None,
            "runtime_keep": rk.metadata(prep.model) if cfg.runtime_keep else None,
            "vitcompress_version": vitcompress.__version__,
        },
    }
    return {META_PREFIX + k: json.dumps(v) for k, v in data.items()}


def _finish_graph(proto, prep: _Prepared, cfg: ExportConfig) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Clean-up (onnx-graphsurgeon), axis names and metadata; returns the graph and its metadata."""
    proto = cleanup(proto)
    _name_dims(proto)
    md = _metadata(prep, cfg)
    for k, v in md.items():
        proto.metadata_props.add(key=k, value=v)
    return proto, md


def _check(path: Path, prep: _Prepared, cfg: ExportConfig) -> ParityReport:
    """The parity check of the written file; raises ``VitCompressError`` above the tolerance."""
    report = check_parity(
        str(path),
        prep.references,
        prep.parity_shapes(),
        precision=cfg.precision,
        tolerance=_tolerance(prep, cfg),
        seed=cfg.seed,
        in_chans=prep.in_chans,
    )
    if not report.ok:
        worst = max(report.cases, key=lambda c: c.max_rel)
        at_keep = f", keep {worst.keep}" if worst.keep is not None else ""
        raise VitCompressError(
            f"parity check failed: max relative error {worst.max_rel:.3e} at batch {worst.batch}, "
            f"image {worst.img_size}{at_keep} exceeds {report.tolerance:.0e} ({cfg.precision}); "
            "nothing was written, report the model to the maintainers or relax tolerance",
            params=["tolerance"],
        )
    return report


def quant_precision(model: nn.Module) -> str | None:
    """``int8``/``fp8`` for a fake-quantized model (``vitcompress.quantize``), else None."""
    rec = record_of(model)
    return rec["precision"] if rec else None


def _tolerance(prep: _Prepared, cfg: ExportConfig) -> float | None:
    """``--tolerance``, else the quantized precision's (``qdq.TOLERANCE``), else the precision's."""
    quant = quant_precision(prep.model)
    if cfg.tolerance is None and quant is not None:
        return QDQ_TOLERANCE[quant]
    return cfg.tolerance


class _Steps:
    """Times the steps; a progress bar (terminals only) once the inputs are validated."""

    def __init__(self, progress: bool):
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.bar = None
        self.t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.t, 3)
        self.t = now
        if self.bar is None:  # disable=None: shown on terminals only, so logs and captured output stay clean
            self.bar = tqdm(total=len(STEPS), desc="export", disable=None if self.progress else True, leave=False)
        self.bar.set_postfix_str(name)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------ export
def export_onnx(
    model_or_artifact_path: str | os.PathLike | nn.Module,
    output: str | os.PathLike,
    config: ExportConfig | None = None,
    *,
    progress: bool = False,
    force: bool = False,
    **options,
) -> ExportResult:
    """Export an artifact folder or a timm ViT module to ONNX, clean it, check it, write it.

    ``config`` (``ExportConfig``) with any of its fields overridden by keyword (``batch=(1, 8, 32)``,
    ``dynamic_size=True``, ...; another keyword is a one-line error naming the fields). ``batch`` is a MIN:OPT:MAX profile (the batch axis is always dynamic);
    with ``dynamic_size`` height and width are dynamic too and ``img_size`` (MIN:OPT:MAX image side,
    multiples of the patch size; default half to 1.5x the native side) sets the checked sizes.
    ``precision`` fp32 or fp16 (weights and activations). The parity check (``check``) runs ONNX
    Runtime on CPU against PyTorch at three distinct batch sizes (MIN, OPT and MAX capped at 16,
    padded where they coincide: ``profiles.parity_batches``) and, with ``dynamic_size``, a second image
    size; above the tolerance (``tolerance`` or ``precision.TOLERANCE``) it raises ``VitCompressError``
    and writes nothing (folders it created for ``output`` are removed again). ``external_data``
    (default: automatic above ~1.8 GB of weights) stores the weights in a side file
    ``<output>.<8 hex digits>.data`` named inside the ONNX file (``ExportResult.external_data``).
    The written file is replaced atomically, side file included (``onnx_files.install``).

    ``dynamic_size`` resamples the position embeddings as timm does (antialiased bicubic) with
    interpolation matrices built in the graph and MatMuls (``exporters.resampling``): operations
    TensorRT documents, so the same file serves ONNX Runtime and ``--trt``.

    ``runtime_keep`` (keep/rate schedules of topk, topk-vpa, evit, etps) adds the input
    ``keep_permille`` (``[1]`` int64): every reducing block keeps ``ceil(a * n / 1000)`` of its ``n``
    patch tokens (``exporters.runtime_keep``). Parity then runs every shape at two keep rates: the
    schedule's own and 0.5 (0.8 when the own is 0.5).

    An existing ``output`` is replaced only with ``force``; a path inside the artifact exported is
    refused even then, and one inside another artifact folder needs ``force``
    (``artifact.check_output``). The output is locked for the export (``io.output_lock``).
    """
    t_start = time.perf_counter()
    cfg = with_options(ExportConfig, config, options, "export")
    batch, img = cfg.validate()
    output = check_output(output, force=force, inputs=(model_or_artifact_path,), kind="file")
    with output_lock(output):
        check_output(output, force=force, inputs=(model_or_artifact_path,), kind="file")  # now that it is ours
        return _export(model_or_artifact_path, output, cfg, batch, img, progress, t_start)


def _export(
    source, output: Path, cfg: ExportConfig, batch: Profile, img: Profile | None, progress: bool, t_start: float
) -> ExportResult:
    """``export_onnx`` once the request is valid and the output locked."""
    steps = _Steps(progress)
    # after the input is known good: creates missing parent folders, and removes them again (where
    # still empty) if anything below fails, so a failed export leaves no folders behind either
    with created_dirs(output.parent):
        prep = _prepare(source, cfg, batch, img)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        try:
            steps.done("load")
            proto = _trace(prep, cfg)
            nodes_before = node_count(proto)
            steps.done("export")
            proto, md = _finish_graph(proto, prep, cfg)
            nodes_after = node_count(proto)
            external = (
                onnx_files.weight_bytes(proto) > EXTERNAL_DATA_BYTES
                if cfg.external_data is None
                else bool(cfg.external_data)
            )
            side_name = onnx_files.data_name(output) if external else None
            steps.done("cleanup")
            tmp_path = tmpdir / output.name
            onnx_files.save(proto, tmp_path, side_name)
            del proto
            steps.done("save")
            report = _check(tmp_path, prep, cfg) if cfg.check else None
            steps.done("parity")
            onnx_files.install(tmp_path, side_name, output)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            steps.close()
    data_path = output.parent / side_name if side_name else None
    size = output.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return ExportResult(
        path=output,
        parity=report,
        nodes_before=nodes_before,
        nodes_after=nodes_after,
        metadata={k[len(META_PREFIX) :]: json.loads(v) for k, v in md.items()},
        precision=cfg.precision,
        opset=int(cfg.opset),
        batch=batch,
        img_size=prep.img,
        dynamic_size=cfg.dynamic_size,
        input_name=INPUT_NAME,
        runtime_keep=bool(cfg.runtime_keep),
        keeps=[k for k in prep.references if k is not None] or None,
        external_data=data_path,
        size_bytes=size,
        seconds=round(time.perf_counter() - t_start, 3),
        timings=steps.timings,
    )


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The ``vitcompress.*`` metadata of an exported file, JSON-decoded (without loading weights)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(META_PREFIX) :]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith(META_PREFIX)
    }
