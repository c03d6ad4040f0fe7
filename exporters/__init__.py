"""Export stage: ONNX with dynamic axes, graph clean-up, parity checks, TensorRT engines.

Installed as ``vitcompress.exporters``; stands on ``vitcompress`` (it reads artifacts)::

    export_onnx(artifact_or_model, "model.onnx", batch=(1, 8, 32), dynamic_size=False,
                img_size=None, precision="fp32", opset=20, check=True) -> ExportResult
    export_onnx(token_reduced_model, "m.onnx", runtime_keep=True)   # + input keep_permille [1] int64
    check_tensorrt(onnx_path, {"pixel_values": max_shape}) -> CompatReport   # CPU, no TensorRT needed
    build_engine(onnx_path, engine_path, BuildConfig(batch="1:8:32", ...)) -> dict (sidecar)   # needs tensorrt
    TrtEngine(engine_path)(x)                                             # needs tensorrt (+ CUDA)
    vitcompress.exporters.export.export(artifact, output, ExportConfig(...), BuildConfig(...), trt=True)
                                           # the `vitcompress export` steps (or the fields as keywords)

Heavy backends (onnxruntime, onnx_graphsurgeon, tensorrt) are imported inside functions.
"""

from __future__ import annotations

if __name__ != "vitcompress.exporters":  # the folder is linked into the package: one file, one module name
    raise ImportError("import this package as vitcompress.exporters, not by its folder name")

from .onnx_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportConfig,
    ExportResult,
    export_onnx,
    read_onnx_metadata,
)
from .parity import ParityCase, ParityReport, check_parity
from .precision import EXPORT_PRECISIONS, PRECISIONS, TOLERANCE, relative_error, tolerance
from .profiles import Profile, parse_profile
from .trt_build import BuildConfig, build_engine, tensorrt_available
from .trt_check import CompatIssue, CompatReport, check_tensorrt
from .trt_runner import TrtEngine, engine_parity

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_PRECISIONS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PRECISIONS",
    "TOLERANCE",
    "BuildConfig",
    "CompatIssue",
    "CompatReport",
    "ExportConfig",
    "ExportResult",
    "ParityCase",
    "ParityReport",
    "Profile",
    "TrtEngine",
    "build_engine",
    "check_parity",
    "check_tensorrt",
    "engine_parity",
    "export_onnx",
    "parse_profile",
    "read_onnx_metadata",
    "relative_error",
    "tensorrt_available",
    "tolerance",
]
