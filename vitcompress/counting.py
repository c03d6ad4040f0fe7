"""Analytic MACs and parameter counts for any ``ViTSpec``, and a ``torch.utils.flop_counter`` check.

Convention: one MAC is one multiply-accumulate of a matrix product or convolution (what pruning
papers call "FLOPs", DeiT-S = 4.6 G); FLOPs = 2 x MACs. Normalisation, softmax, activations,
bias additions and residual additions are not counted, matching ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .spec import ViTSpec, spec_from_model


def _per_channel(module: nn.Module | None, width: int) -> int:
    if module is None or isinstance(module, nn.Identity):
        return 0
    return sum(p.numel() for p in module.parameters()) // width


@dataclass
class ArchInfo:
    """Everything about a ViT's cost that does not depend on the pruned widths."""

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

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def from_model(cls, model: nn.Module) -> ArchInfo:
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
            in_chans=pe.proj.in_channels,
            patch_area=ps[0] * ps[1],
            grid=tuple(pe.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
            pos_embed_len=model.pos_embed.shape[1],
            num_classes=model.num_classes if heads_out else 0,
            num_heads_out=heads_out,
            patch_bias=pe.proj.bias is not None,
            patch_norm=_per_channel(pe.norm, d),
            prefix_params=prefix,
            norm_pre=_per_channel(model.norm_pre, d),
            norm_final=_per_channel(model.norm, d),
            fc_norm=_per_channel(model.fc_norm, d),
            block_norm=_per_channel(blk.norm1, d),
            qkv_bias=blk.attn.qkv.bias is not None,
            proj_bias=blk.attn.proj.bias is not None,
            qk_norm=0
            if isinstance(qk, nn.Identity)
            else sum(p.numel() for p in qk.parameters()) // qk.normalized_shape[0],
            fc1_bias=blk.mlp.fc1.bias is not None,
            fc2_bias=blk.mlp.fc2.bias is not None,
            layer_scale=hasattr(blk.ls1, "gamma"),
        )

    def with_img_size(self, img_size: Sequence[int], patch_size: Sequence[int]) -> ArchInfo:
        d = asdict(self)
        d["grid"] = (img_size[0] // patch_size[0], img_size[1] // patch_size[1])
        return ArchInfo(**d)


@dataclass
class Counts:
    """Per-image multiply-accumulates and parameter count."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {"macs": self.macs, "flops": self.flops, "params": self.params}


def block_macs(d: int, h: int, qk: int, v: int, m: int, tokens: int) -> int:
    """MACs of one pre-norm transformer block on ``tokens`` tokens."""
    t = tokens
    return (
        t * d * h * (2 * qk + v)  # qkv projection
        + h * t * t * qk  # q @ k^T
        + h * t * t * v  # attn @ v
        + t * h * v * d  # output projection
        + 2 * t * d * m
    )  # fc1 + fc2


def macs(spec: ViTSpec, info: ArchInfo, tokens: Sequence[int] | None = None) -> int:
    """MACs per image. ``tokens[i]`` is the token count entering block i (default: all tokens)."""
    d = spec.embed_dim
    n_tok = info.num_patches + info.num_prefix_tokens
    total = info.num_patches * d * info.in_chans * info.patch_area
    for i, b in enumerate(spec.blocks):
        t = n_tok if tokens is None else int(tokens[i])
        total += block_macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, t)
    total += info.num_heads_out * d * info.num_classes
    return int(total)


def params(spec: ViTSpec, info: ArchInfo) -> int:
    """Exact parameter count of a model with this spec."""
    d = spec.embed_dim
    total = d * info.in_chans * info.patch_area + (d if info.patch_bias else 0) + info.patch_norm * d
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


def count(model: nn.Module, tokens: Sequence[int] | None = None) -> Counts:
    """Analytic MACs and params of a (pruned) timm ViT.

    A model carrying a token schedule (``vitcompress.tokens.apply_tokens``) is counted with the
    schedule's per-block token counts and the reducers' own products, unless ``tokens`` is given."""
    spec = spec_from_model(model)
    info = ArchInfo.from_model(model)
    sched = getattr(model, "vitcompress_tokens", None)
    if tokens is None and sched is not None:
        from .tokens.counting import schedule_macs

        return Counts(schedule_macs(spec, info, sched, model.cls_token is not None), params(spec, info))
    return Counts(macs(spec, info, tokens), params(spec, info))


def measured_macs(model: nn.Module, img_size: Sequence[int] | None = None, batch: int = 1) -> int:
    """MACs per image measured by ``torch.utils.flop_counter`` on a real forward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    pe = model.patch_embed
    h, w = img_size or pe.img_size
    p = next(model.parameters())
    x = torch.randn(batch, pe.proj.in_channels, h, w, device=p.device, dtype=p.dtype)
    # The fused SDPA kernels used on CPU are not registered with the flop counter; the explicit
    # matmul path computes the same products and is counted.
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    was_training = model.training
    model.eval()
    try:
        for m, _ in fused:
            m.fused_attn = False
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for m, flag in fused:
            m.fused_attn = flag
        model.train(was_training)
    return fc.get_total_flops() // (2 * batch)
