"""Analytic MACs and parameter counts of a ViT of the family (plain, hybrid) of any ``Spec``.

Convention (``vitcompress.counting``): one MAC is one multiply-accumulate of a matrix product or a
convolution; norms, softmax, activations, bias and residual additions are not counted, matching
``torch.utils.flop_counter``. A block on ``t_in`` tokens whose reducer leaves ``t_out`` runs its
attention on ``t_in`` and its MLP on ``t_out`` tokens, plus the reducer's own products. A block
with H heads of q/k width qk and v width v and M MLP neurons on D channels costs, per token,
``D H (2 qk + v)`` (q/k/v projection) ``+ H v D`` (output projection) ``+ D M (r + 1)`` (MLP; r = 2
input rows per neuron for a gated MLP, else 1), plus ``H t (qk + v)`` for the attention products;
a parallel block costs the same. The classifier runs on one pooled token (on every token leaving
the last block with ``global_pool=''``); attention pooling adds its latent query's products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from ...spec import Spec
from ..base import BlockTokens
from .blocks import block_dims, fc1_names, fc1_rows, is_parallel, norm_paths


def per_channel(module: nn.Module | None, width: int) -> int:
    """Parameters of ``module`` per channel of ``width`` (0 for None / Identity)."""
    if module is None or isinstance(module, nn.Identity):
        return 0
    return sum(p.numel() for p in module.parameters()) // width


@dataclass
class BlockCost:
    """Width-independent constants of the blocks' parameter counts (read off block 0).

    ``norms``/``layer_scale``/``out_biases``: parameters per residual channel of the block's norms
    over the residual stream, layer scales and output biases; ``qkv_bias``: a bias per q/k/v row;
    ``qv_bias``: a bias per q and v row only (EVA's ``q_bias``/``v_bias``);
    ``qk_norm``: parameters per q/k dim of ``q_norm`` + ``k_norm``; ``attn_norm``: per attention
    output channel of a norm over the heads' outputs; ``fc1_rows`` input rows per MLP neuron,
    ``mlp_bias`` biases per MLP neuron, ``mlp_norm`` parameters per neuron of a hidden norm.
    """

    norms: int = 2
    layer_scale: int = 0
    out_biases: int = 2
    qkv_bias: bool = True
    qv_bias: bool = False
    qk_norm: int = 0
    attn_norm: int = 0
    fc1_rows: int = 1
    mlp_bias: int = 1
    mlp_norm: int = 0

    @classmethod
    def from_block(cls, blk: nn.Module, d: int) -> BlockCost:
        h, qk, v, _, m = block_dims(blk)
        norms = sum(per_channel(getattr(blk, n), d) for n in norm_paths(blk))
        q_norm = blk.q_norm if is_parallel(blk) else blk.attn.q_norm
        qk_norm = 2 * per_channel(q_norm, qk)
        if is_parallel(blk):
            outs = [blk.out_proj] if blk.out_proj is not None else [blk.attn_out_proj, blk.mlp_out_proj]
            return cls(
                norms=norms,
                layer_scale=per_channel(blk.ls, d),
                out_biases=sum(o.bias is not None for o in outs),
                qkv_bias=blk.in_proj.bias is not None,
                qk_norm=qk_norm,
                mlp_bias=int(blk.in_proj.bias is not None or blk.mlp_bias is not None),
            )
        attn, mlp = blk.attn, blk.mlp
        fc1 = getattr(mlp, fc1_names(mlp)[0])
        gammas = sum(getattr(blk, g, None) is not None for g in ("gamma_1", "gamma_2"))  # EVA's layer scales
        return cls(
            norms=norms,
            layer_scale=per_channel(getattr(blk, "ls1", None), d) + per_channel(getattr(blk, "ls2", None), d) + gammas,
            out_biases=(attn.proj.bias is not None) + (mlp.fc2.bias is not None),
            qkv_bias=getattr(attn, "qkv", None) is not None and attn.qkv.bias is not None,
            qv_bias=getattr(attn, "q_bias", None) is not None  # EVA: q and v biases, no k bias
            or (getattr(attn, "q_proj", None) is not None and attn.q_proj.bias is not None),
            qk_norm=qk_norm,
            attn_norm=per_channel(attn.norm, h * v),
            fc1_rows=fc1_rows(mlp),
            mlp_bias=fc1_rows(mlp) if fc1.bias is not None else 0,
            mlp_norm=per_channel(mlp.norm, m),
        )

    def params(self, d: int, h: int, qk: int, v: int, m: int) -> int:
        qkv_out = h * (2 * qk + v)
        return (
            d * (self.norms + self.layer_scale + self.out_biases)
            + d * qkv_out
            + (qkv_out if self.qkv_bias else 0)
            + (h * (qk + v) if self.qv_bias else 0)
            + self.qk_norm * qk
            + self.attn_norm * h * v
            + h * v * d
            + m * (d * self.fc1_rows + self.mlp_bias + self.mlp_norm + d)
        )

    def macs(self, d: int, h: int, qk: int, v: int, m: int, t: int, t_out: int) -> int:
        """Attention on ``t`` tokens, MLP on ``t_out``."""
        return t * d * h * (2 * qk + v) + h * t * t * (qk + v) + t * h * v * d + t_out * d * m * (self.fc1_rows + 1)


@dataclass
class PoolCost:
    """Attention pooling (``global_pool='map'``): ``latent_len`` query tokens, inner width ``inner``,
    MLP width ``hidden``, and the constants of its parameter count; ``include_prefix``: the pool reads
    the prefix tokens too."""

    latent_len: int
    inner: int
    hidden: int
    include_prefix: bool
    per_channel: int  # parameters per residual channel besides the matrices: norm, proj and fc2 biases
    fixed: int  # parameters independent of the residual width: q/kv/fc1 biases, q/k norms

    @classmethod
    def from_pool(cls, pool: nn.Module, d: int, include_prefix: bool) -> PoolCost:
        inner, hidden = pool.q.out_features, pool.mlp.fc1.out_features
        per = per_channel(pool.norm, d) + (pool.proj.bias is not None) + (pool.mlp.fc2.bias is not None)
        fixed = sum(p.numel() for m in (pool.q_norm, pool.k_norm) for p in m.parameters())
        fixed += sum(b.numel() for b in (pool.q.bias, pool.kv.bias, pool.mlp.fc1.bias) if b is not None)
        return cls(pool.latent.shape[1], inner, hidden, include_prefix, per, fixed)

    def params(self, d: int) -> int:
        return d * (self.latent_len + 3 * self.inner + self.inner + self.per_channel + 2 * self.hidden) + self.fixed

    def macs(self, d: int, t: int) -> int:
        lat = self.latent_len
        return (
            lat * d * self.inner
            + t * d * 2 * self.inner
            + 2 * lat * t * self.inner
            + lat * self.inner * d
            + lat * 2 * d * self.hidden
        )


@dataclass
class ArchInfo:
    """Everything about a ViT's cost that does not depend on the pruned widths.

    ``in_chans`` and ``patch_area`` describe the patch projection's input (image channels and
    patch size for a plain ViT; the CNN stem's output channels and the projection's kernel for a
    hybrid), ``grid`` its output grid. ``stem_macs`` / ``stem_params`` are the MACs and parameters
    of a stem in front of the projection (a hybrid's CNN, kept whole), 0 for a plain ViT.
    ``head_per_token``: the classifier runs on every token (``global_pool=''``).
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
    block: BlockCost = field(default_factory=BlockCost)
    pool: PoolCost | None = None
    head_per_token: bool = False
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
        ps = pe.patch_size
        prefix = sum(
            t.shape[1]
            for t in (model.cls_token, getattr(model, "reg_token", None), getattr(model, "dist_token", None))
            if t is not None
        )
        heads_out = sum(isinstance(h, nn.Linear) for h in (model.head, getattr(model, "head_dist", None)))
        pool = getattr(model, "attn_pool", None)
        return cls(
            in_chans=pe.proj.in_channels if in_chans is None else in_chans,
            patch_area=ps[0] * ps[1],
            grid=tuple(pe.grid_size),
            num_prefix_tokens=model.num_prefix_tokens,
            pos_embed_len=0 if model.pos_embed is None else model.pos_embed.shape[1],
            num_classes=model.num_classes if heads_out else 0,
            num_heads_out=heads_out,
            patch_bias=pe.proj.bias is not None,
            patch_norm=per_channel(getattr(pe, "norm", None), d),
            prefix_params=prefix,
            norm_pre=per_channel(model.norm_pre, d),
            norm_final=per_channel(model.norm, d),
            fc_norm=per_channel(model.fc_norm, d),
            block=BlockCost.from_block(model.blocks[0], d),
            pool=None if pool is None else PoolCost.from_pool(pool, d, bool(model.pool_include_prefix)),
            head_per_token=model.global_pool == "" and heads_out == 1,
            class_token=model.cls_token is not None,
        )

    def replace(self, **changes) -> ArchInfo:
        fields = {**asdict(self), **changes}
        fields["block"] = changes.get("block", self.block)
        fields["pool"] = changes.get("pool", self.pool)
        return ArchInfo(**fields)


def block_macs(d: int, h: int, qk: int, v: int, m: int, tokens: int, tokens_out: int | None = None) -> int:
    """MACs of one plain pre-norm transformer block (two-layer MLP): attention on ``tokens``, MLP on
    ``tokens_out`` (default the same) tokens."""
    return BlockCost().macs(d, h, qk, v, m, tokens, tokens if tokens_out is None else tokens_out)


def per_block(spec: Spec, info: ArchInfo, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
    """MACs per image of each block (reducer products included)."""
    d, bc = spec.embed_dim, info.block
    if tokens is None:
        t = info.num_patches + info.num_prefix_tokens
        return [bc.macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, t, t) for b in spec.blocks]
    return [
        bc.macs(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, bt.t_in, bt.t_out) + bt.extra_macs
        for b, bt in zip(spec.blocks, tokens)
    ]


def macs(spec: Spec, info: ArchInfo, tokens: Sequence[BlockTokens] | None = None) -> int:
    """MACs per image: stem, patch projection, blocks, pooling and classifier heads."""
    d = spec.embed_dim
    total = info.stem_macs + info.num_patches * d * info.in_chans * info.patch_area
    total += sum(per_block(spec, info, tokens))
    last = tokens[-1].t_out if tokens else info.num_patches + info.num_prefix_tokens
    if info.pool is not None:
        total += info.pool.macs(d, last if info.pool.include_prefix else last - info.num_prefix_tokens)
    total += info.num_heads_out * d * info.num_classes * (last if info.head_per_token else 1)
    return int(total)


def params(spec: Spec, info: ArchInfo) -> int:
    """Exact parameter count of a model with this spec."""
    d = spec.embed_dim
    total = info.stem_params
    total += d * info.in_chans * info.patch_area + (d if info.patch_bias else 0) + info.patch_norm * d
    total += info.prefix_params * d + info.pos_embed_len * d
    total += (info.norm_pre + info.norm_final + info.fc_norm) * d
    total += info.num_heads_out * (d * info.num_classes + info.num_classes)
    if info.pool is not None:
        total += info.pool.params(d)
    for b in spec.blocks:
        total += info.block.params(d, b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden)
    return int(total)
