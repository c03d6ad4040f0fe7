"""Run a TensorRT engine with ``execute_async_v3`` on torch CUDA tensors (device buffers)."""
from __future__ import annotations

import os
from typing import Union

import numpy as np

from .trt_build import require_tensorrt

#: TensorRT data type name -> torch dtype name
TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32",
                "INT64": "int64", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def torch_dtype(trt_dtype) -> "torch.dtype":  # noqa: F821
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

    def __init__(self, engine_path: Union[str, os.PathLike]):
        import torch

        trt = require_tensorrt()
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(engine_path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            from vitcompress.errors import VitCompressError

            raise VitCompressError(f"cannot load engine {str(engine_path)!r} (other TensorRT version or GPU?); rebuild it")
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


def engine_parity(engine_path: Union[str, os.PathLike], onnx_path: Union[str, os.PathLike],
                  shapes, *, precision: str = "fp32", tolerance: float | None = None, seed: int = 0):
    """Compare a TensorRT engine with ONNX Runtime (CPU) on random inputs of each (batch, side).

    Returns a ``ParityReport``; the tolerance on the relative error defaults to 1e-3 for fp32
    engines (TensorRT may use TF32 and other reduction orders) and 1e-2 for fp16.
    """
    import torch

    from .parity import ParityCase, ParityReport, ort_session

    tol = tolerance if tolerance is not None else (1e-3 if precision == "fp32" else 1e-2)
    runner = TrtRunner(engine_path)
    sess = ort_session(str(onnx_path))
    inp = sess.get_inputs()[0]
    dtype = np.float16 if "float16" in inp.type else np.float32
    rng = np.random.default_rng(seed)
    report = ParityReport(f"TensorRT {precision} vs ONNX Runtime", tol)
    for batch, side in shapes:
        x = rng.standard_normal((batch, 3, side, side)).astype(dtype)
        ref = np.asarray(sess.run(None, {inp.name: x})[0], dtype=np.float32)
        out = runner(torch.from_numpy(x))
        err = float(np.abs(out - ref).max())
        rel = err / max(float(np.abs(ref).max()), 1e-12)
        report.cases.append(ParityCase(batch, side, err, rel, bool(np.isfinite(out).all()) and rel <= tol))
    return report
