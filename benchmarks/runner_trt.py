"""TensorRT runner ``trt``: runs an engine built by the export stage with ``execute_async_v3``.

The engine comes from ``Variant.engine(precision)`` (``vitcompress.exporters.build_engine`` on the
variant's ONNX export). Input and output are torch CUDA tensors whose addresses are bound once
with ``set_tensor_address`` during activation; ``infer`` enqueues on the current torch stream and
is timed with CUDA events on that stream.
"""

from __future__ import annotations

import numpy as np

from .runners import RUNNERS, Runner


@RUNNERS.register("trt")
class TrtRunner(Runner):
    """TensorRT engine via the ``tensorrt`` Python API."""

    backend, device, timer = "trt", "cuda", "cuda"

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        from vitcompress.exporters import tensorrt_available

        if not tensorrt_available():
            return "the tensorrt Python package is not installed"
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        if precision == "bf16":
            return "bf16 engines are not built by the export stage; use fp32 or fp16"
        if mode != "eager":
            return f"mode {mode!r} applies to torch runners only"
        return None

    def activate(self) -> None:
        import tensorrt as trt
        import torch

        from vitcompress.exporters.trt_runner import torch_dtype

        self._torch = torch
        path = self.variant.engine(self.precision)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        name = inputs[0]
        self.xt = torch.from_numpy(self.x).to("cuda", torch_dtype(self.engine.get_tensor_dtype(name))).contiguous()
        self.context.set_input_shape(name, tuple(self.xt.shape))
        self.context.set_tensor_address(name, self.xt.data_ptr())
        self.outs = []
        for out in outputs:
            buf = torch.empty(
                tuple(self.context.get_tensor_shape(out)),
                dtype=torch_dtype(self.engine.get_tensor_dtype(out)),
                device="cuda",
            )
            self.context.set_tensor_address(out, buf.data_ptr())
            self.outs.append(buf)
        self.infer()
        torch.cuda.synchronize()

    def infer(self) -> None:
        if not self.context.execute_async_v3(self._torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def output(self) -> np.ndarray:
        self._torch.cuda.synchronize()
        return self.outs[0].float().cpu().numpy()

    def deactivate(self) -> None:
        self.context = self.engine = self.runtime = self.xt = self.outs = None
