"""The TensorRT runner: one deserialised engine, its execution context, its own stream, bound buffers.

``TrtEngine`` is the one place that runs an engine; the export's engine parity check
(``engine_parity``) and the benchmark's ``trt`` backend (``vitcompress.benchmarks.runner_trt``) both
use it::

    eng = TrtEngine("m.engine")            # sidecar checks, deserialisation, context, own stream
    eng.bind(x)                            # input shapes (checked against the profile), buffers, addresses
    eng.execute()                          # execute_async_v3 on eng.stream (no host synchronisation)
    eng.synchronize(); eng.outputs[0]      # or simply: eng(x) -> numpy array of the first output

Loading compares the sidecar (``<engine>.json``) with this machine first: an engine loads only under
the TensorRT version that built it and on a GPU of the same compute capability, so a mismatch is one
line naming both, before TensorRT is asked (it would return ``None``, which is checked too).

Buffers live on the CUDA device where torch sees one; shape-tensor inputs (``keep_permille``, located
on the host by TensorRT: ``get_tensor_location``) always live in host memory. Work is enqueued on the
runner's own stream, never on the legacy default stream (TensorRT adds device synchronisations
there). Without CUDA (TensorRT itself cannot run then; the test suite's stand-in for TensorRT can)
buffers are host tensors and the stream is a host stand-in that runs work as it is enqueued.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vitcompress.errors import VitCompressError

from .parity import ParityReport, ort_session
from .precision import tolerance as default_tolerance
from .runtime_keep import KEEP_INPUT, feeds
from .trt_build import compute_capability, gpu_name, read_sidecar, require_tensorrt

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


def torch_dtype(trt_dtype) -> torch.dtype:
    """torch dtype of a ``tensorrt.DataType`` (by its name, so it is testable without TensorRT)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    if name not in TRT_TO_TORCH:
        raise TypeError(f"unsupported TensorRT data type {name}")
    return getattr(torch, TRT_TO_TORCH[name])


class HostStream:
    """The stream of a runner whose buffers are host memory: work runs when it is enqueued, so there
    is nothing to wait for; ``handle`` identifies the runner's stream to the engine."""

    def __init__(self):
        self.handle = id(self)

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass


def default_device() -> torch.device:
    """Where engine buffers live: the current CUDA device, or the host without CUDA."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def check_engine_host(side: dict, trt_version: str, cc: str | None, gpu: str, path) -> None:
    """One line when the engine's sidecar says it cannot load here (TensorRT version, GPU architecture)."""
    built = side.get("tensorrt_version")
    if built and built != trt_version:
        raise VitCompressError(
            f"engine {str(path)!r} was built with TensorRT {built} and this machine has TensorRT {trt_version}, "
            "which cannot load it; rebuild the engine here (export with trt=True)",
            params=["trt"],
        )
    built_cc = side.get("compute_capability")
    if built_cc and cc and built_cc != cc:
        raise VitCompressError(
            f"engine {str(path)!r} was built for compute capability {built_cc} ({side.get('gpu')}) and this GPU "
            f"({gpu}) has {cc}; rebuild the engine on this GPU (export with trt=True)",
            params=["trt"],
        )


class TrtEngine:
    """A TensorRT engine ready to run (see the module doc)."""

    def __init__(self, engine_path: str | os.PathLike, device: torch.device | str | None = None):
        trt = require_tensorrt()
        self.path = Path(engine_path)
        self.device = torch.device(device) if device is not None else default_device()
        self.sidecar = read_sidecar(self.path)
        cc = compute_capability(self.device)
        check_engine_host(self.sidecar, trt.__version__, cc, gpu_name(self.device), self.path)
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            built = self.sidecar.get("tensorrt_version", "an unknown TensorRT version")
            raise VitCompressError(
                f"TensorRT {trt.__version__} cannot load engine {str(self.path)!r} (built with {built}, compute "
                f"capability {self.sidecar.get('compute_capability', 'unknown')}; this GPU: {cc}); rebuild it here "
                "(export with trt=True)",
                params=["trt"],
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise VitCompressError(f"TensorRT could not create an execution context for {str(self.path)!r}", params=[])
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.host_inputs = {n for n in self.inputs if self.engine.get_tensor_location(n) == trt.TensorLocation.HOST}
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(device=self.device)
            self.stream_handle = int(self.stream.cuda_stream)
        else:
            self.stream = HostStream()
            self.stream_handle = self.stream.handle
        self.buffers: dict[str, torch.Tensor] = {}
        self.outputs: list[torch.Tensor] = []

    # ----------------------------------------------------------------------------- binding
    def _set_shape(self, name: str, shape: tuple) -> None:
        if self.context.set_input_shape(name, shape):
            return
        lo, opt, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0))
        raise VitCompressError(
            f"input {name!r} of shape {shape} is outside optimisation profile 0 of engine {str(self.path)!r} "
            f"(min {lo}, opt {opt}, max {hi}); run it inside the profile or rebuild it with a batch and img_size "
            "that cover this shape",
            params=["batch", "img_size"],
        )

    def _check_values(self, name: str, values: np.ndarray) -> None:
        keep = self.sidecar.get("profile", {}).get(name)
        if keep and any(not keep["min"] <= int(v) <= keep["max"] for v in values.reshape(-1)):
            raise VitCompressError(
                f"input {name!r} = {values.reshape(-1).tolist()} is outside optimisation profile 0 of engine "
                f"{str(self.path)!r} ({keep['min']}..{keep['max']}); rebuild it with a keep_permille covering it",
                params=["keep_permille"],
            )

    def bind(self, x, extras: Mapping[str, np.ndarray] | None = None) -> None:
        """Copy ``x`` (NCHW, numpy or torch) to the device as the image input, bind the other inputs
        from ``extras`` (by name; shape-tensor inputs in host memory), allocate the outputs at the
        shapes the context resolves and set every tensor address.

        The order is NvInferRuntime.h's: every input shape and the (host) address of every input that
        shape inference reads (``is_shape_inference_io``: ``keep_permille``) first, then
        ``infer_shapes()`` must name nothing missing, and only then are the output shapes read."""
        extras = dict(extras or {})
        self.buffers = {}
        for name in self.inputs:
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            if name == self.inputs[0]:
                value = torch.as_tensor(x)
            elif name in extras:
                value = torch.as_tensor(np.asarray(extras.pop(name)))
            else:
                raise VitCompressError(f"engine {str(self.path)!r} needs a value for its input {name!r}", params=[])
            if name in self.host_inputs:
                buf = value.to("cpu", dtype).contiguous()
                self._check_values(name, buf.numpy())
            else:
                buf = value.to(self.device, dtype).contiguous()
            self._set_shape(name, tuple(int(d) for d in buf.shape))
            self.buffers[name] = buf
            if name in self.host_inputs:  # shape inference reads its value: the address comes first
                self._set_address(name, buf)
        if extras:
            raise VitCompressError(
                f"engine {str(self.path)!r} has no input(s) {sorted(extras)}; inputs: {self.inputs}", params=[]
            )
        missing = list(self.context.infer_shapes())
        if missing:
            raise VitCompressError(
                f"TensorRT cannot infer the output shapes of engine {str(self.path)!r}: {sorted(missing)} "
                "still unspecified; report it (the runner sets every input shape and shape-input value first)",
                params=[],
            )
        self.outputs = []
        for name in self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise VitCompressError(f"TensorRT could not resolve the shape of output {name!r} ({shape})", params=[])
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.outputs.append(self.buffers[name])
        for name, buf in self.buffers.items():
            if name not in self.host_inputs:
                self._set_address(name, buf)

    def _set_address(self, name: str, buf: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, buf.data_ptr()):
            raise VitCompressError(f"TensorRT refused the address of tensor {name!r}", params=[])

    # ----------------------------------------------------------------------------- running
    def execute(self) -> None:
        """Enqueue one inference on the runner's stream (bound buffers; no host synchronisation)."""
        if not self.context.execute_async_v3(self.stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path.name} (see the TensorRT log)")

    def synchronize(self) -> None:
        self.stream.synchronize()

    def __call__(self, x, extras: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Run once and return the first output as float32 numpy."""
        self.bind(x, extras)
        if self.device.type == "cuda":  # the inputs were copied on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.execute()
        self.synchronize()
        return self.outputs[0].float().cpu().numpy()


def parity_inputs(
    input_shape: Sequence, shapes: Sequence[tuple[int, int | None]], dtype=np.float32, seed: int = 0
) -> list[np.ndarray]:
    """Random NCHW inputs for the engine parity check, one per ``(batch, side)`` of ``shapes``.

    ``input_shape`` is the image input's shape as the ONNX file or the engine states it: an
    integer on a static axis, a name, ``None`` or ``-1`` on a dynamic one. The batch axis takes
    ``batch``; the channel count and a static height/width come from ``input_shape`` (a
    1-channel model gets 1-channel inputs); a dynamic height/width takes ``side``.
    """
    dims = [
        int(d) if isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 else None for d in input_shape
    ]
    if len(dims) != 4:
        raise VitCompressError(
            f"expected an NCHW image input, the engine input has shape {list(input_shape)}", params=[]
        )
    if dims[1] is None:
        raise VitCompressError(
            "the image input has a dynamic channel axis; export it with a fixed channel count", params=[]
        )
    rng = np.random.default_rng(seed)
    out = []
    for batch, side in shapes:
        hw = []
        for d in dims[2:]:
            if d is None and side is None:
                raise VitCompressError(
                    "the image input has a dynamic height/width; give the parity check an image side", params=[]
                )
            if d is not None and side is not None and side != d:
                raise VitCompressError(
                    f"image side {side} differs from the input's fixed size {d}; check this engine at its own size",
                    params=[],
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
    keeps: Sequence[float] | None = None,
) -> ParityReport:
    """Compare a TensorRT engine with ONNX Runtime (CPU) on random inputs of each (batch, side).

    The inputs (``parity_inputs``) take the channel count and any static size from the ONNX
    file's image input; a runtime-keep engine is run at each of ``keeps`` (its ``keep_permille``
    input). The tolerance on the relative error defaults to ``precision.tolerance(precision,
    device)``: an fp32 engine on a GPU is held to TF32's (TensorRT may use TF32), fp16 to fp16's."""
    engine = TrtEngine(engine_path)
    tol = tolerance if tolerance is not None else default_tolerance(precision, engine.device.type)
    sess = ort_session(str(onnx_path))
    inp = sess.get_inputs()[0]
    has_keep = any(i.name == KEEP_INPUT for i in sess.get_inputs())
    dtype = np.float16 if "float16" in inp.type else np.float32
    report = ParityReport(precision, tol, title="TensorRT engine vs ONNX Runtime")
    for x in parity_inputs(inp.shape, shapes, dtype, seed):
        for keep in (keeps or [None]) if has_keep else [None]:
            extra = feeds(keep)
            ref = np.asarray(sess.run(None, {inp.name: x, **extra})[0], dtype=np.float32)
            out = engine(torch.from_numpy(x), extra)
            report.add(x.shape[0], x.shape[2], out, ref, keep)
    return report
