"""Analytic MACs and parameter counts of a plain (or hybrid) ViT of any ``Spec``.

Convention (``vitcompress.counting``): one MAC is one multiply-accumulate of a matrix product or a
convolution; norms, softmax, activations, bias and residual additions are not counted, matching
``torch.utils.flop_counter``. A block on ``t_in`` tokens whose reducer leaves ``t_out`` runs its
attention on ``t_in`` and its MLP on ``t_out`` tokens, plus the reducer's own products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from ...spec import Spec
from ..base import BlockTokens


def per_channel(module: nn.Module | None, width: int) -> int:
    """Parameters of ``module`` per residual channel (0 for None / Identity)."""
    if module is None or isinstance(module, nn.Identity):
        return 0
    return sum(p.numel() for p in module.parameters()) // width


@dataclass
class ArchInfo:
    """Everything about a ViT's cost that does not depend on the pruned widths.

    ``in_chans`` and ``patch_area`` describe the patch projection's input (image channels and
    patch size for a plain ViT; the CNN stem's output channels and the projection's kernel for a
    hybrid), ``grid`` its output grid. ``stem_macs`` / ``stem_params`` are the MACs and parameters
    of a stem in front of the projection (a hybrid's CNN, kept whole), 0 for a plain ViT.
    """

    in_chans: int
    patch_area: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    pos_embed_len: int
    num_classes: int
    num_heads_out: int
    patch_bias: bool
    patch_norm: int
    prefix_params: int  # tokens per channel: cls + reg + dist
    norm_pre: int
    norm_final: int
    fc_norm: int
    block_norm: int
    qkv_bias: bool
    proj_bias: bool
    qk_norm: int
    fc1_bias: bool
    fc2_bias: bool
    layer_scale: bool
    stem_macs: int = 0
    stem_params: int = 0
    class_token: bool = True

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_model(cls, model: nn.Module, in_chans: int | None = None) -> ArchInfo:
        """Constants of ``model``; ``in_chans`` overrides the projection's input channels."""
        pe = model.patch_embed
        d = model.embed_dim
        blk = model.blocks[0]
        ps = pe.patch_size
        prefix = sum(
            t.shape[1]
            for t in (model.cls_token, getattr(model, "reg_token", None), getattr(model, "dist_token", None))
            if t is not None
        )
        heads_out = 0
        for head in (model.head, getattr(model, "head_dist", None)):
            if isinstance(head, nn.Linear):
                heads_out += 1
        qk = blk.attn.q_norm
        return cls(
            in_chans=pe.proj.in_channels if in_chans is None else in_chans,
            patch_area=ps[0] * ps[1],
            grid=tuple(pe.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
            pos_embed_len=model.pos_embed.shape[1],
            num_classes=model.num_classes if heads_out else 0,
            num_heads_out=heads_out,
            patch_bias=pe.proj.bias is not None,
            patch_norm=per_channel(getattr(pe, "norm", None), d),
            prefix_params=prefix,
            norm_pre=per_channel(model.norm_pre, d),
            norm_final=per_channel(model.norm, d),
            fc_norm=per_channel(model.fc_norm, d),
            block_norm=per_channel(blk.norm1, d),
            qkv_bias=blk.attn.qkv.bias is not None,
            proj_bias=blk.attn.proj.bias is not None,
            qk_norm=0
            if isinstance(qk, nn.Identity)
            else sum(p.numel() for p in qk.parameters()) // qk.normalized_shape[0],
            fc1_bias=blk.mlp.fc1.bias is not None,
            fc2_bias=blk.mlp.fc2.bias is not None,
            layer_scale=hasattr(blk.ls1, "gamma"),
            class_token=model.cls_token is not None,
        )

    def replace(self, **changes) -> ArchInfo:
        return ArchInfo(**{**asdict(self), **changes})


def block_macs(d: int, h: int, qk: int, v: int, m: int, tokens: int, tokens_out: int | None = None) -> int:
    """MACs of one pre-norm transformer block: attention on ``tokens``, MLP on ``tokens_out``
    (default the same) tokens."""
    t = tokens
    t_out = t if tokens_out is None else tokens_out
    return (
        t * d * h * (2 * qk + v)  # qkv projection
        + h * t * t * qk  # q @ k^T
        + h * t * t * v  # attn @ v
        + t * h * v * d  # output projection
        + 2 * t_out * d * m  # fc1 + fc2
    )


def per_block(spec: Spec, info: ArchInfo, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
    """MACs per image of each block (reducer products included)."""
    d = spec.embed_dim
    if tokens is None:
        t = info.num_patches + info.num_prefix_tokens
        return [block_macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, t) for b in spec.blocks]
    return [
        block_macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, bt.t_in, bt.t_out) + bt.extra_macs
        for b, bt in zip(spec.blocks, tokens)
    ]


def macs(spec: Spec, info: ArchInfo, tokens: Sequence[BlockTokens] | None = None) -> int:
    """MACs per image: stem, patch projection, blocks and classifier heads."""
    d = spec.embed_dim
    total = info.stem_macs + info.num_patches * d * info.in_chans * info.patch_area
    total += sum(per_block(spec, info, tokens))
    total += info.num_heads_out * d * info.num_classes
    return int(total)


def params(spec: Spec, info: ArchInfo) -> int:
    """Exact parameter count of a model with this spec."""
    d = spec.embed_dim
    total = info.stem_params
    total += d * info.in_chans * info.patch_area + (d if info.patch_bias else 0) + info.patch_norm * d
    total += info.prefix_params * d + info.pos_embed_len * d
    total += (info.norm_pre + info.norm_final + info.fc_norm) * d
    total += info.num_heads_out * (d * info.num_classes + info.num_classes)
    for b in spec.blocks:
        h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        qkv_out = h * (2 * qk + v)
        total += 2 * info.block_norm * d
        total += d * qkv_out + (qkv_out if info.qkv_bias else 0) + 2 * info.qk_norm * qk
        total += h * v * d + (d if info.proj_bias else 0)
        total += d * m + (m if info.fc1_bias else 0) + m * d + (d if info.fc2_bias else 0)
        total += 2 * d if info.layer_scale else 0
    return int(total)
