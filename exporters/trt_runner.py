"""Run a TensorRT engine with ``execute_async_v3`` on torch CUDA tensors (device buffers)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import numpy as np

from .trt_build import require_tensorrt

#: TensorRT data type name -> torch dtype name
TRT_TO_TORCH = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def torch_dtype(trt_dtype) -> torch.dtype:  # noqa: F821
    """torch dtype of a ``tensorrt.DataType`` (by its name, so it is testable without TensorRT)."""
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in TRT_TO_TORCH:
        raise TypeError(f"unsupported TensorRT data type {name}")
    return getattr(torch, TRT_TO_TORCH[name])


class TrtRunner:
    """Load a serialised engine and run it: ``runner(x) -> np.ndarray`` of the first output.

    ``x`` is a numpy array or torch tensor [N, C, H, W] inside the engine's profile; it is copied
    to the GPU and cast to the engine's input type. Outputs are allocated per call from the
    context's resolved shapes.
    """

    def __init__(self, engine_path: str | os.PathLike):
        import torch

        trt = require_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            from vitcompress.errors import VitCompressError

            raise VitCompressError(
                f"cannot load engine {str(engine_path)!r} (other TensorRT version or GPU?); rebuild it"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.device = torch.device("cuda")

    def __call__(self, x) -> np.ndarray:
        return self.run(x)[0].float().cpu().numpy()

    def run(self, x) -> list:
        """Execute on the current CUDA stream; returns the output tensors (on the GPU)."""
        import torch

        name = self.inputs[0]
        xt = torch.as_tensor(x).to(self.device, torch_dtype(self.engine.get_tensor_dtype(name))).contiguous()
        self.context.set_input_shape(name, tuple(xt.shape))
        self.context.set_tensor_address(name, xt.data_ptr())
        outs = []
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            buf = torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(out)), device=self.device)
            self.context.set_tensor_address(out, buf.data_ptr())
            outs.append(buf)
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return outs


def parity_inputs(
    input_shape: Sequence, shapes: Sequence[tuple[int, int | None]], dtype=np.float32, seed: int = 0
) -> list[np.ndarray]:
    """Random NCHW inputs for the engine parity check, one per ``(batch, side)`` of ``shapes``.

    ``input_shape`` is the image input's shape as the ONNX file or the engine states it: an
    integer on a static axis, a name, ``None`` or ``-1`` on a dynamic one. The batch axis takes
    ``batch``; the channel count and a static height/width come from ``input_shape`` (a
    1-channel model gets 1-channel inputs); a dynamic height/width takes ``side``.
    """
    from vitcompress.errors import VitCompressError

    dims = [
        int(d) if isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 else None for d in input_shape
    ]
    if len(dims) != 4:
        raise VitCompressError(f"expected an NCHW image input, the engine input has shape {list(input_shape)}")
    if dims[1] is None:
        raise VitCompressError("the image input has a dynamic channel axis; export it with a fixed channel count")
    rng = np.random.default_rng(seed)
    out = []
    for batch, side in shapes:
        hw = []
        for d in dims[2:]:
            if d is None and side is None:
                raise VitCompressError(
                    "the image input has a dynamic height/width; give the parity check an image side"
                )
            if d is not None and side is not None and side != d:
                raise VitCompressError(
                    f"image side {side} differs from the input's fixed size {d}; check this engine at its own size"
                )
            hw.append(d if d is not None else side)
        out.append(rng.standard_normal((batch, dims[1], *hw)).astype(dtype))
    return out


def engine_parity(
    engine_path: str | os.PathLike,
    onnx_path: str | os.PathLike,
    shapes,
    *,
    precision: str = "fp32",
    tolerance: float | None = None,
    seed: int = 0,
):
    """Compare a TensorRT engine with ONNX Runtime (CPU) on random inputs of each (batch, side).

    The inputs (``parity_inputs``) take the channel count and any static size from the ONNX
    file's image input. Returns a ``ParityReport``; the tolerance on the relative error defaults to
    1e-3 for fp32 engines (TensorRT may use TF32 and other reduction orders) and 1e-2 for fp16.
    """
    import torch

    from .parity import ParityCase, ParityReport, ort_session

    tol = tolerance if tolerance is not None else (1e-3 if precision == "fp32" else 1e-2)
    runner = TrtRunner(engine_path)
    sess = ort_session(str(onnx_path))
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    report = ParityReport(f"TensorRT {precision} vs ONNX Runtime", tol)
    for x in parity_inputs(inp.shape, shapes, dtype, seed):
        ref = np.asarray(sess.run(None, {inp.name: x})[0], dtype=np.float32)
        out = runner(torch.from_numpy(x))
        if out.shape != ref.shape:
            report.cases.append(ParityCase(x.shape[0], x.shape[2], float("inf"), float("inf"), False))
            continue
        err = float(np.abs(out - ref).max())
        rel = err / max(float(np.abs(ref).max()), 1e-12)
        report.cases.append(ParityCase(x.shape[0], x.shape[2], err, rel, bool(np.isfinite(out).all()) and rel <= tol))
    return report
