"""Analytic MACs and parameter counts of a FLatten ViT of any ``Spec``.

The stem (patch embedding), the MLPs and the classifier cost what they cost in a plain ViT
(``families/vit/counting.py``); the attention is linear in the number of tokens N. Per block
with H heads, q/k width qk and v width v per head, width D, P patch tokens:

- ``qkv`` projection ``N * D * H * (2 qk + v)``, output projection ``N * H * v * D``;
- per head ``k^T v`` (``N * qk * v``), ``q (k^T v)`` (``N * qk * v``) and the normaliser
  ``q . mean(k)`` (``N * qk``): ``H * N * (2 qk v + qk)`` in all, where softmax attention costs
  ``H * N^2 * (qk + v)``;
- the depthwise convolution on the patch tokens' values: ``P * H * v * kernel^2``.

The focusing function (powers, norms, softplus) is element-wise and, like norms and softmax, not
counted (``torch.utils.flop_counter`` counts matrix products and convolutions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...spec import Spec
from ..base import BlockTokens
from ..vit import counting as vit_counting


@dataclass
class FLattenArchInfo:
    """A ViT's width-independent constants plus the depthwise convolution's kernel area and bias."""

    vit: vit_counting.ArchInfo
    kernel_area: int
    dwc_bias: bool

    @property
    def num_patches(self) -> int:
        return self.vit.num_patches


def attention_macs(d: int, h: int, qk: int, v: int, tokens: int, patches: int, kernel_area: int) -> int:
    """MACs of one focused linear attention on ``tokens`` tokens (``patches`` of them on the grid)."""
    return (
        tokens * d * h * (2 * qk + v)  # qkv projection
        + h * tokens * (2 * qk * v + qk)  # k^T v, q (k^T v), q . mean(k)
        + patches * h * v * kernel_area  # depthwise convolution of v
        + tokens * h * v * d  # output projection
    )


def per_block(spec: Spec, info: FLattenArchInfo, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
    """MACs per image of each block."""
    d, prefix = spec.embed_dim, info.vit.num_prefix_tokens
    out = []
    for i, b in enumerate(spec.blocks):
        t = info.num_patches + prefix if tokens is None else tokens[i].t_in
        attn = attention_macs(d, b.num_heads, b.qk_dim, b.v_dim, t, t - prefix, info.kernel_area)
        out.append(attn + 2 * t * d * b.mlp_hidden)
    return out


def macs(spec: Spec, info: FLattenArchInfo, tokens: Sequence[BlockTokens] | None = None) -> int:
    """MACs per image: patch projection, blocks and classifier head(s)."""
    softmax_blocks = sum(vit_counting.per_block(spec, info.vit))
    return int(vit_counting.macs(spec, info.vit) - softmax_blocks + sum(per_block(spec, info, tokens)))


def params(spec: Spec, info: FLattenArchInfo) -> int:
    """Exact parameter count: a ViT's plus, per block, the focusing scales (one per q/k channel)
    and the depthwise convolution (one kernel, and a bias, per value channel)."""
    extra = sum(
        b.num_heads * b.qk_dim + b.num_heads * b.v_dim * (info.kernel_area + (1 if info.dwc_bias else 0))
        for b in spec.blocks
    )
    return int(vit_counting.params(spec, info.vit) + extra)
