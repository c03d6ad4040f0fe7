"""Fake quantization of a model's Linear and Conv2d layers (INT8, FP8 E4M3), kept in the artifact.

A quantized layer is the same ``nn.Linear`` / ``nn.Conv2d`` (its class swapped for a subclass, so
parameter names, the spec and the counts do not change) with two buffers: ``weight_scale`` (one
scale per output channel) and ``input_scale`` (one scale for the layer's input). Its forward
rounds the input and the weight to the precision's grid and computes in float (simulated
quantization); the rounding passes gradients straight through (STE), so ``finetune`` trains
through it. ``torch.onnx.export`` writes each rounding as a QuantizeLinear/DequantizeLinear pair
on the layer's inputs (zero point 0, symmetric scales), the explicit quantization TensorRT wants.

The artifact's ``extra["quantization"]`` names the precision and the quantized layers
(``record_of``/``check_record``); ``artifact.load`` calls ``apply_quantizers`` before loading the
weights, whose file holds the calibrated scales. Calibration lives in
``vitcompress.quantization``.
"""

from __future__ import annotations

from .fake import (
    FP8_MAX,
    INT8_MAX,
    PRECISIONS,
    QuantConv2d,
    QuantLinear,
    apply_quantizers,
    check_record,
    fake_quant,
    is_quantized,
    quant_layers,
    quantizable_layers,
    record_of,
    strip_quantizers,
)

__all__ = [
    "FP8_MAX",
    "INT8_MAX",
    "PRECISIONS",
    "QuantConv2d",
    "QuantLinear",
    "apply_quantizers",
    "check_record",
    "fake_quant",
    "is_quantized",
    "quant_layers",
    "quantizable_layers",
    "record_of",
    "strip_quantizers",
]
