"""Numerical parity of an exported ONNX file against the PyTorch model, in ONNX Runtime on CPU.

Error measures and tolerances: ``exporters.precision`` (``max_rel = max |onnx - torch| / max |torch|``
per checked shape, limit ``TOLERANCE[precision]``). An fp16 graph runs in ONNX Runtime with fp16
inputs and is compared with the fp32 PyTorch model fed the same fp16-rounded inputs, so the
tolerance covers fp16 arithmetic in every layer.

A runtime-keep graph (second input ``keep_permille``, ``exporters.runtime_keep``) is checked at every
shape for each keep rate, against a copy of the model with that keep rate set on every reducer
(``tokens.set_keep``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .precision import TOLERANCE, relative_error
from .runtime_keep import feeds


@dataclass
class ParityCase:
    """Errors at one input shape."""

    batch: int
    img_size: int
    max_abs: float
    max_rel: float
    ok: bool
    keep: float | None = None  # the keep rate fed to a runtime-keep graph


@dataclass
class ParityReport:
    """All checked shapes, the tolerance on the relative error and the verdict."""

    precision: str
    tolerance: float
    cases: list[ParityCase] = field(default_factory=list)
    title: str = "ONNX Runtime CPU vs PyTorch"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.cases), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.cases), default=0.0)

    def add(self, batch: int, img_size: int, out, ref, keep: float | None = None) -> ParityCase:
        """Compare one output with its reference and record the case."""
        err, rel = relative_error(out, ref)
        case = ParityCase(batch, img_size, err, rel, bool(rel <= self.tolerance), keep)
        self.cases.append(case)
        return case

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "precision": self.precision,
            "tolerance": self.tolerance,
            "ok": self.ok,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cases": [asdict(c) for c in self.cases],
        }

    def format(self) -> str:
        """A small table: one line per shape plus the verdict."""
        lines = [f"parity ({self.title}, {self.precision}, tolerance rel {self.tolerance:.0e}):"]
        for c in self.cases:
            keep = f"  keep {c.keep:.3f}" if c.keep is not None else ""
            lines.append(
                f"  batch {c.batch:>3}  image {c.img_size:>4}{keep}  max abs {c.max_abs:.3e}  "
                f"max rel {c.max_rel:.3e}  {'ok' if c.ok else 'FAIL'}"
            )
        lines.append(f"  {'passed' if self.ok else 'FAILED'}: max rel {self.max_rel:.3e}")
        return "\n".join(lines)


def ort_session(path: str, threads: int | None = None):
    """A CPU ONNX Runtime session (external data is resolved next to ``path``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(
    onnx_path: str,
    reference: nn.Module | Mapping[float | None, nn.Module],
    shapes: Sequence[tuple[int, int]],
    *,
    precision: str = "fp32",
    tolerance: float | None = None,
    seed: int = 0,
    in_chans: int = 3,
) -> ParityReport:
    """Run ``onnx_path`` and the fp32 ``reference`` on fresh random images of each (batch, side).

    ``reference``: the PyTorch model, or for a runtime-keep graph a mapping keep rate -> the model
    with that keep rate set (``runtime_keep.with_keep``); every shape is checked at each keep rate,
    fed as the graph's ``keep_permille`` input."""
    tol = TOLERANCE[precision] if tolerance is None else float(tolerance)
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    refs = dict(reference) if isinstance(reference, Mapping) else {None: reference}
    gen = torch.Generator().manual_seed(seed)
    report = ParityReport(precision, tol)
    for batch, side in shapes:
        x = torch.randn(batch, in_chans, side, side, generator=gen)
        if precision == "fp16":
            x = x.half()
        for keep, model in refs.items():
            with torch.inference_mode():
                ref = model(x.float()).float().numpy()
            out = np.asarray(sess.run(None, {name: x.numpy(), **feeds(keep)})[0], dtype=np.float32)
            report.add(batch, side, out, ref, keep)
    return report
