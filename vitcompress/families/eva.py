"""The EVA family: timm ``Eva`` models (``eva.py``: EVA, EVA-02, the ``*_rope_*`` ViTs) with pre-norm
``EvaBlock``s and ``EvaAttention``.

EVA-02's blocks are ViT blocks with three differences: the fused ``qkv`` projection has a q bias
and a v bias but no k bias (``q_bias``/``v_bias``), the patch tokens' q and k are rotated by
rotary position embeddings (``rope``, type ``cat``, or DINOv3's ``dinov3``: each head's q/k dims rotate in pairs with a
frequency per pair), and the layer scales are bare parameters (``gamma_1``/``gamma_2``). Heads are
pruned whole and q/k dims are not pruned: removing a rotary pair would need a rope table per head of
the kept pairs, so ``qk`` is not a granularity of this family (v dims, MLP neurons, embedding
channels and blocks are, as in the ``vit`` family, whose groups, slicing, reference norms and
counting it reuses). A pruned model computes its rope table once (``RopeTable``, a buffer of the
fixed-size image's table, stored with the weights), so the rotation is the unpruned model's.

Supported: fused ``qkv`` (with or without q/v biases), rope ``cat``, ``dinov3`` (DINOv3; created at
a fixed image size, ``dynamic_img_size=False``, its eval-mode table kept) or none, qk-norm, attention-output
norm (``scale_attn_inner``), ``Mlp``, packed SwiGLU (``GluMlp``) or ``SwiGLU`` with an optional
hidden norm (``scale_mlp``), LayerNorm or RMSNorm, layer scale, class and register tokens, learned
or no position embedding, token/average/max pooling. Refused, each in one line: separate q/k/v
projections, ``AttentionRope`` (grouped-query attention), post-norm blocks, gated attention, other
rope types (mixed: learned per-head frequencies), a dynamic image size with rope, attention
pooling. Pruned one shot, without token reduction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import GluMlp, Mlp, PatchEmbed, SwiGLU
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

from ..attention import attention, split_qkv
from ..errors import VitCompressError
from ..groups import Group, Member
from ..layers import PrunedAttention, norm_factory
from ..plan import Plan
from ..spec import SourceModel, Spec
from .base import BlockParts, Family
from .vit import ViTFamily, entry_module
from .vit import options as vit_options
from .vit.family import _norm_problem
from .vit.modules import mlp_like
from .vit.slicing import STEM_AXES, slice_block, slice_stem

EVA_MODULE = "timm.models.eva"
STEM = {**STEM_AXES, "rope.pos_embed": None}


class RopeTable(nn.Module):
    """The rotary table ``[sin | cos]`` of a fixed image size (timm ``RotaryEmbeddingCat``'s cached
    ``pos_embed``), kept as a buffer so that a pruned model needs no rope configuration."""

    def __init__(self, num_pos: int, width: int, feat_shape: tuple[int, int]):
        super().__init__()
        self.feat_shape = list(feat_shape)
        self.register_buffer("pos_embed", torch.zeros(num_pos, width))

    def get_embed(self, shape: list[int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.pos_embed if dtype is None else self.pos_embed.to(dtype)


class PrunedEvaAttention(PrunedAttention):
    """``PrunedAttention`` with EVA's q/v biases (no k bias) and rotary embeddings on the patch
    tokens' q and k (the first ``num_prefix_tokens`` tokens are not rotated: the ``rope`` of the
    attention core, ``vitcompress.attention``)."""

    def __init__(self, *args, qv_bias: bool, num_prefix_tokens: int, rotate_half: bool, **kwargs):
        super().__init__(*args, qkv_bias=False, **kwargs)
        self.num_prefix_tokens = num_prefix_tokens
        self.rotate_half = rotate_half
        if qv_bias:
            self.q_bias = nn.Parameter(torch.zeros(self.num_heads * self.qk_dim))
            self.v_bias = nn.Parameter(torch.zeros(self.attn_dim))
        else:
            self.q_bias = self.v_bias = None

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        q, k, v = split_qkv(F.linear(x, self.qkv.weight, bias), self.num_heads, self.qk_dim, self.v_dim)
        x = attention(
            self.q_norm(q),
            self.k_norm(k),
            v,
            scale=self.scale,
            fused=self.fused_attn,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            attn_mask=attn_mask,
            is_causal=is_causal,
            rope=rope,
            rope_prefix=self.num_prefix_tokens,
            rope_half=self.rotate_half,
        )
        return self.merge_heads(x)


def _block_problems(i: int, blk: nn.Module) -> list[str]:
    if type(blk) is not EvaBlock:
        return [f"block {i} is {type(blk).__name__} (post-norm or another block layout)"]
    attn, mlp = blk.attn, blk.mlp
    if type(attn) is not EvaAttention and not isinstance(attn, PrunedEvaAttention):
        return [f"block {i} attention is {type(attn).__name__} (grouped-query or other attention)"]
    if isinstance(attn, EvaAttention) and attn.gate is not None:
        return [f"block {i} attention has a gated output"]
    if type(mlp) not in (Mlp, GluMlp, SwiGLU):
        return [f"block {i} MLP is {type(mlp).__name__}"]
    bad = []
    if vit_options.act_key(mlp.act) is None:
        bad.append(f"block {i} activation {type(mlp.act).__name__}")
    for where in ("norm1", "norm2", "attn.q_norm", "attn.norm", "mlp.norm"):
        norm = blk.get_submodule(where)
        if not isinstance(norm, nn.Identity):
            bad += [p for p in [_norm_problem(norm, f"block {i} {where}")] if p]
    return bad


def eva_problems(model: nn.Module) -> list[str]:
    """What of a timm ``Eva`` cannot be pruned exactly (empty: supported)."""
    if not isinstance(model, Eva):
        return [f"{type(model).__name__} is not an Eva"]
    problems = []
    pe = model.patch_embed
    if type(pe) is not PatchEmbed:
        problems.append(f"patch embedding {type(pe).__name__}")
    elif any(g < 1 for g in pe.grid_size):
        problems.append(f"image size {tuple(pe.img_size)} gives no patch of {tuple(pe.patch_size)}")
    if model.rope is not None:
        if type(model.rope) not in (RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RopeTable):
            problems.append(
                f"rotary embedding {type(model.rope).__name__} (only rope_type='cat' and 'dinov3' are supported)"
            )
        elif model.dynamic_img_size:
            problems.append("rotary embeddings with a dynamic image size (the rope table is per input size)")
        elif getattr(model.rope, "feat_shape", None) is None:
            problems.append("rotary embeddings without a fixed feature shape")
    if model.attn_pool is not None:
        problems.append("attention pooling (global_pool='map')")
    elif model.global_pool not in ("token", "avg", "max", "avgmax", ""):
        problems.append(f"global_pool={model.global_pool!r}")
    for name in ("norm_pre", "norm", "fc_norm"):
        norm = getattr(model, name)
        if not isinstance(norm, nn.Identity):
            problems += [p for p in [_norm_problem(norm, name)] if p]
    for i, blk in enumerate(model.blocks):
        bad = _block_problems(i, blk)
        if bad:
            return problems + bad
    return problems


def fixed_size(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with ``dynamic_img_size=False`` unless given: the family's models take the image
    size they were created for (a pruned model keeps the rope table of that size), so names whose
    default is a dynamic size (DINOv3) are created at their fixed size."""
    return {"dynamic_img_size": False, **kwargs}


@functools.cache
def probe(name: str) -> tuple[str, ...]:
    """The refusal reasons of the model ``name`` with its default options (on the meta device, with one
    block where the name allows it)."""
    model = None
    for kwargs in ({"depth": 1}, {}):  # some names need their own depth (per-block options)
        try:
            with torch.device("meta"):
                model = timm.create_model(name, **fixed_size(kwargs))
            break
        except Exception as e:
            error = e
    if model is None:
        return (f"cannot be built ({type(error).__name__})",)
    return tuple(eva_problems(model))


class EvaFamily(ViTFamily):
    """timm ``Eva`` models; structure, slicing and cost as in the ``vit`` family (module docstring)."""

    name = "eva"
    title = "timm Eva models (eva.py): EVA-02 (eva02_*, rotary embeddings, SwiGLU), EVA, vit_*_rope_*, DINOv3 (vit_*_dinov3*)"
    kinds = ("heads", "v", "mlp", "embed", "depth")
    token_reduction = False
    methods: tuple[str, ...] = ()
    #: the plain-value arguments of timm's ``Eva`` (no layer classes or devices)
    source_kwargs = {
        **Family.source_kwargs,
        "patch_size": "size",
        "global_pool": "str",
        "embed_dim": "count",
        "depth": "depth",
        "num_heads": "count",
        "num_kv_heads": "count",
        "qkv_bias": "bool",
        "qkv_fused": "bool",
        "qk_norm": "bool",
        "mlp_ratio": "positive",
        "swiglu_mlp": "bool",
        "swiglu_align_to": "count0",
        "scale_mlp": "bool",
        "scale_attn_inner": "bool",
        "attn_type": "str",
        "drop_rate": "rate",
        "pos_drop_rate": "rate",
        "patch_drop_rate": "rate",
        "proj_drop_rate": "rate",
        "attn_drop_rate": "rate",
        "drop_path_rate": "rate",
        "norm_layer": "str",
        "init_values": "number?",
        "attn_only_layer_scale": "bool",
        "class_token": "bool",
        "num_reg_tokens": "count0",
        "no_embed_class": "bool",
        "use_abs_pos_emb": "bool",
        "use_rot_pos_emb": "bool",
        "rope_type": "str",
        "rope_grid_offset": "number?",
        "rope_grid_indexing": "str",
        "rope_temperature": "positive",
        "rope_rotate_half": "bool",
        "use_post_norm": "bool",
        "use_pre_transformer_norm": "bool",
        "use_post_transformer_norm": "bool?",
        "use_fc_norm": "bool?",
        "attn_pool_num_heads": "count",
        "attn_pool_mlp_ratio": "positive",
        "dynamic_img_size": "bool",
        "dynamic_img_pad": "bool",
        "ref_feat_shape": "size",
        "head_init_scale": "number?",
    }

    def owns_name(self, name: str) -> bool:
        return entry_module(name) == EVA_MODULE

    def list_models(self, pattern: str = "*") -> list[str]:
        return [n for n in timm.list_models(pattern) if self.owns_name(n) and not probe(n)]

    def refused_models(self, pattern: str = "*") -> dict[str, str]:
        return {n: "; ".join(probe(n)) for n in timm.list_models(pattern) if self.owns_name(n) and probe(n)}

    def recognises(self, model: nn.Module) -> bool:
        return isinstance(model, Eva)

    def problems(self, model: nn.Module) -> list[str]:
        return eva_problems(model)

    def check_kinds(self, model: nn.Module, kinds: Iterable[str]) -> None:
        if "qk" in kinds:
            raise VitCompressError(
                "EVA models rotate q/k dims in pairs with rotary embeddings, so their heads are pruned whole; "
                "drop qk from granularity",
                params=["granularity"],
            )
        super().check_kinds(model, kinds)

    def create(self, name: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return super().create(name, pretrained=pretrained, **fixed_size(kwargs))

    def source_of(self, model: nn.Module) -> SourceModel | None:
        return None  # options of an Eva module are not read back: create it with create_source_model

    def source_spec(self, source: SourceModel) -> Spec:
        """The unpruned model's widths (``Eva`` takes no ``weight_init``: the plain meta-device build)."""
        return Family.source_spec(self, source)

    @property
    def source_keys(self) -> tuple[str, ...]:
        return ()

    def dynamic_size_source(self, source: SourceModel) -> SourceModel | None:
        return None

    def stem_axis(self, name: str) -> int | None:
        if name not in STEM:
            raise ValueError(f"don't know how to slice parameter {name!r}")
        return STEM[name]

    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """timm's Eva with ``num_heads=1`` (any embedding width), each block's attention and MLP
        replaced by modules of the spec's widths, the rope by a ``RopeTable`` of the unpruned head width."""
        kwargs = {**source.kwargs, "embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": 1, "mlp_ratio": 2.0}
        d = spec.embed_dim
        with torch.device("meta"):
            template = timm.create_model(source.name, **fixed_size({**vit_options.decode(source.kwargs), "depth": 1}))
        with torch.device(device):
            model = timm.create_model(source.name, **fixed_size(vit_options.decode(kwargs)), use_rot_pos_emb=False)
            if template.rope is not None:
                table = template.rope.get_embed()
                model.rope = RopeTable(table.shape[0], table.shape[1], template.rope.feat_shape)
            for i, bs in enumerate(spec.blocks):
                blk, old = model.blocks[i], template.blocks[0].attn
                qk_norm, scale_norm = not isinstance(old.q_norm, nn.Identity), not isinstance(old.norm, nn.Identity)
                blk.attn = PrunedEvaAttention(
                    d,
                    bs.num_heads,
                    bs.qk_dim,
                    bs.v_dim,
                    bs.scale,
                    proj_bias=old.proj.bias is not None,
                    qk_norm=qk_norm,
                    norm_layer=norm_factory(old.q_norm if qk_norm else old.norm) if qk_norm or scale_norm else None,
                    scale_norm=scale_norm,
                    qv_bias=has_qv_bias(old),
                    num_prefix_tokens=old.num_prefix_tokens,
                    rotate_half=old.rotate_half,
                )
                blk.mlp = mlp_like(template.blocks[0].mlp, d, bs.mlp_hidden)
        return model

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        """The ``vit`` family's groups, with each head's and v dim's q/v bias entries; with separate
        q/k/v projections the fused ``qkv`` rows become rows of ``q_proj``/``k_proj``/``v_proj``."""
        groups = super().groups(model, kinds)
        for g in groups:
            if g.kind not in ("heads", "v"):
                continue
            attn = model.blocks[g.layer].attn
            h, (qk, v) = attn.num_heads, attention_widths(attn)
            p = f"blocks.{g.layer}.attn."
            heads = torch.arange(h)[:, None]
            q_idx, v_idx = heads * qk + torch.arange(qk), heads * v + torch.arange(v)
            if g.kind == "v":
                q_idx, v_idx = q_idx[:0], v_idx.reshape(-1, 1)
            fused = getattr(attn, "qkv", None) is not None
            if not fused:
                g.members = [m for m in g.members if not m.param.startswith(p + "qkv.")]
                for proj, idx in (("q_proj", q_idx), ("k_proj", q_idx), ("v_proj", v_idx)):
                    if g.kind == "v" and proj != "v_proj":
                        continue
                    fc = getattr(attn, proj)
                    g.members += [Member(p + f"{proj}.weight", 0, idx)]
                    g.members += [Member(p + f"{proj}.bias", 0, idx)] if fc.bias is not None else []
            elif attn.q_bias is not None:
                g.members += [Member(p + "q_bias", 0, q_idx)] if g.kind == "heads" else []
                g.members.append(Member(p + "v_bias", 0, v_idx))
        return groups

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        state = slice_stem(model, plan.embed, self.stem_axis)
        if model.rope is not None:
            state["rope.pos_embed"] = model.rope.get_embed().detach().clone()
        for new_i, old_i in enumerate(plan.blocks):
            blk, lp = model.blocks[old_i], plan.layers[old_i]
            attn = blk.attn
            qkv_weight, q_bias, v_bias = fused_qkv(attn)
            view: Any = blk
            if getattr(attn, "qkv", None) is None:  # separate projections, read as one fused qkv
                view = SimpleNamespace(
                    norm1=blk.norm1,
                    norm2=blk.norm2,
                    mlp=blk.mlp,
                    attn=SimpleNamespace(
                        num_heads=attn.num_heads,
                        head_dim=attn.head_dim,
                        scale=attn.scale,
                        qkv=SimpleNamespace(weight=qkv_weight, bias=None),
                        q_norm=attn.q_norm,
                        k_norm=attn.k_norm,
                        norm=attn.norm,
                        proj=attn.proj,
                    ),
                )
            out = slice_block(view, lp, plan.embed)
            qk, v = attention_widths(attn)
            if q_bias is not None:
                out["attn.q_bias"] = q_bias.detach()[[h * qk + d for h, dims in zip(lp.heads, lp.qk) for d in dims]]
                out["attn.v_bias"] = v_bias.detach()[[h * v + d for h, dims in zip(lp.heads, lp.v) for d in dims]]
            for g in ("gamma_1", "gamma_2"):
                t = getattr(blk, g)
                if t is not None:
                    out[g] = t.detach()[plan.embed].clone()
            for k, t in out.items():
                state[f"blocks.{new_i}.{k}"] = t.clone()
        return state

    def parts(self, model: nn.Module) -> list[BlockParts]:
        raise VitCompressError(
            "the seed methods do not run on EVA models; prune with method=oneshot", params=["method"]
        )

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        return self.stream_norm_paths(model)


def attention_widths(attn: nn.Module) -> tuple[int, int]:
    """(q/k width, v width) per head of an ``EvaAttention`` or ``PrunedEvaAttention``."""
    if isinstance(attn, PrunedEvaAttention):
        return attn.qk_dim, attn.v_dim
    return attn.head_dim, attn.head_dim


def has_qv_bias(attn: nn.Module) -> bool:
    """Whether the attention has q and v biases (fused: ``q_bias``/``v_bias``; separate: the projections')."""
    if getattr(attn, "qkv", None) is not None:
        return attn.q_bias is not None
    return attn.q_proj.bias is not None


def fused_qkv(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(``[q | k | v]`` weight, q bias, v bias) of an attention with fused or separate projections."""
    if getattr(attn, "qkv", None) is not None:
        return attn.qkv.weight, attn.q_bias, attn.v_bias
    w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
    return w, attn.q_proj.bias, attn.v_proj.bias
