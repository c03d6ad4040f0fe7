"""PyTorch runners: ``torch-cpu`` and ``torch-cuda`` (fp32 / fp16 / bf16; eager, ``compile``, ``graph``).

``mode="compile"`` wraps the model in ``torch.compile`` (compiled during activation);
``mode="graph"`` (CUDA only) captures one forward pass into a ``torch.cuda.CUDAGraph`` with
static input/output buffers and times ``graph.replay()``.
"""

from __future__ import annotations

import copy

import numpy as np

from .runners import RUNNERS, Runner

MODES = ("eager", "compile", "graph")


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class TorchRunner(Runner):
    backend = "torch"

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        import torch

        if mode not in MODES:
            return f"unknown torch mode {mode!r} (eager, compile, graph)"
        if cls.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        if cls.device == "cpu" and precision == "fp16":
            return "fp16 matmuls are not a supported fast path on CPU; use fp32 or bf16"
        if cls.device == "cpu" and mode == "graph":
            return "CUDA-graph replay needs a CUDA device"
        return None

    def activate(self) -> None:
        import torch

        self._torch = torch
        dtype = _dtype(self.precision)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        model = copy.deepcopy(self.variant.model).eval().to(self.device, dtype)
        self.xt = torch.from_numpy(self.x).to(self.device, dtype).contiguous()
        self._model = torch.compile(model) if self.mode == "compile" else model
        self._graph = None
        with torch.inference_mode():
            self.out = self._model(self.xt)  # first call: compiles / allocates
            if self.mode == "graph":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self._model(self.xt)
                torch.cuda.current_stream().wait_stream(side)
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self.out = self._model(self.xt)
        self.synchronize()

    def infer(self) -> None:
        if self._graph is not None:
            self._graph.replay()
            return
        with self._torch.inference_mode():
            self.out = self._model(self.xt)

    def output(self) -> np.ndarray:
        self.synchronize()
        return self.out.float().cpu().numpy()

    def deactivate(self) -> None:
        self._graph = self._model = self.xt = self.out = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


@RUNNERS.register("torch-cpu")
class TorchCPU(TorchRunner):
    """PyTorch on the CPU; threads fixed with ``torch.set_num_threads``; monotonic-clock timing."""

    device, timer = "cpu", "wall"


@RUNNERS.register("torch-cuda")
class TorchCUDA(TorchRunner):
    """PyTorch on the current CUDA device; CUDA events on the current stream."""

    device, timer = "cuda", "cuda"
