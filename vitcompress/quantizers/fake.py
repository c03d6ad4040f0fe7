"""Fake-quantized Linear and Conv2d layers; see the package docstring."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitCompressError
from ..spec import RecordError

PRECISIONS = ("int8", "fp8")
INT8_MAX = 127.0  # symmetric INT8: scale = amax / 127, zero point 0, values rounded and clamped to [-128, 127]
FP8_MAX = 448.0  # the largest finite FP8 E4M3 (float8_e4m3fn) value: scale = amax / 448
RECORD = "quantization"

Observer = Callable[[nn.Module, torch.Tensor], None]


def fake_quant(x: torch.Tensor, scale: torch.Tensor, precision: str, axis: int | None = None) -> torch.Tensor:
    """``x`` rounded to the ``precision`` grid of ``scale`` (per tensor, or per channel along
    ``axis``) and scaled back, in ``x``'s dtype. INT8 uses torch's fake-quantize operators
    (clipped straight-through gradient; exported as QuantizeLinear/DequantizeLinear); FP8 E4M3
    rounds through ``torch.float8_e4m3fn`` with a straight-through gradient. Under
    ``torch.export`` the rounding is one ``vitcompress::qdq`` operator, which the ONNX exporter
    writes as a QuantizeLinear/DequantizeLinear pair (``vitcompress.exporters.qdq``)."""
    if torch.compiler.is_exporting():
        return torch.ops.vitcompress.qdq(x, scale, -1 if axis is None else axis, precision == "fp8")
    return _rounded(x, scale, precision, axis)


def _rounded(x: torch.Tensor, scale: torch.Tensor, precision: str, axis: int | None) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    if precision == "int8":
        if axis is None:
            zp = torch.zeros((), dtype=torch.int32, device=x.device)
            y = torch.fake_quantize_per_tensor_affine(xf, scale, zp, -128, 127)
        else:
            zp = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
            y = torch.fake_quantize_per_channel_affine(xf, scale, zp, axis, -128, 127)
        return y.to(dtype)
    shape = [1] * xf.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.reshape(shape) if axis is not None else scale
    q = (xf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
    return (xf + (q - xf).detach()).to(dtype)


@torch.library.custom_op("vitcompress::qdq", mutates_args=())
def _qdq(x: torch.Tensor, scale: torch.Tensor, axis: int, fp8: bool) -> torch.Tensor:
    """``fake_quant`` as one operator for ``torch.export`` (axis -1: one scale for the tensor)."""
    return _rounded(x, scale, "fp8" if fp8 else "int8", None if axis < 0 else axis).clone()


@_qdq.register_fake
def _qdq_shape(x: torch.Tensor, scale: torch.Tensor, axis: int, fp8: bool) -> torch.Tensor:
    return torch.empty_like(x)


class _Quantized:
    """What QuantLinear and QuantConv2d share: the precision, the observer used by calibration."""

    quant_precision: str
    quant_observer: Observer | None
    input_scale: torch.Tensor
    weight_scale: torch.Tensor
    weight: torch.Tensor

    def _quant_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.quant_precision
        return fake_quant(x, self.input_scale, p), fake_quant(self.weight, self.weight_scale, p, axis=0)


class QuantLinear(_Quantized, nn.Linear):
    """``nn.Linear`` whose input and weight are fake-quantized (see the package docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_observer is not None:
            self.quant_observer(self, x)
            return F.linear(x, self.weight, self.bias)
        xq, wq = self._quant_inputs(x)
        return F.linear(xq, wq, self.bias)


class QuantConv2d(_Quantized, nn.Conv2d):
    """``nn.Conv2d`` whose input and weight are fake-quantized (see the package docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_observer is not None:
            self.quant_observer(self, x)
            return self._conv_forward(x, self.weight, self.bias)
        xq, wq = self._quant_inputs(x)
        return self._conv_forward(xq, wq, self.bias)


_SWAP: dict[type, type] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def _plain(m: nn.Module) -> type | None:
    """The quantized class for a plain Linear/Conv2d module (None for anything else)."""
    return _SWAP.get(type(m))


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The fake-quantized layers of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _Quantized)}


def is_quantized(model: nn.Module) -> bool:
    return bool(quant_layers(model))


def quantizable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names of the Linear and Conv2d layers of ``model`` not matched by an ``exclude`` pattern
    (``fnmatch``: ``head``, ``blocks.0.*``, ``*.fc2``). A pattern matching no layer is an error."""
    names = [n for n, m in model.named_modules() if _plain(m) is not None]
    exclude = list(exclude)
    for pat in exclude:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            shown = ", ".join(names[:3])
            raise VitCompressError(
                f"exclude pattern {pat!r} matches no Linear or Conv2d layer of this model; layer names look like "
                f"{shown} (fnmatch patterns such as 'head' or 'blocks.0.*')",
                params=["exclude"],
            )
    return [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude)]


def apply_quantizers(model: nn.Module, layers: Iterable[str], precision: str) -> nn.Module:
    """Make the named Linear/Conv2d layers of ``model`` fake-quantized (in place), with unit scales
    until calibration or a state dict sets them. Returns ``model``."""
    if precision not in PRECISIONS:
        raise VitCompressError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}", params=["precision"])
    for name in layers:
        m = model.get_submodule(name)
        cls = _plain(m)
        if cls is None:
            raise VitCompressError(f"layer {name!r} is not a plain Linear or Conv2d layer and cannot be quantized")
        w = m.weight
        m.__class__ = cls
        m.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=w.device))
        m.register_buffer("weight_scale", torch.ones(w.shape[0], dtype=torch.float32, device=w.device))
        m.quant_precision = precision
        m.quant_observer = None
    return model


def strip_quantizers(model: nn.Module) -> nn.Module:
    """Undo ``apply_quantizers`` (in place): plain layers, scales dropped. Returns ``model``."""
    for m in quant_layers(model).values():
        for attr in ("input_scale", "weight_scale"):
            del m._buffers[attr]
        for attr in ("quant_precision", "quant_observer"):
            m.__dict__.pop(attr, None)
        m.__class__ = nn.Linear if isinstance(m, nn.Linear) else nn.Conv2d
    return model


def record_of(model: nn.Module) -> dict | None:
    """``{"precision", "layers"}`` of a fake-quantized model (None when nothing is quantized)."""
    layers = quant_layers(model)
    if not layers:
        return None
    precisions = {m.quant_precision for m in layers.values()}
    return {"precision": precisions.pop(), "layers": sorted(layers)}


def check_record(d: object, where: str = f"extra.{RECORD}") -> tuple[str, list[str]]:
    """The precision and layer names of a record's quantization entry; ``RecordError`` naming the bad field."""
    if not isinstance(d, dict):
        raise RecordError(f"{where} is not an object")
    precision = d.get("precision")
    if precision not in PRECISIONS:
        raise RecordError(f"{where}.precision is not one of {', '.join(PRECISIONS)}")
    layers = d.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(n, str) and n for n in layers):
        raise RecordError(f"{where}.layers is not a non-empty list of layer names")
    return precision, list(layers)
