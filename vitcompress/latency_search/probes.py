"""The probes a latency table is measured on: one block sublayer, the model without blocks, an empty call.

- ``SublayerProbe``: ``x [B, 1, T, D] -> x + ls(body(norm(x)))``: a block's attention sublayer
  (``norm1``, ``attn``, ``ls1``) or MLP sublayer (``norm2``, ``mlp``, ``ls2``) of any widths, built
  from the profiled model's first block (same norm, activation, biases, layer scale, q/k norm) with
  random weights (latency does not depend on weight values). The input carries a unit axis so that
  every probe takes a four-dimensional input, as the bench runners and engine profiles expect.
- The model with no blocks (``rest_model``): patch embedding or stem, prefix tokens, position
  embedding, final norm, pooling and classifier, exported like a model.
- ``EmptyProbe``: a call that does nothing but return a slice of its input: the backend's
  per-call overhead, subtracted from the sublayer figures.
- ``TokenProbe``: one block that reduces tokens with a given reducer (its own time is the probe's
  minus the attention and MLP sublayers it runs), or that block followed by one that adds the
  proportional-attention bias; exported like a model.

Torch backends run the probe modules. ONNX backends run graphs built here op for op in the pattern
the exporter produces for a block (``sublayer_graph``: ``LayerNormalization``, ``MatMul`` + ``Add``,
``Split``, ``Reshape``/``Transpose`` into heads, the q and k scaling by the square root of the
softmax scale, ``MatMul``, ``Softmax``, ``MatMul``, back to tokens, output projection, residual
``Add``; ``Gelu`` in the MLP): building a graph takes milliseconds where a traced export of the
same module takes seconds, and the profile needs hundreds. ``ProbeVariant`` is a bench ``Variant``
whose ONNX file is such a graph, so every runner of ``benchmarks`` measures the probes exactly as
it measures models.

Quantized probes (``quant``: int8 or fp8) carry the Q/DQ pairs of an exported fake-quantized model
(``vitcompress.quantize``) on every Linear/Conv input and weight: ``MatMul(DequantizeLinear(
QuantizeLinear(x)), Transpose(DequantizeLinear(QuantizeLinear(W))))``, per-tensor input scale,
per-output-channel weight scale, zero point 0; the traced probes (the model without blocks, token
probes) are traced with every Linear/Conv2d fake-quantized. Scale values do not change the latency.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from timm.layers import LayerScale, Mlp
from timm.layers.activations import GELU, GELUTanh
from torch import nn
from torch.export import Dim

from vitcompress.benchmarks.runners import Variant
from vitcompress.errors import VitCompressError
from vitcompress.exporters import DEFAULT_OPSET
from vitcompress.exporters.cleanup import cleanup
from vitcompress.exporters.qdq import translations as qdq_translations
from vitcompress.families import family_for_source
from vitcompress.layers import PrunedAttention
from vitcompress.quantizers import FP8_MAX, INT8_MAX, apply_quantizers, quantizable_layers
from vitcompress.spec import BlockSpec, SourceModel, Spec
from vitcompress.tokens.apply import apply_tokens

INPUT, OUTPUT = "x", "y"
#: the quantized precisions a probe graph can carry (Q/DQ pairs on every Linear input and weight)
QUANTIZED = ("int8", "fp8")


class SublayerProbe(nn.Module):
    """One pre-norm sublayer on ``tokens`` tokens: ``x [B, 1, T, D] -> x + ls(body(norm(x))) [B, T, D]``."""

    def __init__(self, norm: nn.Module, body: nn.Module, ls: nn.Module, tokens: int):
        super().__init__()
        self.norm, self.body, self.ls, self.tokens = norm, body, ls, int(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1, 2)
        return x + self.ls(self.body(self.norm(x)))


class EmptyProbe(nn.Module):
    """A call that returns a one-element slice of its input (the per-call overhead)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :1, :1]


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random weights (std 0.02 around 0; around 1 for norm weights, 0.1 for layer scales), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                centre = 1.0 if isinstance(m, nn.LayerNorm) and name == "weight" else 0.1 if name == "gamma" else 0.0
                p.copy_(torch.randn(p.shape, generator=g) * 0.02 + centre)
    return module.eval()


def _norm(template: nn.LayerNorm, d: int) -> nn.LayerNorm:
    return nn.LayerNorm(
        d, eps=template.eps, elementwise_affine=template.weight is not None, bias=template.bias is not None
    )


def _ls(template: nn.Module, d: int) -> nn.Module:
    return LayerScale(d, init_values=0.1) if hasattr(template, "gamma") else nn.Identity()


def attn_probe(block: nn.Module, d: int, h: int, qk: int, v: int, tokens: int, scale: float, seed: int = 0):
    """The attention sublayer of ``block``'s kind with ``h`` heads of q/k width ``qk`` and v width ``v``."""
    old = block.attn
    qk_norm = not isinstance(old.q_norm, nn.Identity)
    attn = PrunedAttention(
        d,
        h,
        qk,
        v,
        scale,
        qkv_bias=old.qkv.bias is not None,
        proj_bias=old.proj.bias is not None,
        qk_norm=qk_norm,
        norm_layer=type(old.q_norm) if qk_norm else None,
    )
    return _randomise(SublayerProbe(_norm(block.norm1, d), attn, _ls(block.ls1, d), tokens), seed)


def mlp_probe(block: nn.Module, d: int, hidden: int, tokens: int, seed: int = 0):
    """The MLP sublayer of ``block``'s kind with ``hidden`` neurons."""
    old = block.mlp
    mlp = Mlp(d, hidden, bias=(old.fc1.bias is not None, old.fc2.bias is not None))
    mlp.act = copy.deepcopy(old.act)
    return _randomise(SublayerProbe(_norm(block.norm2, d), mlp, _ls(block.ls2, d), tokens), seed)


class TokenProbe(nn.Module):
    """Blocks with a token reducer (a ``TokenBlocks``) on ``tokens`` tokens: ``x [B, 1, T, D] -> [B, T', D]``."""

    def __init__(self, blocks: nn.Module, tokens: int):
        super().__init__()
        self.blocks, self.tokens = blocks, int(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.flatten(1, 2))


def token_probe(
    source: SourceModel, block: BlockSpec, d: int, n_blocks: int, method: str, keep: float, tokens: int, seed: int = 0
) -> TokenProbe:
    """``n_blocks`` blocks of widths ``block`` whose first reduces with ``method`` keeping ``keep``
    of the patch tokens (the blocks of a model of ``source``, random weights)."""
    torch.manual_seed(seed)
    blocks = [copy.copy(block) for _ in range(n_blocks)]
    for i, b in enumerate(blocks):
        b.source_index = i
    model = family_for_source(source).build(source, Spec([d], blocks), device="cpu")
    apply_tokens(model, f"{keep:g}@0", method=method)
    return TokenProbe(model.blocks, tokens).eval()


def rest_model(source: SourceModel, d: int, seed: int = 0) -> nn.Module:
    """The model of ``source`` at embedding width ``d`` with no blocks (random weights, eval mode)."""
    torch.manual_seed(seed)
    return family_for_source(source).build(source, Spec([d], []), device="cpu").eval()


# ---------------------------------------------------------------------------------- ONNX graphs
class _Graph:
    """Nodes and initialisers of a graph under construction."""

    def __init__(self, dtype, quant: str | None = None):
        self.dtype, self.quant = dtype, quant
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def const(self, value, dtype=None) -> str:
        name = f"c{len(self.inits)}"
        arr = np.asarray(value if not isinstance(value, torch.Tensor) else value.detach().float().numpy())
        self.inits.append(numpy_helper.from_array(arr.astype(dtype or self.dtype), name))
        return name

    def shape(self, dims) -> str:
        return self.const(np.asarray(dims, dtype=np.int64), np.int64)

    def op(self, kind: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        outs = [f"t{self._n}_{i}" for i in range(outputs)]
        self._n += 1
        self.nodes.append(helper.make_node(kind, inputs, outs, **attrs))
        return outs

    def one(self, kind: str, inputs: list[str], **attrs) -> str:
        return self.op(kind, inputs, **attrs)[0]

    def qdq(self, x: str, scale, axis: int | None = None) -> str:
        """``x`` through QuantizeLinear/DequantizeLinear on ``scale`` with a zero point 0 of the
        quantized type (per tensor, or along ``axis``)."""
        scale = np.asarray(scale, dtype=np.float32)
        kind = TensorProto.FLOAT8E4M3FN if self.quant == "fp8" else TensorProto.INT8
        name = f"z{len(self.inits)}"
        self.inits.append(helper.make_tensor(name, kind, list(scale.shape), [0] * max(1, scale.size)))
        s = self.const(scale, np.float32)
        kw = {"axis": axis} if axis is not None else {}
        return self.one("DequantizeLinear", [self.one("QuantizeLinear", [x, s, name], **kw), s, name], **kw)

    def linear(self, x: str, lin: nn.Linear) -> str:
        if self.quant is not None:  # the exporter's pattern of a fake-quantized Linear
            qmax = FP8_MAX if self.quant == "fp8" else INT8_MAX
            w = lin.weight.detach().float()
            wq = self.qdq(self.const(w, np.float32), (w.abs().amax(1) / qmax).clamp_min(1e-12).numpy(), axis=0)
            y = self.one("MatMul", [self.qdq(x, 4.0 / qmax), self.one("Transpose", [wq], perm=[1, 0])])
        else:
            y = self.one("MatMul", [x, self.const(lin.weight.detach().t())])
        return self.one("Add", [y, self.const(lin.bias)]) if lin.bias is not None else y

    def norm(self, x: str, ln: nn.Module) -> str:
        if not isinstance(ln, nn.LayerNorm):
            raise VitCompressError(
                f"ONNX latency probes reproduce LayerNorm, not {type(ln).__name__}; profile on a torch backend"
            )
        inputs = [x, self.const(ln.weight if ln.weight is not None else torch.ones(ln.normalized_shape))]
        if ln.bias is not None:
            inputs.append(self.const(ln.bias))
        return self.one("LayerNormalization", inputs, axis=-1, epsilon=float(ln.eps))


def _attention(g: _Graph, x: str, attn: PrunedAttention, t: int) -> str:
    """The exporter's pattern of ``PrunedAttention`` on ``x [B, T, D]``."""
    h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
    qkv = g.linear(x, attn.qkv)
    q, k, vv = g.op("Split", [qkv, g.shape([h * qk, h * qk, h * v])], 3, axis=2)
    q = g.one("Transpose", [g.one("Reshape", [q, g.shape([-1, t, h, qk])])], perm=[0, 2, 1, 3])
    k = g.one("Transpose", [g.one("Reshape", [k, g.shape([-1, t, h, qk])])], perm=[0, 2, 1, 3])
    vv = g.one("Transpose", [g.one("Reshape", [vv, g.shape([-1, t, h, v])])], perm=[0, 2, 1, 3])
    if not isinstance(attn.q_norm, nn.Identity):
        q, k = g.norm(q, attn.q_norm), g.norm(k, attn.k_norm)
    root = g.const(np.float64(attn.scale) ** 0.5)
    kt = g.one("Transpose", [g.one("Reshape", [k, g.shape([-1, t, qk])])], perm=[0, 2, 1])
    kt = g.one("Mul", [g.one("Reshape", [kt, g.shape([-1, h, qk, t])]), root])
    a = g.one("Softmax", [g.one("MatMul", [g.one("Mul", [q, root]), kt])], axis=-1)
    o = g.one("Transpose", [g.one("MatMul", [a, vv])], perm=[0, 2, 1, 3])
    return g.linear(g.one("Reshape", [o, g.shape([-1, t, h * v])]), attn.proj)


def _gelu_approximation(act: nn.Module) -> str | None:
    """ONNX ``Gelu``'s ``approximate`` for a GELU module (torch's or timm's), None for another activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    return {GELU: "none", GELUTanh: "tanh"}.get(type(act))


def _mlp(g: _Graph, x: str, mlp: Mlp) -> str:
    approximate = _gelu_approximation(mlp.act)
    if approximate is None or not isinstance(mlp.norm, nn.Identity):
        raise VitCompressError(
            f"ONNX latency probes reproduce GELU MLPs, not {type(mlp.act).__name__}; profile on a torch backend"
        )
    y = g.one("Gelu", [g.linear(x, mlp.fc1)], approximate=approximate)
    return g.linear(y, mlp.fc2)


def sublayer_graph(probe: SublayerProbe, precision: str = "fp32") -> onnx.ModelProto:
    """The probe as an ONNX graph (input ``x [batch, 1, T, D]``, output ``y [batch, T, D]``) with its
    own weights, in the op pattern of the exporter (int8 / fp8: with the Q/DQ pairs of a quantized
    model, the rest in fp32)."""
    dtype = np.float16 if precision == "fp16" else np.float32
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    t, d = probe.tokens, probe.norm.normalized_shape[0]
    g = _Graph(dtype, precision if precision in QUANTIZED else None)
    x = g.one("Reshape", [INPUT, g.shape([-1, t, d])])
    y = g.norm(x, probe.norm)
    y = _attention(g, y, probe.body, t) if isinstance(probe.body, PrunedAttention) else _mlp(g, y, probe.body)
    if isinstance(probe.ls, LayerScale):
        y = g.one("Mul", [y, g.const(probe.ls.gamma)])
    g.nodes.append(helper.make_node("Add", [x, y], [OUTPUT]))
    graph = helper.make_graph(
        g.nodes,
        "probe",
        [helper.make_tensor_value_info(INPUT, elem, ["batch", 1, t, d])],
        [helper.make_tensor_value_info(OUTPUT, elem, ["batch", t, d])],
        g.inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])


def empty_graph(tokens: int, d: int, precision: str = "fp32") -> onnx.ModelProto:
    """``EmptyProbe`` as a graph: a one-element ``Slice`` of the input."""
    elem = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    ints = lambda name, v: numpy_helper.from_array(np.asarray(v, np.int64), name)  # noqa: E731
    node = helper.make_node("Slice", [INPUT, "starts", "ends", "axes"], [OUTPUT])
    graph = helper.make_graph(
        [node],
        "empty",
        [helper.make_tensor_value_info(INPUT, elem, ["batch", 1, tokens, d])],
        [helper.make_tensor_value_info(OUTPUT, elem, ["batch", 1, 1, 1])],
        [ints("starts", [0, 0, 0]), ints("ends", [1, 1, 1]), ints("axes", [1, 2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)])


def traced_graph(model: nn.Module, example: torch.Tensor, precision: str = "fp32") -> onnx.ModelProto:
    """``torch.onnx.export`` (dynamo, dynamic batch) of a plain module, cleaned up as the export
    stage cleans its graphs (for the model without blocks)."""
    traced = copy.deepcopy(model).half() if precision == "fp16" else model
    x = example.half() if precision == "fp16" else example
    prog = torch.onnx.export(
        traced,
        (x,),
        dynamo=True,
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_shapes=({0: Dim.DYNAMIC},),
        opset_version=DEFAULT_OPSET,
        verbose=False,
        custom_translation_table=qdq_translations(),  # a fake-quantized probe's rounding as Q/DQ
    )
    return cleanup(prog.model_proto)


@dataclass
class ProbeVariant(Variant):
    """A bench ``Variant`` for a probe: ``model`` is the probe module (torch runners), ``graph(precision)``
    builds its ONNX file (ONNX Runtime and TensorRT runners)."""

    graph: Callable[[str], onnx.ModelProto] | None = None

    def onnx(self, precision: str = "fp32") -> Path:
        key = ("onnx", precision)
        if key not in self._files:
            if self.graph is None:
                raise ValueError(f"probe {self.name} has no graph")
            path = self._dir() / f"probe-{precision}.onnx"
            onnx.save(self.graph(precision), str(path))
            self._files[key] = path
        return self._files[key]


def quantized_copy(model: nn.Module, quant: str | None) -> nn.Module:
    """``model`` itself (``quant`` None), else a copy with every Linear/Conv2d fake-quantized."""
    if quant is None:
        return model
    net = copy.deepcopy(model)
    return apply_quantizers(net, quantizable_layers(net), quant).eval()


def sublayer_variant(name: str, probe: SublayerProbe, max_batch: int, quant: str | None = None) -> ProbeVariant:
    """A sublayer probe as a variant (``quant``: its graph carries that precision's Q/DQ pairs)."""
    d = probe.norm.normalized_shape[0]
    return ProbeVariant(
        name,
        probe,
        0,
        0,
        img_size=(probe.tokens, d),
        in_chans=1,
        max_batch=max_batch,
        graph=lambda precision: sublayer_graph(probe, quant or precision),
        quantized=quant,
    )


def empty_variant(tokens: int, d: int, max_batch: int, name: str = "empty") -> ProbeVariant:
    return ProbeVariant(
        name,
        EmptyProbe(),
        0,
        0,
        img_size=(tokens, d),
        in_chans=1,
        max_batch=max_batch,
        graph=lambda precision: empty_graph(tokens, d, precision),
    )


def token_variant(name: str, probe: TokenProbe, d: int, max_batch: int, quant: str | None = None) -> ProbeVariant:
    """A token probe as a variant, traced on first use (its reducers are ordinary exported graphs)."""
    example = torch.randn(2, 1, probe.tokens, d)
    probe = quantized_copy(probe, quant)
    return ProbeVariant(
        name,
        probe,
        0,
        0,
        img_size=(probe.tokens, d),
        in_chans=1,
        max_batch=max_batch,
        graph=lambda precision: traced_graph(probe, example, precision),
        quantized=quant,
    )


def model_variant(
    name: str, model: nn.Module, in_chans: int, img: tuple[int, int], max_batch: int, quant: str | None = None
) -> ProbeVariant:
    """A whole model (the model without blocks) as a variant, traced on first use."""
    example = torch.randn(2, in_chans, *img)
    model = quantized_copy(model, quant)
    return ProbeVariant(
        name,
        model,
        0,
        0,
        img_size=img,
        in_chans=in_chans,
        max_batch=max_batch,
        graph=lambda precision: traced_graph(model, example, precision),
        quantized=quant,
    )
