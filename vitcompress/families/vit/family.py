"""The plain ViT family: timm ``VisionTransformer`` with pre-norm ``Block``s (ViT, DeiT, DeiT-III).

Supported: LayerNorm, fused ``qkv`` attention (optionally with qk-norm, then q/k dims stay whole),
a two-layer MLP, class/distillation/register tokens, class-token or average pooling, layer scale,
any depth. Refused, each with its reason: attention pooling (``map``), RMSNorm, gated or normed
MLPs, attention-output norms, parallel or otherwise restructured blocks, models without a position
embedding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import timm
import torch
from timm.layers import HybridEmbed, Mlp
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from ...errors import VitCompressError
from ...groups import Group
from ...layers import PrunedAttention, attention_dims
from ...meta import source_indices
from ...plan import Plan
from ...spec import BlockSpec, SourceModel, Spec
from ..base import BlockParts, BlockTokens, Family
from . import counting
from .groups import build_groups
from .slicing import STEM_AXES, slice_block, slice_stem


def entry_module(name: str) -> str:
    """The module a timm model name is defined in ('' when timm cannot tell)."""
    try:
        return timm.models.model_entrypoint(name).__module__
    except Exception:  # timm registry inconsistencies
        return ""


class ViTFamily(Family):
    name = "vit"
    title = (
        "timm VisionTransformer models: vit_* (ViT-Ti/S/B/L/H, register-token variants), "
        "deit_* and deit3_* (DeiT, distilled DeiT)"
    )
    token_reduction = True
    name_modules: tuple[str, ...] = ("timm.models.vision_transformer", "timm.models.deit")

    # ------------------------------------------------------------------ recognition and source
    def owns_name(self, name: str) -> bool:
        return entry_module(name) in self.name_modules

    def recognises(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer) and not isinstance(model.patch_embed, HybridEmbed)

    def problems(self, model: nn.Module) -> list[str]:
        if not isinstance(model, VisionTransformer):
            return [f"{type(model).__name__} is not a VisionTransformer"]
        problems = []
        if getattr(model, "attn_pool", None) is not None:
            problems.append(f"attention pooling (global_pool={model.global_pool!r})")
        if model.global_pool not in ("token", "avg", ""):
            problems.append(f"global_pool={model.global_pool!r}")
        if model.pos_embed is None:
            problems.append("no position embedding")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block:
                problems.append(f"block {i} is {type(blk).__name__}")
                break
            if not isinstance(blk.attn, (Attention, PrunedAttention)) or getattr(blk.attn, "gate", None) is not None:
                problems.append(f"block {i} attention is {type(blk.attn).__name__}")
                break
            if not isinstance(blk.attn.norm if hasattr(blk.attn, "norm") else nn.Identity(), nn.Identity):
                problems.append("attention output norm (scale_attn_norm)")
                break
            if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
                problems.append(f"block {i} MLP is {type(blk.mlp).__name__}")
                break
            for norm in (blk.norm1, blk.norm2):
                if not isinstance(norm, nn.LayerNorm):
                    problems.append(f"block {i} uses {type(norm).__name__} instead of LayerNorm")
                    break
        return problems

    def check_kinds(self, model: nn.Module, kinds: Iterable[str]) -> None:
        super().check_kinds(model, kinds)
        if "qk" in kinds and any(not isinstance(b.attn.q_norm, nn.Identity) for b in model.blocks):
            raise VitCompressError(
                "this model normalises q and k per head (qk_norm), so q/k dims cannot be pruned exactly; "
                "drop qk from --granularity"
            )

    def source_of(self, model: nn.Module) -> SourceModel | None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture")
        if not name:
            return None
        pe = model.patch_embed
        kwargs = {
            "img_size": list(pe.img_size),
            "patch_size": list(pe.patch_size),
            "in_chans": self.input_size(model)[0],
            "num_classes": model.num_classes,
        }
        return SourceModel(name, kwargs)

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
            h, qk, v, scale = attention_dims(blk.attn)
            blocks.append(BlockSpec(src[i], h, qk, v, blk.mlp.fc1.out_features, scale))
        return Spec(model.embed_dim, blocks)

    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """The timm model is created with ``num_heads=1`` so any embedding width is accepted, then
        every block's attention and MLP projections are replaced by modules of the spec's widths."""
        kwargs = dict(source.kwargs)
        kwargs.update(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=1)
        with torch.device(device):
            model = self.create(source.name, **kwargs)
            for blk, bs in zip(model.blocks, spec.blocks):
                old = blk.attn
                qk_norm = not isinstance(old.q_norm, nn.Identity)
                blk.attn = PrunedAttention(
                    spec.embed_dim,
                    bs.num_heads,
                    bs.qk_dim,
                    bs.v_dim,
                    bs.scale,
                    qkv_bias=old.qkv.bias is not None,
                    proj_bias=old.proj.bias is not None,
                    qk_norm=qk_norm,
                    norm_layer=None if not qk_norm else type(old.q_norm),
                    attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p,
                )
                fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
                blk.mlp.fc1 = nn.Linear(spec.embed_dim, bs.mlp_hidden, bias=fc1.bias is not None)
                blk.mlp.fc2 = nn.Linear(bs.mlp_hidden, spec.embed_dim, bias=fc2.bias is not None)
        return model

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        return build_groups(model, kinds, self.stem_axis)

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        state = slice_stem(model, plan.embed, self.stem_axis)
        for new_i, old_i in enumerate(plan.blocks):
            for k, t in slice_block(model.blocks[old_i], plan.layers[old_i], plan.embed).items():
                state[f"blocks.{new_i}.{k}"] = t
        return state

    # --------------------------------------------------------------------------------- cost
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> counting.ArchInfo:
        info = counting.ArchInfo.from_model(model)
        if img_size is not None:
            ps = model.patch_embed.patch_size
            info = info.replace(grid=(img_size[0] // ps[0], img_size[1] // ps[1]))
        return info

    def block_macs(self, spec: Spec, info, tokens: Sequence[BlockTokens] | None = None) -> list[int]:
        return counting.per_block(spec, info, tokens)

    def macs(self, spec: Spec, info, tokens: Sequence[BlockTokens] | None = None) -> int:
        return counting.macs(spec, info, tokens)

    def params(self, spec: Spec, info) -> int:
        return counting.params(spec, info)

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
