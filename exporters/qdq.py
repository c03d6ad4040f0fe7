"""ONNX for fake-quantized layers: ``vitcompress::qdq`` as QuantizeLinear/DequantizeLinear.

``torch.onnx.export`` translates each ``vitcompress::qdq`` operator (``vitcompress.quantize``) with
``TRANSLATIONS``: a QuantizeLinear/DequantizeLinear pair on the same constant scale (per tensor,
or per output channel along ``axis`` for weights) with a constant zero point of 0 typed INT8 or
FLOAT8E4M3FN, the explicit quantization TensorRT builds INT8/FP8 layers from (``trt_check``
checks those rules). Quantized graphs are checked against the fake-quantized PyTorch model with
``TOLERANCE[precision]`` (``max_rel``, ``exporters.precision``): ONNX Runtime computes INT8
layers with integer arithmetic and rounds a value sitting on a rounding boundary either way, one
quantization step that later layers carry along.
"""

from __future__ import annotations

import torch
from onnx import TensorProto, helper
from onnxscript import opset20 as op

from vitcompress.quantizers import PRECISIONS  # noqa: F401  (registers the vitcompress::qdq operator)

#: ``max_rel`` limit of a quantized graph against the fake-quantized model, per quantized precision
TOLERANCE = {"int8": 5e-2, "fp8": 1e-1}


def qdq_onnx(x, scale, axis: int, fp8: bool):
    """The ONNX of one ``vitcompress::qdq``: QuantizeLinear then DequantizeLinear, zero point 0."""
    shape = [int(d) for d in scale.shape]
    n = shape[0] if shape else 1
    kind = TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.INT8
    zero = op.Constant(value=helper.make_tensor("zero_point", kind, shape, [0] * n))
    kw = {"axis": axis} if axis >= 0 else {}
    return op.DequantizeLinear(op.QuantizeLinear(x, scale, zero, **kw), scale, zero, **kw)


def translations() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    return {torch.ops.vitcompress.qdq.default: qdq_onnx}
