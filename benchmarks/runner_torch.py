"""PyTorch runners: ``torch-cpu`` and ``torch-cuda`` (fp32 / fp16 / bf16; eager, ``compile``, ``graph``).

``mode="compile"``: ``torch.compile`` with static shapes and the whole forward as one graph
(``dynamic=False, fullgraph=True``), compiled during activation. Dynamo keeps its compiled graphs per
*code object* and every timm ViT shares ``VisionTransformer.forward``'s: compiled directly, the second
variant or batch size of a run would be compiled with dynamic shapes (automatic dynamic after a
shape change) and after ``recompile_limit`` (8) entries every further one would run eagerly. So each
runner compiles its own function, a fresh code object (``compile_static``), which holds exactly one
static graph: no variant is ever timed on a dynamic-shape or eager fallback graph.

``mode="graph"`` (CUDA only) captures one forward pass into a ``torch.cuda.CUDAGraph`` with static
input/output buffers and times ``graph.replay()``.

CUDA runners enqueue everything on their own stream (``self.stream``), never on the legacy default
stream; the timing records its events there.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import types

import numpy as np
import torch

from .runners import RUNNERS, Runner

MODES = ("eager", "compile", "graph")
_ids = itertools.count()


def _dtype(precision: str):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def compile_static(model: torch.nn.Module, backend="inductor"):
    """``torch.compile`` of ``model``'s forward as a function of its own (a new code object, so its
    Dynamo cache holds this model's graph only), static shapes, one graph or an error."""

    def forward(x):
        return model(x)

    name = f"vitcompress_compiled_{next(_ids)}"
    names = {"co_name": name, **({"co_qualname": name} if hasattr(forward.__code__, "co_qualname") else {})}
    code = forward.__code__.replace(**names)
    fn = types.FunctionType(code, forward.__globals__, name, forward.__defaults__, forward.__closure__)
    return torch.compile(fn, dynamic=False, fullgraph=True, backend=backend)


class TorchRunner(Runner):
    backend = "torch"
    #: ``torch.compile`` backend of ``mode="compile"``
    compile_backend = "inductor"

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        if mode not in MODES:
            return f"unknown torch mode {mode!r} (eager, compile, graph)"
        if cls.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device visible to torch"
        if cls.device == "cpu" and precision == "fp16":
            return "fp16 matmuls are not a supported fast path on CPU; use fp32 or bf16"
        if cls.device == "cpu" and mode == "graph":
            return "CUDA-graph replay needs a CUDA device"
        return None

    def _stream_context(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def activate(self) -> None:
        dtype = _dtype(self.precision)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        else:
            self.stream = torch.cuda.Stream()
        model = copy.deepcopy(self.variant.model).eval().to(self.device, dtype)
        self.xt = torch.from_numpy(self.x).to(self.device, dtype).contiguous()
        self._model = compile_static(model, self.compile_backend) if self.mode == "compile" else model
        self._graph = None
        with torch.inference_mode(), self._stream_context():
            if self.stream is not None:
                self.stream.wait_stream(torch.cuda.current_stream())  # the input was copied there
            self.out = self._model(self.xt)  # first call: compiles / allocates
            if self.mode == "graph":
                for _ in range(3):  # warm-up on this (non-default) stream before capture
                    self._model(self.xt)
                self.stream.synchronize()
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph, stream=self.stream):
                    self.out = self._model(self.xt)
        self.synchronize()

    def infer(self) -> None:
        with self._stream_context():
            if self._graph is not None:
                self._graph.replay()
                return
            with torch.inference_mode():
                self.out = self._model(self.xt)

    def output(self) -> np.ndarray:
        self.synchronize()
        return self.out.float().cpu().numpy()

    def deactivate(self) -> None:
        self._graph = self._model = self.xt = self.out = None
        if self.device == "cuda":
            self.stream = None
            torch.cuda.empty_cache()


@RUNNERS.register("torch-cpu")
class TorchCPU(TorchRunner):
    """PyTorch on the CPU; threads fixed with ``torch.set_num_threads``; monotonic-clock timing."""

    device, timer = "cpu", "wall"


@RUNNERS.register("torch-cuda")
class TorchCUDA(TorchRunner):
    """PyTorch on the current CUDA device, on the runner's own stream; CUDA events on that stream."""

    device, timer = "cuda", "cuda"
