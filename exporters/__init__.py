"""Export stage: ONNX with dynamic axes, graph clean-up, parity checks, TensorRT engines.

Installed as ``vitcompress.exporters``; stands on ``vitcompress`` (it reads artifacts)::

    export_onnx(artifact_or_model, "model.onnx", batch=(1, 8, 32), dynamic_size=False,
                img_size=None, precision="fp32", opset=20, check=True) -> ExportResult
    export_onnx(token_reduced_model, "m.onnx", runtime_keep=True)      # + input keep_rate [1] float32
    check_tensorrt(onnx_path, batch=..., img_size=...) -> CompatReport   # CPU, no TensorRT needed
    build_engine(onnx_path, engine_path, ...) -> dict (sidecar)           # needs tensorrt
    TrtRunner(engine_path)(x)                                             # needs tensorrt + CUDA

Heavy backends (onnxruntime, onnx_graphsurgeon, tensorrt) are imported inside functions.
"""

from __future__ import annotations

if __name__ != "vitcompress.exporters":  # the folder is linked into the package: one file, one module name
    raise ImportError("import this package as vitcompress.exporters, not by its folder name")

from .onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, ExportResult, export_onnx, read_onnx_metadata
from .parity import TOLERANCE, ParityCase, ParityReport, check_parity
from .profiles import Profile, parse_profile
from .trt_build import BuildConfig, build_engine, tensorrt_available
from .trt_check import CompatIssue, CompatReport, check_tensorrt

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TOLERANCE",
    "BuildConfig",
    "CompatIssue",
    "CompatReport",
    "ExportResult",
    "ParityCase",
    "ParityReport",
    "Profile",
    "build_engine",
    "check_parity",
    "check_tensorrt",
    "export_onnx",
    "parse_profile",
    "read_onnx_metadata",
    "tensorrt_available",
]
