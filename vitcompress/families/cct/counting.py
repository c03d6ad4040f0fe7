"""Analytic MACs and parameter counts of a CCT (``vit_pytorch.cct.CCT``) of any ``Spec``.

MACs per image (the convention of ``vitcompress.counting``: matrix products and convolutions):

- the convolutional tokenizer: every convolution's output positions x input channels x kernel
  area x output channels (the last convolution's output channels are the embedding width D;
  ReLU and max pooling are not counted);
- every encoder layer as a pre-norm ViT block on the N tokens (no class token): ``qkv``, ``q k^T``,
  ``attn v``, ``proj`` and the two MLP layers;
- sequence pooling: the pooling logits (``N * D``) and the weighted sum of the tokens (``N * D``);
- the classifier (``D * classes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ...spec import Spec
from ..base import BlockTokens
from ..vit.counting import block_macs


@dataclass
class TokenizerConv:
    """One tokenizer convolution: output positions, inputs per output (channels x kernel area),
    output channels (None for the last: the embedding width) and whether it has a bias."""

    positions: int
    fan_in: int
    out_channels: int | None
    bias: bool


@dataclass
class CCTArchInfo:
    """Everything about a CCT's cost that does not depend on the pruned widths."""

    convs: list[TokenizerConv]
    tokens: int
    grid: tuple[int, int]
    pos_embed: bool
    num_classes: int
    qkv_bias: bool


def _first(v) -> int:
    return int(v[0] if isinstance(v, tuple) else v)


def _out(size: int, module: nn.Module) -> int:
    """Output side of a convolution or pooling layer (floor mode) for an input side ``size``."""
    k, s, p, d = (_first(getattr(module, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def tokenizer_convs(tokenizer: nn.Module, img_size: Sequence[int]) -> tuple[list[TokenizerConv], tuple[int, int]]:
    """The tokenizer's convolutions at ``img_size`` and its output grid."""
    h, w = int(img_size[0]), int(img_size[1])
    stages = list(tokenizer.conv_layers)
    convs = []
    for i, stage in enumerate(stages):
        conv = stage[0]
        h, w = _out(h, conv), _out(w, conv)
        kh, kw = conv.kernel_size
        last = i == len(stages) - 1
        fan_in = conv.in_channels // conv.groups * kh * kw
        convs.append(TokenizerConv(h * w, fan_in, None if last else conv.out_channels, conv.bias is not None))
        for m in stage[1:]:
            if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                h, w = _out(h, m), _out(w, m)
    return convs, (h, w)


def tokenizer_macs(info: CCTArchInfo, d: int) -> int:
    return sum(c.positions * c.fan_in * (c.out_channels or d) for c in info.convs)


def per_block(spec: Spec, info: CCTArchInfo, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
    """MACs per image of each encoder layer."""
    d = spec.embed_dim
    return [
        block_macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, info.tokens if tokens is None else tokens[i].t_in)
        for i, b in enumerate(spec.blocks)
    ]


def macs(spec: Spec, info: CCTArchInfo, tokens: Sequence[BlockTokens] | None = None) -> int:
    """MACs per image: tokenizer, encoder layers, sequence pooling and classifier."""
    d = spec.embed_dim
    total = tokenizer_macs(info, d) + sum(per_block(spec, info, tokens))
    return int(total + 2 * info.tokens * d + d * info.num_classes)


def params(spec: Spec, info: CCTArchInfo) -> int:
    """Exact parameter count (the position embedding counted whether learned or sinusoidal)."""
    d = spec.embed_dim
    total = 0
    for c in info.convs:
        out = c.out_channels or d
        total += c.fan_in * out + (out if c.bias else 0)
    total += info.tokens * d if info.pos_embed else 0
    total += d + 1 + 2 * d + d * info.num_classes + info.num_classes  # pooling, final norm, classifier
    for b in spec.blocks:
        h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        qkv = h * (2 * qk + v)
        total += 4 * d  # pre_norm and norm1
        total += d * qkv + (qkv if info.qkv_bias else 0) + h * v * d + d
        total += d * m + m + m * d + d
    return int(total)
