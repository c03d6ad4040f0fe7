"""TensorRT runner ``trt``: the export stage's ``TrtEngine`` on an engine built for the measured batch.

The engine comes from ``Variant.engine(precision, batch)``: the variant's ONNX export built with the
profile MIN 1, OPT = MAX = the measured batch, the run's one timing cache and the workspace and
optimisation level the ``ort-trt`` runner gives its execution provider, so ``trt`` and ``ort-trt``
are measured like for like. Input and output buffers are bound once during activation; ``infer``
enqueues ``execute_async_v3`` on the engine's own stream, where the timing records its CUDA events.
"""

from __future__ import annotations

import numpy as np

from vitcompress.exporters import TrtEngine, tensorrt_available

from .runners import RUNNERS, Runner


@RUNNERS.register("trt")
class TrtRunner(Runner):
    """TensorRT engine via the ``tensorrt`` Python API."""

    backend, device, timer = "trt", "cuda", "cuda"

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        if not tensorrt_available():
            return "the tensorrt Python package is not installed"
        if precision == "bf16":
            return "bf16 engines are not built by the export stage; use fp32 or fp16"
        if mode != "eager":
            return f"mode {mode!r} applies to torch runners only"
        return None

    def activate(self) -> None:
        self.engine = TrtEngine(self.variant.engine(self.precision, self.batch))
        # where TensorRT runs without CUDA (the test suite's stand-in) the buffers are host memory
        self.device = self.engine.device.type
        self.timer = "cuda" if self.device == "cuda" else "wall"
        self.stream = self.engine.stream
        self.engine.bind(self.x)
        self.infer()
        self.synchronize()

    def infer(self) -> None:
        self.engine.execute()

    def output(self) -> np.ndarray:
        self.synchronize()
        return self.engine.outputs[0].float().cpu().numpy()

    def deactivate(self) -> None:
        self.engine = self.stream = None
