"""Analytic MACs and parameter counts of a Swin Transformer (v1) of any ``Spec``.

Convention (``vitcompress.counting``): one MAC is one multiply-accumulate of a matrix product or a
convolution; norms, softmax, GELU, the relative-position bias and shift-mask additions, the cyclic
shift, window partitioning, padding, pooling and residual additions are not counted, matching
``torch.utils.flop_counter``.

- patch embedding: a convolution, ``H0 * W0 * D0 * in_chans * patch_area``;
- a block of stage s on an ``H x W`` grid with window ``wh x ww`` (after clipping to the grid):
  the grid is padded to ``Hp x Wp`` (multiples of the window), so its attention runs on
  ``T = Hp * Wp`` tokens in windows of ``N = wh * ww``: ``qkv`` ``T*D*h*(2qk+v)``, ``q @ k^T``
  ``T*h*N*qk``, ``attn @ v`` ``T*h*N*v``, ``proj`` ``T*h*v*D``; its MLP runs on the ``H * W``
  unpadded tokens: ``2*H*W*D*m``;
- patch merging into stage s: ``H_s * W_s * 4*D_{s-1} * D_s`` (the 2x2 neighbours of the padded
  previous grid concatenated, then the linear ``reduction`` without bias);
- classifier: ``D_last * num_classes`` (after pooling).

Stage s's grid is ``ceil(H0 / 2^s) x ceil(W0 / 2^s)``: each patch merging pads an odd side by one.
A block's window and shift live in its ``BlockSpec.extra`` (``window``, ``shift``), so they follow
the block through depth pruning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from ...spec import BlockSpec, Spec
from ..base import BlockTokens


def per_channel(module: nn.Module | None) -> int:
    """Parameters of a norm per channel (0 for None / Identity)."""
    if module is None or isinstance(module, nn.Identity):
        return 0
    return sum(p.numel() for p in module.parameters()) // module.normalized_shape[0]


@dataclass
class SwinInfo:
    """Everything about a Swin model's cost that does not depend on the pruned widths."""

    in_chans: int
    patch_area: int
    grid: tuple[int, int]  # patch grid (stage 0)
    num_stages: int
    num_classes: int  # 0: no classifier
    patch_bias: bool
    patch_norm: int  # parameters per channel of each norm kind
    merge_norm: int
    block_norm: int
    final_norm: int
    qkv_bias: bool
    proj_bias: bool
    fc1_bias: bool
    fc2_bias: bool
    head_bias: bool

    def resolution(self, stage: int) -> tuple[int, int]:
        """(H, W) of stage ``stage``'s token grid."""
        f = 2**stage
        return math.ceil(self.grid[0] / f), math.ceil(self.grid[1] / f)

    def replace(self, **changes) -> SwinInfo:
        return SwinInfo(**{**asdict(self), **changes})


def window_of(block: BlockSpec) -> tuple[int, int]:
    wh, ww = block.extra["window"]
    return int(wh), int(ww)


def block_macs(d: int, b: BlockSpec, res: tuple[int, int]) -> int:
    """MACs of one Swin block of width ``d`` on a grid ``res``."""
    h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
    wh, ww = window_of(b)
    t = math.ceil(res[0] / wh) * wh * math.ceil(res[1] / ww) * ww  # padded grid
    n = wh * ww
    return t * d * h * (2 * qk + v) + t * h * n * (qk + v) + t * h * v * d + 2 * res[0] * res[1] * d * m


def per_block(spec: Spec, info: SwinInfo, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
    """MACs per image of each block (``tokens`` is ignored: token reduction does not apply to Swin)."""
    return [block_macs(spec.dim_of(b), b, info.resolution(b.stage)) for b in spec.blocks]


def macs(spec: Spec, info: SwinInfo, tokens: Sequence[BlockTokens] | None = None) -> int:
    """MACs per image: patch embedding, patch mergings, blocks and classifier (``tokens`` is
    ignored: token reduction does not apply to Swin)."""
    dims = spec.stage_dims
    h0, w0 = info.grid
    total = h0 * w0 * dims[0] * info.in_chans * info.patch_area
    for s in range(1, info.num_stages):
        hs, ws = info.resolution(s)
        total += hs * ws * 4 * dims[s - 1] * dims[s]
    total += sum(per_block(spec, info))
    total += dims[-1] * info.num_classes
    return int(total)


def params(spec: Spec, info: SwinInfo) -> int:
    """Exact parameter count of a model with this spec."""
    dims = spec.stage_dims
    d0 = dims[0]
    total = d0 * info.in_chans * info.patch_area + (d0 if info.patch_bias else 0) + info.patch_norm * d0
    for s in range(1, info.num_stages):
        total += info.merge_norm * 4 * dims[s - 1] + 4 * dims[s - 1] * dims[s]
    for b in spec.blocks:
        d, h, qk, v, m = spec.dim_of(b), b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        wh, ww = window_of(b)
        qkv_out = h * (2 * qk + v)
        total += 2 * info.block_norm * d
        total += (2 * wh - 1) * (2 * ww - 1) * h
        total += d * qkv_out + (qkv_out if info.qkv_bias else 0)
        total += h * v * d + (d if info.proj_bias else 0)
        total += d * m + (m if info.fc1_bias else 0) + m * d + (d if info.fc2_bias else 0)
    total += info.final_norm * dims[-1]
    if info.num_classes:
        total += dims[-1] * info.num_classes + (info.num_classes if info.head_bias else 0)
    return int(total)


def info_of(model: nn.Module, img_size: Sequence[int] | None = None) -> SwinInfo:
    """The constants of ``model`` (at its own image size or at ``img_size``)."""
    pe = model.patch_embed
    ps = pe.patch_size
    size = tuple(pe.img_size) if img_size is None else tuple(img_size)
    blk = (
        model.layers[0].blocks[0] if len(model.layers[0].blocks) else next(b for st in model.layers for b in st.blocks)
    )
    fc = model.head.fc
    merge = model.layers[1].downsample.norm if len(model.layers) > 1 else None
    return SwinInfo(
        in_chans=pe.proj.in_channels,
        patch_area=ps[0] * ps[1],
        grid=(size[0] // ps[0], size[1] // ps[1]),
        num_stages=len(model.layers),
        num_classes=fc.out_features if isinstance(fc, nn.Linear) else 0,
        patch_bias=pe.proj.bias is not None,
        patch_norm=per_channel(pe.norm),
        merge_norm=per_channel(merge),
        block_norm=per_channel(blk.norm1),
        final_norm=per_channel(model.norm),
        qkv_bias=blk.attn.qkv.bias is not None,
        proj_bias=blk.attn.proj.bias is not None,
        fc1_bias=blk.mlp.fc1.bias is not None,
        fc2_bias=blk.mlp.fc2.bias is not None,
        head_bias=isinstance(fc, nn.Linear) and fc.bias is not None,
    )
