"""Benchmark runners: the base class, the variant under test and the backend registry.

A runner is built for one variant, one batch size and one precision::

    with get_runner("ort-cpu")(variant, batch=8, precision="fp32", threads=2) as r:
        r.infer()          # one forward pass on the input already on the device
        y = r.output()     # last output as a float32 numpy array (for parity checks)

``activate`` (``__enter__``) does everything that must stay out of the timing: session / engine
creation, moving weights and the input to the device, ``torch.compile`` or CUDA-graph capture.
``infer`` runs one forward pass; ``timer`` says how it must be timed ("cuda" = CUDA events recorded
on the runner's own ``stream``, "wall" = monotonic clock around a synchronous call). ``unavailable``
returns the reason a backend cannot run here (None when it can), so a run reports it as skipped.

The backends register themselves in ``RUNNERS`` from their own modules (``runner_torch``,
``runner_ort``, ``runner_trt``); ``benchmarks.backends`` imports them all and is where backends are
looked up, so this module never imports a runner.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitcompress.errors import VitCompressError
from vitcompress.exporters import BuildConfig, build_engine, export_onnx
from vitcompress.exporters.precision import PRECISIONS, check_precision
from vitcompress.registry import Registry

RUNNERS: Registry = Registry("backend")
#: Name of the TensorRT timing cache all engines of one run share (in the run's work folder).
TIMING_CACHE = "trt-timing.cache"
#: Builder settings that ``trt`` engines and the ``ort-trt`` execution provider share.
TRT_WORKSPACE_GIB = 4.0
TRT_OPT_LEVEL = 3


@dataclass
class Variant:
    """One model under test. ONNX files and engines are made on first use and cached in ``workdir``
    (without one: a temporary folder, deleted at the end of ``run_bench`` or with the variant)."""

    name: str
    model: Any  # nn.Module (eval mode, CPU)
    macs: int
    params: int
    img_size: tuple = (224, 224)
    in_chans: int = 3
    max_batch: int = 32
    workdir: Path | None = None
    quantized: str | None = None  # int8 or fp8 for a quantized artifact (``vitcompress.quantize``)
    _files: dict = field(default_factory=dict, repr=False)

    def _root(self) -> Path:
        if self.workdir is None:
            # a temporary folder the variant makes itself is deleted with the variant (or at exit)
            self.workdir = Path(tempfile.mkdtemp(prefix="vitcompress-bench-"))
            weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        return Path(self.workdir)

    def _dir(self) -> Path:
        d = self._root() / self.name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def timing_cache(self) -> Path:
        """The run's TensorRT timing cache file (shared by every variant in the work folder)."""
        return self._root() / TIMING_CACHE

    def onnx(self, precision: str = "fp32") -> Path:
        """Dynamic-batch ONNX export of the model (``vitcompress.exporters.export_onnx``), cached."""
        key = ("onnx", precision)
        if key not in self._files:
            path = self._dir() / f"model-{precision}.onnx"
            b = max(1, self.max_batch)
            # the variant's own work folder: a file left by an earlier run is replaced
            export_onnx(self.model, path, batch=(1, min(8, b), b), precision=precision, check=False, force=True)
            self._files[key] = path
        return self._files[key]

    def engine(self, precision: str = "fp32", batch: int = 1) -> Path:
        """TensorRT engine for one measured batch: built from ``onnx(precision)`` with the profile
        MIN 1, OPT = MAX = ``batch`` (as the ``ort-trt`` runner's execution provider is configured),
        the run's timing cache and the shared workspace/optimisation-level settings; cached."""
        key = ("engine", precision, batch)
        if key not in self._files:
            path = self._dir() / f"model-{precision}-b{batch}.engine"
            cfg = BuildConfig.make(
                batch=(1, batch, batch),
                precision=precision,
                workspace_gib=TRT_WORKSPACE_GIB,
                opt_level=TRT_OPT_LEVEL,
                timing_cache=str(self.timing_cache()),
            )
            build_engine(self.onnx(precision), path, cfg)
            self._files[key] = path
        return self._files[key]

    def example(self, batch: int, seed: int = 0) -> np.ndarray:
        """The fixed random input [batch, C, H, W] (float32) every runner of this variant uses."""
        g = np.random.default_rng(seed)
        return g.standard_normal((batch, self.in_chans, *self.img_size)).astype(np.float32)


class Runner:
    """Base class; subclasses implement ``activate``, ``infer``, ``output`` and ``unavailable``."""

    backend = "?"
    device = "cpu"
    timer = "wall"
    #: the stream the runner enqueues its work on (CUDA runners), where "cuda" timing records events
    stream = None

    def __init__(
        self,
        variant: Variant,
        batch: int,
        precision: str = "fp32",
        threads: int | None = None,
        mode: str = "eager",
        x: np.ndarray | None = None,
    ):
        if batch < 1:
            raise VitCompressError(f"batch must be >= 1, got {batch}", params=["batch"])
        check_precision(precision, PRECISIONS)
        self.variant, self.batch, self.precision, self.mode = variant, batch, precision, mode
        self.threads = threads or os.cpu_count() or 1
        self.x = variant.example(batch) if x is None else np.ascontiguousarray(x, dtype=np.float32)

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        """Why this backend cannot run here with these settings, or None."""
        return None

    def activate(self) -> None:
        raise NotImplementedError

    def infer(self) -> None:
        raise NotImplementedError

    def output(self) -> np.ndarray:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def synchronize(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        elif self.device == "cuda":
            torch.cuda.synchronize()

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()
