"""Precisions and the numerical tolerance each one is checked against.

Every comparison of a deployed model with its reference (ONNX Runtime vs PyTorch, a TensorRT engine
vs ONNX Runtime, a benchmark runner vs PyTorch) uses one error measure and one table:

* ``max_abs = max |out - ref|`` and ``max_rel = max_abs / max |ref|``: the error relative to the
  output's scale (elementwise relative errors are meaningless for logits near zero);
* the check passes when ``max_rel <= TOLERANCE[key]`` and every output is finite.

``key`` is the precision the computation ran in. An fp32 computation on a GPU is checked against
``"tf32"``: TensorRT, cuDNN and cuBLAS may run fp32 matrix products with TF32 (a 10-bit mantissa,
relative error about 1e-3 per product) unless told otherwise, so an fp32 GPU result is compared with
a CPU reference at that scale, not at fp32's.
"""

from __future__ import annotations

import numpy as np

from vitcompress.errors import VitCompressError

#: Every precision the toolchain names (benchmark runners take all of them).
PRECISIONS = ("fp32", "fp16", "bf16")
#: The precisions an ONNX export and a TensorRT engine take (no bf16 ONNX export).
EXPORT_PRECISIONS = tuple(p for p in PRECISIONS if p != "bf16")

#: Limit on ``max_rel`` per precision of the computation (see the module doc).
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-3, "fp16": 1e-2, "bf16": 5e-2}


def tolerance(precision: str, device: str = "cpu") -> float:
    """The ``max_rel`` limit for a computation in ``precision`` on ``device`` ("cpu" or "cuda")."""
    if precision == "fp32" and str(device).startswith("cuda"):
        return TOLERANCE["tf32"]
    return TOLERANCE[precision]


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """``precision`` when it is one of ``allowed``, else a one-line ``VitCompressError``."""
    if precision not in allowed:
        # the same line under every command (its option may be --precision or --latency-precision)
        raise VitCompressError(f"unknown precision {precision!r}; use one of {', '.join(allowed)}", params=[])
    return precision


def relative_error(out, ref) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of ``out`` against ``ref`` (arrays of one shape; see the module doc).
    A non-finite output or reference gives ``inf`` for both."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape or not np.isfinite(out).all() or not np.isfinite(ref).all():
        return float("inf"), float("inf")  # no numpy warning (inf - inf) before the parity error
    with np.errstate(all="ignore"):
        err = float(np.abs(out - ref).max(initial=0.0))
        return err, err / max(float(np.abs(ref).max(initial=0.0)), 1e-12)
