"""The plain ViT family: timm ``VisionTransformer`` (ViT, DeiT, DeiT-III, SigLIP, DINOv2, AIMv2, ...).

Supported: serial blocks (timm ``Block``; ``ResPostBlock`` with the norms after the branches) and
ViT-22B style parallel blocks (``ParallelScalingBlock``, the ``vit_parallel`` family below); fused
``qkv`` attention with optional qk-norm (q/k dims then stay whole) and output norm
(``scale_attn_norm``); two-layer or gated MLPs (``Mlp``, ``GluMlp``/``SwiGLUPacked``, ``SwiGLU``)
with an optional hidden norm (``scale_mlp_norm``); LayerNorm or RMSNorm; class, distillation and
register tokens; class-token, average, max or no pooling, or attention pooling with a latent query
(``global_pool='map'``: its inner width and heads stay whole, its input, output and MLP follow the
embedding); layer scale; learned or no position embedding; any depth. Refused, each with its
reason in one line (``problems``): differential attention, gated attention outputs,
``ParallelThingsBlock`` and other block types, parameter-free PRR pooling, activations with
parameters, other norms and patch embeddings.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import timm
import torch
from timm.layers import AttentionPoolLatent, HybridEmbed, LayerScale, Mlp, PatchEmbed
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from ...errors import VitCompressError
from ...groups import Group
from ...layers import KeptChannelNorm, PrunedAttention, norm_factory
from ...meta import source_indices
from ...plan import Plan
from ...spec import BlockSpec, SourceModel, Spec
from ..base import BlockParts, Family
from . import counting, options
from .blocks import PARALLEL, SERIAL, block_dims, is_parallel, norm_paths
from .groups import build_groups
from .modules import PrunedAttentionPool, PrunedParallelBlock, mlp_like
from .slicing import STEM_AXES, slice_block, slice_stem

VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")
PLAIN_METHODS = ("ihp", "gohsp", "amap")


def entry_module(name: str) -> str:
    """The module a timm model name is defined in ('' when timm cannot tell)."""
    try:
        return timm.models.model_entrypoint(name).__module__
    except Exception:  # timm registry inconsistencies
        return ""


@functools.cache
def probe(name: str) -> tuple[bool, tuple[str, ...]]:
    """(whether its blocks are parallel, the refusal reasons) of the model ``name`` with its default
    options, built on the meta device with one block (cached per process)."""
    kwargs: dict[str, Any] = {"depth": 1}
    if entry_module(name) in (*VIT_MODULES, "timm.models.vision_transformer_hybrid"):
        kwargs["weight_init"] = "skip"
    try:
        with torch.device("meta"):
            model = timm.create_model(name, **kwargs)
    except Exception as e:  # a name timm cannot build with one block
        return False, (f"cannot be built ({type(e).__name__})",)
    blocks = getattr(model, "blocks", None) or [None]
    return isinstance(blocks[0], PARALLEL), tuple(vit_problems(model))


def _norm_problem(norm: nn.Module, where: str) -> str | None:
    try:
        options.norm_key(norm)
    except VitCompressError:
        return f"{where} is {type(norm).__name__} (LayerNorm and RmsNorm with affine weights are supported)"
    return None


def _pool_problems(model: nn.Module) -> list[str]:
    pool = getattr(model, "attn_pool", None)
    if pool is None:
        return (
            [] if model.global_pool in ("token", "avg", "avgmax", "max", "") else [f"global_pool={model.global_pool!r}"]
        )
    if isinstance(pool, PrunedAttentionPool):
        return []
    if type(pool) is not AttentionPoolLatent:
        return [
            f"{type(pool).__name__} pooling (global_pool={model.global_pool!r}: heads regrouped by embedding pruning)"
        ]
    bad = []
    if pool.pos_embed is not None or pool.mlp is None or not isinstance(pool.q, nn.Linear):
        bad.append("attention pooling with a position embedding, without MLP or without query projection")
    if pool.latent_dim != model.embed_dim or pool.pool not in ("token", "avg"):
        bad.append("attention pooling whose latent is not as wide as the embedding")
    for where, norm in (("the pool's norm", pool.norm), ("the pool's q/k norm", pool.q_norm)):
        if not isinstance(norm, nn.Identity):
            bad += [p for p in [_norm_problem(norm, where)] if p]
    if options.act_key(pool.mlp.act) is None:
        bad.append(f"the pool's activation {type(pool.mlp.act).__name__}")
    return bad


def _block_problems(i: int, blk: nn.Module) -> list[str]:
    """Why block ``i`` cannot be sliced exactly (empty: it can)."""
    name = type(blk).__name__
    if isinstance(blk, PARALLEL):
        bad = [p for p in [_norm_problem(blk.in_norm, f"block {i} norm")] if p]
        if options.act_key(blk.mlp_act) is None:
            bad.append(f"block {i} activation {type(blk.mlp_act).__name__}")
        return bad
    if not isinstance(blk, SERIAL):
        reason = {
            "ParallelThingsBlock": "several attentions and MLPs side by side in one block",
            "DiffParallelScalingBlock": "differential attention",
        }.get(name, "an unsupported block layout")
        return [f"block {i} is {name} ({reason})"]
    attn, mlp = blk.attn, blk.mlp
    if type(attn) is not Attention and not isinstance(attn, PrunedAttention):
        reason = (
            "two softmax maps per head and a learned lambda"
            if type(attn).__name__ == "DiffAttention"
            else "not timm Attention"
        )
        return [f"block {i} attention is {type(attn).__name__} ({reason})"]
    if getattr(attn, "gate", None) is not None:
        return [f"block {i} attention has a gated output"]
    if type(mlp) not in (Mlp, timm.layers.GluMlp, timm.layers.SwiGLU) or not isinstance(mlp.fc2, nn.Linear):
        return [f"block {i} MLP is {type(mlp).__name__}"]
    bad = []
    if options.act_key(mlp.act) is None:
        bad.append(f"block {i} activation {type(mlp.act).__name__} (not a parameter-free timm activation)")
    for where in (*norm_paths(blk), "attn.q_norm", "attn.norm", "mlp.norm"):
        norm = blk.get_submodule(where)
        if not isinstance(norm, nn.Identity):
            bad += [p for p in [_norm_problem(norm, f"block {i} {where}")] if p]
    for ls in (getattr(blk, "ls1", None), getattr(blk, "ls2", None)):
        if ls is not None and not isinstance(ls, (LayerScale, nn.Identity)):
            bad.append(f"block {i} layer scale {type(ls).__name__}")
    return bad


def vit_problems(model: nn.Module) -> list[str]:
    """What of a timm ``VisionTransformer`` cannot be pruned exactly (empty: supported)."""
    if not isinstance(model, VisionTransformer):
        return [f"{type(model).__name__} is not a VisionTransformer"]
    problems = []
    pe = model.patch_embed
    if type(pe) not in (PatchEmbed, HybridEmbed):
        problems.append(f"patch embedding {type(pe).__name__}")
    elif any(g < 1 for g in pe.grid_size):
        problems.append(f"image size {tuple(pe.img_size)} gives no patch of {tuple(pe.patch_size)}")
    elif not isinstance(getattr(pe, "norm", nn.Identity()), nn.Identity):
        problems += [p for p in [_norm_problem(pe.norm, "the patch embedding's norm")] if p]
    for name in ("norm_pre", "norm", "fc_norm"):
        norm = getattr(model, name)
        if not isinstance(norm, nn.Identity):
            problems += [p for p in [_norm_problem(norm, name)] if p]
    problems += _pool_problems(model)
    kinds = {type(b) for b in model.blocks}
    if len(kinds) > 1:
        problems.append(f"blocks of different types ({', '.join(sorted(k.__name__ for k in kinds))})")
    for i, blk in enumerate(model.blocks):
        bad = _block_problems(i, blk)
        if bad:
            problems += bad
            break
    return problems


class ViTFamily(Family):
    name = "vit"
    title = (
        "timm VisionTransformer models: vit_* (ViT, SigLIP, DINOv2, AIMv2, register and ResPost variants), "
        "deit_* and deit3_* (DeiT, distilled DeiT)"
    )
    token_reduction = True
    counting = counting
    name_modules: tuple[str, ...] = VIT_MODULES
    parallel = False  # the family of models with parallel blocks sets this
    #: the plain-value arguments of timm's ``VisionTransformer`` (no layer classes, paths or devices)
    source_kwargs = {
        **Family.source_kwargs,
        "patch_size": "size",
        "embed_dim": "count",
        "depth": "depth",
        "num_heads": "count",
        "mlp_ratio": "positive",
        "qkv_bias": "bool",
        "qk_norm": "bool",
        "scale_attn_norm": "bool",
        "scale_mlp_norm": "bool",
        "proj_bias": "bool",
        "init_values": "number?",
        "class_token": "bool",
        "pos_embed": "str",
        "no_embed_class": "bool",
        "reg_tokens": "count0",
        "pre_norm": "bool",
        "final_norm": "bool",
        "fc_norm": "bool?",
        "global_pool": "str",
        "pool_include_prefix": "bool",
        "dynamic_img_size": "bool",
        "dynamic_img_pad": "bool",
        "drop_rate": "rate",
        "pos_drop_rate": "rate",
        "patch_drop_rate": "rate",
        "proj_drop_rate": "rate",
        "attn_drop_rate": "rate",
        "drop_path_rate": "rate",
        "weight_init": "str",
        "fix_init": "bool",
        # written as names (``options.ENCODED``), turned into timm's classes by ``options.decode``
        "act_layer": "str",
        "norm_layer": "str",
        "norm_eps": "positive",
        "embed_norm_layer": "str",
        "embed_norm_eps": "positive",
        "mlp_layer": "str",
        "block_fn": "str",
        "attn_layer": "str",  # timm's attention by name (the family refuses the ones it cannot slice)
    }

    # ------------------------------------------------------------------ recognition and source
    def owns_name(self, name: str) -> bool:
        return entry_module(name) in self.name_modules and probe(name)[0] == self.parallel

    def list_models(self, pattern: str = "*") -> list[str]:
        """The timm names of the family whose default configuration prunes exactly."""
        return [n for n in super().list_models(pattern) if not probe(n)[1]]

    def refused_models(self, pattern: str = "*") -> dict[str, str]:
        """The timm names of the family whose default configuration is refused, with the reason."""
        return {n: "; ".join(probe(n)[1]) for n in super().list_models(pattern) if probe(n)[1]}

    def recognises(self, model: nn.Module) -> bool:
        if not isinstance(model, VisionTransformer) or isinstance(model.patch_embed, HybridEmbed):
            return False
        return isinstance(model.blocks[0], PARALLEL) == self.parallel if len(model.blocks) else not self.parallel

    def problems(self, model: nn.Module) -> list[str]:
        return vit_problems(model)

    def check_kinds(self, model: nn.Module, kinds: Iterable[str]) -> None:
        super().check_kinds(model, kinds)
        if "qk" in kinds and any(
            not isinstance(b.q_norm if is_parallel(b) else b.attn.q_norm, nn.Identity) for b in model.blocks
        ):
            raise VitCompressError(
                "this model normalises q and k per head (qk_norm), so q/k dims cannot be pruned exactly; "
                "drop qk from granularity",
                params=["granularity"],
            )

    def check_method(self, model: nn.Module, method: str) -> None:
        """The seed methods read each block's ``qkv``, ``fc1``/activation/``fc2`` and LayerNorms: they
        run on serial blocks with a two-layer MLP, LayerNorms, no output or hidden norms, and no
        attention pooling."""
        super().check_method(model, method)
        plain = getattr(model, "attn_pool", None) is None and all(
            type(b) is Block
            and type(b.mlp) is Mlp
            and isinstance(b.mlp.norm, nn.Identity)
            and isinstance(b.attn.norm, nn.Identity)
            and all(isinstance(n, nn.LayerNorm) for n in (b.norm1, b.norm2))
            for b in model.blocks
        )
        if not plain:
            raise VitCompressError(
                f"method {method} runs on ViTs with plain blocks (two-layer MLP, LayerNorm, no attention pooling); "
                "prune this model with method=oneshot",
                params=["method"],
            )

    def feature_kinds(self, model: nn.Module) -> tuple[str, ...]:
        """Without a classifier (``num_classes=0``) the model's output is its embedding."""
        return () if model.num_classes else ("embed",)

    def create(self, name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        model = timm.create_model(name, pretrained=pretrained, **options.decode(kwargs))
        pe = model.patch_embed
        if any(g < 1 for g in pe.grid_size):
            stride = self.image_stride(model)
            raise VitCompressError(
                f"image size {tuple(pe.img_size)} is smaller than the patch ({stride} px), so the model sees no "
                f"patch; pass an img_size of at least {stride} (a multiple of {stride})",
                params=["img_size"],
            )
        return model

    def source_of(self, model: nn.Module) -> SourceModel | None:
        """The timm name (``pretrained_cfg``) and the options read off the modules that differ from
        the name's defaults; a one-line error when the rebuilt model would differ."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture")
        if not name or not timm.is_model(name):
            return None
        kwargs = options.source_kwargs(model, options.template(name))
        options.check_rebuild(model, options.template(name, kwargs), name)
        return SourceModel(name, kwargs)

    @property
    def source_keys(self) -> tuple[str, ...]:
        """Every constructor key ``source_of`` may write (non-JSON options written as names)."""
        return options.SOURCE_KEYS

    def source_spec(self, source: SourceModel) -> Spec:
        """The unpruned model's widths, built on the meta device without weight initialisation
        (``weight_init='skip'``: initialising meta tensors is most of the build's time)."""
        with torch.device("meta"):
            return self.spec(self.create(source.name, **{**source.kwargs, "weight_init": "skip"}))

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        size = pe.img_size
        if size is None:
            size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-2:]
        return int(pe.proj.in_channels), int(size[0]), int(size[1])

    def dynamic_size_source(self, source: SourceModel) -> SourceModel:
        """timm's ``dynamic_img_size``: position embeddings resampled in ``forward``, a patch
        embedding without a fixed input size."""
        return SourceModel(source.name, {**source.kwargs, "dynamic_img_size": True})

    def image_stride(self, model: nn.Module) -> int:
        return int(model.patch_embed.patch_size[0])

    # ---------------------------------------------------------------------------- structure
    def stem_axis(self, name: str) -> int | None:
        """Residual axis of a state entry outside the blocks (None: copied whole)."""
        if name not in STEM_AXES:
            raise ValueError(f"don't know how to slice parameter {name!r}")
        return STEM_AXES[name]

    def spec(self, model: nn.Module) -> Spec:
        blocks = []
        src = source_indices(model, len(model.blocks))
        for i, blk in enumerate(model.blocks):
            h, qk, v, scale, m = block_dims(blk)
            blocks.append(BlockSpec(src[i], h, qk, v, m, scale))
        return Spec(model.embed_dim, blocks)

    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """The timm model is created with ``num_heads=1`` (so any embedding width is accepted), then
        every block's attention and MLP (or parallel block) and the attention pooling are replaced by
        modules of the spec's widths."""
        kwargs = dict(source.kwargs)
        kwargs.update(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=1, mlp_ratio=2.0)
        d = spec.embed_dim
        with torch.device(device):
            model = self.create(source.name, **kwargs)
            for i, bs in enumerate(spec.blocks):
                blk = model.blocks[i]
                if is_parallel(blk):
                    model.blocks[i] = PrunedParallelBlock(
                        d, bs.num_heads, bs.qk_dim, bs.v_dim, bs.mlp_hidden, bs.scale, like=blk
                    )
                    continue
                old = blk.attn
                qk_norm, scale_norm = not isinstance(old.q_norm, nn.Identity), not isinstance(old.norm, nn.Identity)
                blk.attn = PrunedAttention(
                    d,
                    bs.num_heads,
                    bs.qk_dim,
                    bs.v_dim,
                    bs.scale,
                    qkv_bias=old.qkv.bias is not None,
                    proj_bias=old.proj.bias is not None,
                    qk_norm=qk_norm,
                    norm_layer=norm_factory(old.q_norm if qk_norm else old.norm) if qk_norm or scale_norm else None,
                    attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p,
                    scale_norm=scale_norm,
                )
                blk.mlp = mlp_like(blk.mlp, d, bs.mlp_hidden)
            if getattr(model, "attn_pool", None) is not None:
                pool = options.template(source.name, source.kwargs).attn_pool  # the unpruned pool's widths
                model.attn_pool = PrunedAttentionPool(
                    d,
                    pool.q.out_features,
                    pool.num_heads,
                    pool.mlp.fc1.out_features,
                    pool.latent_len,
                    qkv_bias=pool.q.bias is not None,
                    qk_norm=None if isinstance(pool.q_norm, nn.Identity) else pool.q_norm,
                    norm=None if isinstance(pool.norm, nn.Identity) else pool.norm,
                    act=pool.mlp.act,
                    pool_type=pool.pool,
                )
        return model

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        return build_groups(model, kinds, self.stem_axis)

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        state = slice_stem(model, plan.embed, self.stem_axis)
        for new_i, old_i in enumerate(plan.blocks):
            for k, t in slice_block(model.blocks[old_i], plan.layers[old_i], plan.embed).items():
                state[f"blocks.{new_i}.{k}"] = t
        return state

    def stream_norm_paths(self, model: nn.Module) -> list[str]:
        """Every norm over the residual stream: the patch embedding's, ``norm_pre``, the blocks',
        the final norm(s) and the attention pool's."""
        paths = ["patch_embed.norm", "norm_pre"]
        paths += [f"blocks.{i}.{n}" for i, b in enumerate(model.blocks) for n in norm_paths(b)]
        paths += ["norm", "fc_norm", "attn_pool.norm"]
        out = []
        for p in paths:
            try:
                m = model.get_submodule(p)
            except AttributeError:
                continue
            if not isinstance(m, nn.Identity):
                out.append(p)
        return out

    def reference_norms(self, model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
        """Kept-channel norms: every norm over the residual stream when embedding channels go, a
        block's attention output norm over its kept v dims, its MLP's hidden norm over its kept
        neurons (by path: a q/k norm as wide as the embedding is never taken for one)."""
        out: dict[str, nn.Module] = {}
        if len(plan.embed) < model.embed_dim:
            for p in self.stream_norm_paths(model):
                out[p] = KeptChannelNorm(model.get_submodule(p), plan.embed)
        for b in plan.blocks:
            blk, lp = model.blocks[b], plan.layers[b]
            if is_parallel(blk):
                continue
            h, _, v, _, m = block_dims(blk)
            cols = [hh * v + d for hh, dims in zip(lp.heads, lp.v) for d in dims]
            if not isinstance(blk.attn.norm, nn.Identity) and len(cols) < h * v:
                out[f"blocks.{b}.attn.norm"] = KeptChannelNorm(blk.attn.norm, cols)
            if not isinstance(blk.mlp.norm, nn.Identity) and len(lp.mlp) < m:
                out[f"blocks.{b}.mlp.norm"] = KeptChannelNorm(blk.mlp.norm, lp.mlp)
        return out

    # --------------------------------------------------------------------------------- cost
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> counting.ArchInfo:
        info = counting.ArchInfo.from_model(model)
        if img_size is not None:
            ps = model.patch_embed.patch_size
            info = info.replace(grid=(img_size[0] // ps[0], img_size[1] // ps[1]))
        return info

    def token_layout(self, info) -> tuple[int, int, bool]:
        return info.num_patches, info.num_prefix_tokens, info.class_token

    # ---------------------------------------------------------------------- for the methods
    def parts(self, model: nn.Module) -> list[BlockParts]:
        out = []
        for i in range(len(model.blocks)):
            p = f"blocks.{i}"
            out.append(
                BlockParts(
                    path=p,
                    attn=f"{p}.attn",
                    qkv=f"{p}.attn.qkv",
                    proj=f"{p}.attn.proj",
                    mlp=f"{p}.mlp",
                    fc1=f"{p}.mlp.fc1",
                    act=f"{p}.mlp.act",
                    fc2=f"{p}.mlp.fc2",
                    norm1=f"{p}.norm1",
                    norm2=f"{p}.norm2",
                )
            )
        return out

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        d = model.embed_dim
        paths = []
        for p in self.parts(model):
            paths += [p.norm1, p.norm2]
        for name in ("norm", "fc_norm"):
            m = getattr(model, name, None)
            if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (d,):
                paths.append(name)
        return paths


class ParallelViTFamily(ViTFamily):
    """ViTs with ViT-22B style parallel blocks (``ParallelScalingBlock``): the MLP and the attention
    read the same normalised input through one fused projection. Pruned one shot (the seed methods
    read separate ``qkv``/``fc1`` layers); no token reduction (a reducer sits between attention and
    MLP)."""

    name = "vit_parallel"
    title = "timm ViTs with parallel blocks (ViT-22B style): vit_*_xp_*, vit_pwee_*"
    token_reduction = False
    methods: tuple[str, ...] = ()
    parallel = True

    def parts(self, model: nn.Module) -> list[BlockParts]:
        raise VitCompressError(
            "the seed methods do not run on parallel blocks; prune with method=oneshot", params=["method"]
        )

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        return self.stream_norm_paths(model)
