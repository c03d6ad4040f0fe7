"""ONNX export of a (pruned, token-reduced) timm ViT with a dynamic batch axis and, optionally, a
dynamic image size, followed by graph clean-up, metadata and a parity check.

Exporter: ``torch.onnx.export(..., dynamo=True)``. Every axis declared dynamic stays symbolic in
the graph: the token count is computed from the runtime image shape with integer arithmetic, and
with ``dynamic_size`` the position embeddings are resampled inside the graph (timm's
``dynamic_img_size=True`` path, which exports as a ``Resize`` whose output size is computed from the
input shape). PyTorch's scaled-dot-product attention is decomposed by the exporter into
``MatMul -> Softmax -> MatMul`` at the default opset, the pattern TensorRT fuses, so attention
modules are exported as they are.

With ``runtime_keep`` the graph takes a second input ``keep_rate`` (``[1]`` float32) that sets
the keep rate of every token-reducing block at run time (``exporters.runtime_keep``).

Default opset: ``DEFAULT_OPSET`` (20): the first opset with a ``Gelu`` operator, parsed by
TensorRT 10 and 11 and run by ONNX Runtime. Opset 23 would turn attention into the ``Attention``
operator, which TensorRT parses only since 10.14.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.errors import VitCompressError

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

DEFAULT_OPSET = 20
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16")
#: Above this many bytes of weights, tensors go to a ``<file>.<hex>.data`` side file (protobuf limit 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
META_PREFIX = "vitcompress."


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and measured."""

    path: Path
    parity: Any | None  # ParityReport, None with check=False
    nodes_before: int
    nodes_after: int
    metadata: dict
    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    batch: Profile | None = None
    img_size: Profile | None = None
    dynamic_size: bool = False
    input_name: str = INPUT_NAME
    runtime_keep: bool = False  # the graph has the second input ``keep_rate``
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
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "external_data": str(self.external_data) if self.external_data else None,
            "size_bytes": self.size_bytes,
            "seconds": self.seconds,
            "timings": self.timings,
            "parity": self.parity.to_dict() if self.parity is not None else None,
        }


# ------------------------------------------------------------------------------- model preparation
def _load_source(model_or_path: str | os.PathLike | nn.Module):
    """(fp32 eval copy of the model, its ArtifactMeta, label of the source)."""
    from vitcompress.artifact import load, meta_of

    if isinstance(model_or_path, nn.Module):
        model = copy.deepcopy(model_or_path).float().eval()
        meta = getattr(model_or_path, "vitcompress_meta", None)
        if meta is None:
            meta = meta_of(copy.deepcopy(model))
        else:
            meta = copy.deepcopy(meta)
        return model, meta, "<module>"
    model = load(model_or_path)
    meta = model.vitcompress_meta
    if meta.tokens:
        from vitcompress.tokens import TokenSchedule, apply_tokens, schedule_of

        if schedule_of(model) is None:
            apply_tokens(model, TokenSchedule.from_dict(meta.tokens))
    return model.float().eval(), meta, str(model_or_path)


def _with_dynamic_size(model: nn.Module, meta) -> nn.Module:
    """The same weights in a timm model built with ``dynamic_img_size=True`` (pos-embed resampling
    in ``forward``, patch embedding without a fixed input size)."""
    from vitcompress.models import SourceModel
    from vitcompress.spec import build_model, spec_from_model

    if getattr(model, "dynamic_img_size", False):
        return model
    sched = None
    plain = model
    try:
        from vitcompress.tokens import remove_tokens, schedule_of

        sched = schedule_of(model)
        if sched is not None:
            plain = remove_tokens(copy.deepcopy(model))
    except ImportError:  # pragma: no cover
        pass
    src = meta.source
    dyn = build_model(
        SourceModel(src.name, {**src.kwargs, "dynamic_img_size": True}), spec_from_model(plain), device="cpu"
    )
    dyn.load_state_dict(plain.state_dict(), strict=True)
    for attr in ("pretrained_cfg", "default_cfg", "vitcompress_meta"):
        if hasattr(plain, attr):
            setattr(dyn, attr, getattr(plain, attr))
    if sched is not None:
        from vitcompress.tokens import apply_tokens

        apply_tokens(dyn, copy.deepcopy(sched))
    return dyn.float().eval()


def _patch_and_size(model: nn.Module) -> tuple[int, int, int]:
    pe = model.patch_embed
    patch = int(pe.patch_size[0])
    size = pe.img_size[0] if pe.img_size is not None else None
    if size is None:
        size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1]
    return patch, int(size), int(pe.proj.in_channels)


# ------------------------------------------------------------------------------------ graph export
def _export_graph(
    model: nn.Module, example: torch.Tensor, dynamic_size: bool, opset: int, keep: torch.Tensor | None = None
):
    """``torch.onnx.export`` (dynamo) of ``model(example)``, or of ``model(example, keep)`` for a
    runtime-keep wrapper (``keep_rate`` has the static shape ``[1]``)."""
    from torch.export import Dim

    from .runtime_keep import KEEP_INPUT

    axes = {0: Dim.DYNAMIC}
    if dynamic_size:
        axes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    args, names, shapes = (example,), [INPUT_NAME], (axes,)
    if keep is not None:
        args, names, shapes = (example, keep), [INPUT_NAME, KEEP_INPUT], (axes, None)
    try:
        prog = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=names,
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            opset_version=opset,
            verbose=False,
        )
    except Exception as e:
        raise VitCompressError(
            f"the ONNX exporter failed at opset {opset} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"try the default --opset {DEFAULT_OPSET}"
        ) from None
    return prog.model_proto


def _name_dims(proto, dynamic_size: bool) -> None:
    """Give the dynamic axes readable names (batch, height, width) in inputs and outputs."""
    inp = proto.graph.input[0].type.tensor_type.shape.dim
    names = {0: "batch", 2: "height", 3: "width"}
    mapping = {inp[i].dim_param: n for i, n in names.items() if inp[i].dim_param}
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def _check_symbolic(proto, dynamic_size: bool) -> None:
    """The exporter must not have specialised a dynamic axis to the example's size."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    axes = (0, 2, 3) if dynamic_size else (0,)
    fixed = [i for i in axes if not dims[i].dim_param]
    if fixed:
        raise VitCompressError(
            f"the exporter fixed input axis {fixed[0]} to {dims[fixed[0]].dim_value} (the model's forward "
            "turns that size into a constant); this model cannot be exported with a dynamic axis there"
        )


def _metadata(
    meta,
    model: nn.Module,
    precision: str,
    batch: Profile,
    img: Profile | None,
    dynamic_size: bool,
    opset: int,
    source_label: str,
    runtime_keep: bool = False,
    patch: int | None = None,
) -> dict[str, str]:
    import vitcompress
    from vitcompress.counting import count

    from .runtime_keep import metadata as runtime_keep_meta

    macs = (meta.counts or {}).get("macs")
    if macs is None:
        macs = count(model).macs
    data = {
        "source": meta.source.to_dict(),
        "spec": meta.spec.to_dict(),
        "tokens": meta.tokens,
        "macs": macs,
        "counts": meta.counts,
        "counts_source": meta.counts_source,
        "plan": meta.plan.to_dict() if meta.plan is not None else None,
        "export": {
            "precision": precision,
            "opset": opset,
            "dynamic_size": dynamic_size,
            "batch": batch.to_dict(),
            "img_size": img.to_dict() if img else None,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "artifact": source_label,
            "patch_size": patch,
            "runtime_keep": runtime_keep_meta() if runtime_keep else None,
            "vitcompress_version": vitcompress.__version__,
        },
    }
    return {META_PREFIX + k: json.dumps(v) for k, v in data.items()}


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The ``vitcompress.*`` metadata of an exported file, JSON-decoded (without loading weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(META_PREFIX) :]: json.loads(p.value) for p in proto.metadata_props if p.key.startswith(META_PREFIX)
    }


def _weight_bytes(proto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def _save(proto, path: Path, data_name: str | None) -> None:
    """Write ``proto`` to ``path``; with ``data_name``, every tensor above 1 KiB goes to the side
    file ``data_name`` next to it (the ``location`` the file refers to)."""
    import onnx

    if data_name:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(path))


def _data_name(output: Path) -> str:
    """A side-file name no earlier export used: ``<output>.<8 hex digits>.data``."""
    while True:
        name = f"{output.name}.{secrets.token_hex(4)}.data"
        if not os.path.lexists(output.parent / name):
            return name


def _external_locations(path: Path) -> set[str]:
    """The external-data files an existing ONNX file refers to (empty where it is unreadable)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    out: set[str] = set()

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    for t in tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return out


def _install(tmp_path: Path, data_name: str | None, output: Path) -> None:
    """Move a checked file (and its side file) from the temporary folder onto ``output``.

    The side file has a name no other file uses (``_data_name``) and is moved first: until the
    ``.onnx`` rename, the old file still refers to its own, untouched side file; the ``.onnx``
    rename switches to the new pair in one step. Then the side files the old file referred to are
    deleted (only ``<output>.*data`` siblings). A crash at any point leaves a consistent pair,
    at worst plus one unreferenced side file."""
    # the old file is parsed (without its weights) only where side files of its name exist
    siblings = list(output.parent.glob(glob.escape(output.name) + ".*data"))
    old = _external_locations(output) if siblings and output.is_file() else set()
    moved = None
    try:
        if data_name:
            moved = output.parent / data_name
            os.replace(tmp_path.parent / data_name, moved)
        os.replace(tmp_path, output)
    except BaseException:
        if moved is not None:
            moved.unlink(missing_ok=True)
        raise
    for loc in old - {data_name}:
        if Path(loc).name == loc and loc.startswith(output.name + ".") and loc.endswith(".data"):
            (output.parent / loc).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ export
def export_onnx(
    model_or_artifact_path: str | os.PathLike | nn.Module,
    output: str | os.PathLike,
    *,
    batch: ProfileLike = (1, 8, 32),
    dynamic_size: bool = False,
    img_size: ProfileLike = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    tolerance: float | None = None,
    external_data: bool | None = None,
    seed: int = 0,
    progress: bool = False,
    runtime_keep: bool = False,
) -> ExportResult:
    """Export an artifact folder or a timm ViT module to ONNX, clean it, check it, write it.

    ``batch`` is a MIN:OPT:MAX profile (the batch axis is always dynamic); with ``dynamic_size``
    height and width are dynamic too and ``img_size`` (MIN:OPT:MAX image side, multiples of the
    patch size; default half to 1.5x the native side) sets the checked sizes. ``precision`` fp32 or
    fp16 (weights and activations). The parity check (``check``) runs ONNX Runtime on CPU against
    PyTorch at three distinct batch sizes (MIN, OPT and MAX capped at 16, padded where they
    coincide: ``profiles.parity_batches``) and, with ``dynamic_size``, a second image size; above
    the tolerance (``tolerance`` or ``parity.TOLERANCE``) it raises ``VitCompressError`` and writes
    nothing (folders it created for ``output`` are removed again). ``external_data`` (default:
    automatic above ~1.8 GB of weights) stores the weights in a side file
    ``<output>.<8 hex digits>.data`` named inside the ONNX file (``ExportResult.external_data``).
    The written file is replaced atomically, side file included (``_install``).

    ``runtime_keep`` (keep/rate schedules of topk, topk-vpa, evit, etps) adds the input
    ``keep_rate`` (``[1]`` float32): every reducing block keeps ``ceil(keep_rate * n)`` of its ``n``
    patch tokens, keep_rate rounded to 1/1000 (``exporters.runtime_keep``). Parity then runs every
    shape at two keep rates: the schedule's own and 0.5 (0.8 when the own is 0.5).
    """
    from tqdm.auto import tqdm

    from .cleanup import cleanup, node_count
    from .outputs import created_dirs
    from .parity import check_parity

    t_start = time.perf_counter()
    if precision not in PRECISIONS:
        raise VitCompressError(f"precision {precision!r} is not supported; use one of {', '.join(PRECISIONS)}")
    if not 17 <= int(opset) <= 23:
        raise VitCompressError(f"opset {opset} is outside 17..23; use the default {DEFAULT_OPSET}")
    batch_p = parse_profile(batch, "batch")
    img_p = parse_profile(img_size, "img-size") if img_size is not None else None
    if img_p is not None and not dynamic_size and img_p.min != img_p.max:
        raise VitCompressError("an --img-size range needs --dynamic-size; add --dynamic-size or pass one size")
    output = Path(output)
    if output.is_dir():
        raise VitCompressError(f"output {str(output)!r} is a folder; pass a file path such as {output / 'model.onnx'}")

    timings: dict[str, float] = {}
    steps = None

    def step(name: str, t0: float) -> float:
        nonlocal steps
        t1 = time.perf_counter()
        timings[name] = round(t1 - t0, 3)
        if steps is None:  # the bar starts once the inputs are validated and the model is loaded
            # disable=None: shown on terminals only, so logs and captured output stay clean
            steps = tqdm(total=5, desc="export", disable=None if progress else True, leave=False)
        steps.set_postfix_str(name)
        steps.update(1)
        return t1

    t = time.perf_counter()
    model, meta, label = _load_source(model_or_artifact_path)
    if runtime_keep:
        from .runtime_keep import check_runtime_keep

        check_runtime_keep(model)
    patch, native, in_chans = _patch_and_size(model)
    if dynamic_size:
        img_p = img_p or default_img_profile(native, patch)
        check_img_profile(img_p, patch)
        model = _with_dynamic_size(model, meta)
    else:
        if img_p is not None and img_p.opt != native:
            raise VitCompressError(
                f"--img-size {img_p} differs from the model's input size {native}; add --dynamic-size"
            )
        img_p = None
    # after the input is known good: creates missing parent folders, and removes them again (where
    # still empty) if anything below fails, so a failed export leaves no folders behind either
    with created_dirs(output.parent):
        reference = model
        export_model = copy.deepcopy(model).half() if precision == "fp16" else model
        side = img_p.opt if img_p else native
        b = example_batch(batch_p, avoid=(side, native, in_chans))
        example = torch.randn(b, in_chans, side, side, dtype=torch.float16 if precision == "fp16" else torch.float32)
        keep = keeps = None
        if runtime_keep:
            from .runtime_keep import RuntimeKeep, keep_tensor, parity_keeps

            keeps = parity_keeps(model)
            export_model, keep = RuntimeKeep(export_model), keep_tensor(keeps[0])
        t = step("load", t)

        try:
            proto = _export_graph(export_model, example, dynamic_size, int(opset), keep)
            _check_symbolic(proto, dynamic_size)
        except BaseException:
            steps.close()
            raise
        nodes_before = node_count(proto)
        t = step("export", t)

        proto = cleanup(proto)
        _name_dims(proto, dynamic_size)
        nodes_after = node_count(proto)
        md = _metadata(meta, model, precision, batch_p, img_p, dynamic_size, int(opset), label, runtime_keep, patch)
        for k, v in md.items():
            proto.metadata_props.add(key=k, value=v)
        external = _weight_bytes(proto) > EXTERNAL_DATA_BYTES if external_data is None else bool(external_data)
        data_name = _data_name(output) if external else None
        t = step("cleanup", t)

        tmpdir = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        report = None
        try:
            tmp_path = tmpdir / output.name
            _save(proto, tmp_path, data_name)
            del proto
            t = step("save", t)
            if check:
                shapes = [(bb, img_p.opt if img_p else native) for bb in parity_batches(batch_p)]
                for s in parity_img_sizes(img_p)[1:]:
                    shapes.append((batch_p.min, s))
                report = check_parity(
                    str(tmp_path),
                    reference,
                    shapes,
                    precision=precision,
                    tolerance=tolerance,
                    seed=seed,
                    in_chans=in_chans,
                    keeps=keeps,
                )
                if not report.ok:
                    worst = max(report.cases, key=lambda c: c.max_rel)
                    at_keep = f", keep_rate {worst.keep}" if worst.keep is not None else ""
                    raise VitCompressError(
                        f"parity check failed: max relative error {worst.max_rel:.3e} at batch {worst.batch}, "
                        f"image {worst.img_size}{at_keep} exceeds {report.tolerance:.0e} ({precision}); "
                        "nothing was written, report the model to the maintainers or relax --tolerance"
                    )
            t = step("parity", t)
            _install(tmp_path, data_name, output)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            steps.close()
        data_path = output.parent / data_name if data_name else None
        size = output.stat().st_size + (data_path.stat().st_size if data_path else 0)
        return ExportResult(
            path=output,
            parity=report,
            nodes_before=nodes_before,
            nodes_after=nodes_after,
            metadata={k[len(META_PREFIX) :]: json.loads(v) for k, v in md.items()},
            precision=precision,
            opset=int(opset),
            batch=batch_p,
            img_size=img_p,
            dynamic_size=dynamic_size,
            input_name=INPUT_NAME,
            runtime_keep=bool(runtime_keep),
            external_data=data_path,
            size_bytes=size,
            seconds=round(time.perf_counter() - t_start, 3),
            timings=timings,
        )
