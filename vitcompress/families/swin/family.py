"""The Swin Transformer family: timm ``SwinTransformer`` (v1: ``swin_*``, including the S3 models).

Stages of windowed pre-norm blocks, each stage with its own residual width; stage s > 0 starts with
a patch merging (LayerNorm over the 2x2 neighbours' 4C channels, then a linear ``reduction`` to the
stage's width). Supported: whole heads (with their relative-position bias columns), q/k and v dims,
MLP neurons, each stage's embedding width, blocks per stage (at least one stays in every stage;
every block keeps its own window and shift), average / max pooling. The shifted-window masks are
buffers computed from the geometry and stay as they are. No token reduction (its reducers assume
global attention over a token list; Swin's windows need the full grid).

A pruned block's attention is a ``PrunedWindowAttention`` (explicit heads, q/k and v widths, the
unpruned softmax scale). Models are rebuilt from their spec on the meta device; the computed
buffers (relative-position index, shift masks) are filled in once the weights are loaded (a
``load_state_dict`` post-hook on the model), on the weights' device.

Refused, each with its reason: Swin V2 and SwinV2-CR (``swinv2_*``: another module, refused by
name), norms other than LayerNorm, other block, attention, MLP or merging classes, a classifier that
concatenates poolings or does not pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from timm.layers import ClassifierHead, Mlp, PatchEmbed
from timm.models.swin_transformer import PatchMerging, SwinTransformer, SwinTransformerBlock, WindowAttention
from torch import nn

from ...groups import Group
from ...layers import KeptChannelLayerNorm
from ...meta import source_indices
from ...plan import Plan
from ...spec import BlockSpec, SourceModel, Spec
from ..base import BlockParts, Family
from ..vit import entry_module
from . import counting
from .attention import (
    PrunedWindowAttention,
    window_attention_dims,
    window_head_outputs,
    window_qkv_heads,
)
from .groups import block_paths, build_groups, stage_dims
from .slicing import merge_columns, slice_state

POOLS = ("avg", "max", "avgmax")  # poolings that keep one feature per channel


def materialise_buffers(model: nn.Module, _incompatible=None) -> None:
    """Compute every module's non-persistent buffers that are still on the meta device, on the
    device of its weights (timm's ``init_non_persistent_buffers``); a ``load_state_dict`` post-hook."""
    for m in model.modules():
        if hasattr(m, "init_non_persistent_buffers") and any(b.is_meta for b in m.buffers(recurse=False)):
            m.init_non_persistent_buffers()


def _layer_norm(old: nn.Module, width: int) -> nn.Module:
    """A LayerNorm like ``old`` over ``width`` channels (an Identity stays an Identity)."""
    if isinstance(old, nn.Identity):
        return old
    return nn.LayerNorm(width, eps=old.eps, elementwise_affine=old.weight is not None, bias=old.bias is not None)


class SwinFamily(Family):
    name = "swin"
    title = "timm Swin Transformer v1: swin_* (Swin-T/S/B/L, Swin-S3)"
    methods = ("ihp", "amap")
    counting = counting
    cost_note = (
        "windowed attention: per block and head T*N*(qk+v) on the T tokens of the stage's grid padded to whole "
        "windows of N tokens; each patch merging adds its reduction (4*C_prev*C per merged token)"
    )
    name_modules: tuple[str, ...] = ("timm.models.swin_transformer",)
    #: the plain-value arguments of timm's ``SwinTransformer`` (no layer classes or devices)
    source_kwargs = {
        **Family.source_kwargs,
        "patch_size": "size",
        "global_pool": "str",
        "embed_dim": "count|counts",
        "depths": "counts",
        "num_heads": "count|counts",
        "head_dim": "count",
        "window_size": "size",
        "always_partition": "bool",
        "strict_img_size": "bool",
        "dynamic_img_size": "bool",
        "mlp_ratio": "positive",
        "qkv_bias": "bool",
        "drop_rate": "rate",
        "proj_drop_rate": "rate",
        "attn_drop_rate": "rate",
        "drop_path_rate": "rate",
        "weight_init": "str",
    }

    # ------------------------------------------------------------------ recognition and source
    def owns_name(self, name: str) -> bool:
        return entry_module(name) in self.name_modules

    def recognises(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def problems(self, model: nn.Module) -> list[str]:
        problems = []
        pe = model.patch_embed
        if type(pe) is not PatchEmbed or not isinstance(pe.proj, nn.Conv2d):
            problems.append(f"patch embedding {type(pe).__name__}")
        elif not isinstance(pe.norm, (nn.LayerNorm, nn.Identity)):
            problems.append(f"patch embedding norm {type(pe.norm).__name__} instead of LayerNorm")
        for s, stage in enumerate(model.layers):
            ds = stage.downsample
            if s > 0 and (
                type(ds) is not PatchMerging or not isinstance(ds.norm, nn.LayerNorm) or ds.reduction.bias is not None
            ):
                problems.append(f"stage {s} downsamples with {type(ds).__name__} (not a LayerNorm patch merging)")
                break
            bad = self._block_problem(stage)
            if bad:
                problems.append(f"stage {s} {bad}")
                break
        if not isinstance(model.norm, nn.LayerNorm):
            problems.append(f"final norm {type(model.norm).__name__} instead of LayerNorm")
        head = model.head
        if type(head) is not ClassifierHead or head.use_conv:
            problems.append(f"classifier {type(head).__name__}")
        elif head.global_pool.pool_type not in POOLS:
            problems.append(f"global_pool={head.global_pool.pool_type!r} (supported: {', '.join(POOLS)})")
        elif not isinstance(head.fc, (nn.Linear, nn.Identity)):
            problems.append(f"classifier layer {type(head.fc).__name__}")
        return problems

    @staticmethod
    def _block_problem(stage: nn.Module) -> str:
        for j, blk in enumerate(stage.blocks):
            if type(blk) is not SwinTransformerBlock:
                return f"block {j} is {type(blk).__name__}"
            if type(blk.attn) not in (WindowAttention, PrunedWindowAttention):
                return f"block {j} attention is {type(blk.attn).__name__}"
            if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
                return f"block {j} MLP is {type(blk.mlp).__name__}"
            for norm in (blk.norm1, blk.norm2):
                if not isinstance(norm, nn.LayerNorm):
                    return f"block {j} uses {type(norm).__name__} instead of LayerNorm"
        return ""

    def source_of(self, model: nn.Module) -> SourceModel | None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        name = cfg.get("architecture")
        if not name:
            return None
        pe = model.patch_embed
        kwargs = {
            "img_size": list(pe.img_size),
            "patch_size": list(pe.patch_size),
            "in_chans": pe.proj.in_channels,
            "num_classes": model.num_classes,
            "global_pool": model.head.global_pool.pool_type,
        }
        blk = next((b for stage in model.layers for b in stage.blocks), None)
        if blk is not None:
            kwargs["qkv_bias"] = blk.attn.qkv.bias is not None
            kwargs["always_partition"] = bool(blk.always_partition)
            kwargs.update(self._structure(model))
        if model.dynamic_img_size:
            kwargs["dynamic_img_size"] = True
        return SourceModel(name, kwargs)

    @staticmethod
    def _structure(model: nn.Module) -> dict:
        """Widths, blocks per stage, heads, window and MLP ratio of a model timm created, as creation
        options: its source then describes it, not the named configuration's defaults (an
        artifact's plan is checked against the source model)."""
        dims = stage_dims(model)
        firsts = [stage.blocks[0] for stage in model.layers]
        heads = [int(b.attn.num_heads) for b in firsts]
        out: dict = {
            "embed_dim": dims[0] if dims == [dims[0] * 2**s for s in range(len(dims))] else dims,
            "depths": [len(stage.blocks) for stage in model.layers],
            "num_heads": heads,
            "window_size": [int(w) for w in firsts[0].window_size],
            "mlp_ratio": firsts[0].mlp.fc1.out_features / dims[0],
        }
        head_dim = firsts[0].attn.qkv.out_features // (3 * heads[0])
        if head_dim != dims[0] // heads[0]:
            out["head_dim"] = head_dim
        return out

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        return int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])

    def image_stride(self, model: nn.Module) -> int:
        """The patch size: a model built for any image size pads each stage's grid to whole windows
        and each odd side before a patch merging."""
        return int(model.patch_embed.patch_size[0])

    def dynamic_size_source(self, source: SourceModel) -> SourceModel:
        """timm's ``dynamic_img_size``: the patch embedding takes any size, every block keeps its
        window and shift and computes its shift mask from the input in ``forward``."""
        return SourceModel(source.name, {**source.kwargs, "dynamic_img_size": True})

    # ---------------------------------------------------------------------------- structure
    def spec(self, model: nn.Module) -> Spec:
        paths = block_paths(model)
        src = source_indices(model, len(paths))
        blocks = []
        for i, (s, path) in enumerate(paths):
            blk = model.get_submodule(path)
            h, qk, v, scale = window_attention_dims(blk.attn)
            extra = {"window": list(blk.window_size), "shift": list(blk.shift_size)}
            blocks.append(BlockSpec(src[i], h, qk, v, blk.mlp.fc1.out_features, scale, s, extra))
        return Spec(stage_dims(model), blocks)

    def build(self, source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
        """timm's model is created with the spec's number of blocks per stage at width 1 (so its
        constructor accepts any widths), then every module whose shape depends on a width is
        replaced: patch embedding, patch mergings, blocks (each rebuilt with its own window and
        shift, attention as ``PrunedWindowAttention``), final norm and classifier."""
        dims = spec.stage_dims
        depths = [sum(b.stage == s for b in spec.blocks) for s in range(len(dims))]
        kwargs = dict(source.kwargs)
        kwargs.update(embed_dim=1, depths=depths, num_heads=[1] * len(dims), head_dim=None)
        with torch.device(device):
            model = self.create(source.name, **kwargs)
            pe = model.patch_embed
            old = pe.proj
            pe.proj = nn.Conv2d(
                old.in_channels, dims[0], old.kernel_size, old.stride, old.padding, bias=old.bias is not None
            )
            pe.norm = _layer_norm(pe.norm, dims[0])
            for s, stage in enumerate(model.layers):
                stage.dim = dims[s - 1] if s else dims[0]
                if s:
                    ds = stage.downsample
                    ds.dim, ds.out_dim = dims[s - 1], dims[s]
                    ds.norm = _layer_norm(ds.norm, 4 * dims[s - 1])
                    ds.reduction = nn.Linear(4 * dims[s - 1], dims[s], bias=False)
                specs = [b for b in spec.blocks if b.stage == s]
                stage.blocks = nn.Sequential(*(self._block(t, dims[s], b) for t, b in zip(stage.blocks, specs)))
            model.norm = _layer_norm(model.norm, dims[-1])
            fc = model.head.fc
            if isinstance(fc, nn.Linear):
                model.head.fc = nn.Linear(dims[-1], fc.out_features, bias=fc.bias is not None)
            model.embed_dim = dims[0]
            model.num_features = model.head_hidden_size = dims[-1]
            for info, d in zip(model.feature_info, dims):
                info["num_chs"] = d
        model.register_load_state_dict_post_hook(materialise_buffers)
        return model

    @staticmethod
    def _block(template: SwinTransformerBlock, dim: int, b: BlockSpec) -> SwinTransformerBlock:
        """A block of width ``dim`` with ``b``'s widths, window and shift; dropout, drop path and
        activation from ``template`` (timm's block at the same position)."""
        attn = template.attn
        blk = SwinTransformerBlock(
            dim,
            template.input_resolution,
            num_heads=1,
            head_dim=1,
            window_size=tuple(b.extra["window"]),
            shift_size=tuple(b.extra["shift"]),
            always_partition=template.always_partition,
            dynamic_mask=template.dynamic_mask,
            mlp_ratio=1.0,
        )
        blk.norm1 = _layer_norm(template.norm1, dim)
        blk.norm2 = _layer_norm(template.norm2, dim)
        blk.attn = PrunedWindowAttention(
            dim,
            b.num_heads,
            b.qk_dim,
            b.v_dim,
            b.scale,
            blk.window_size,
            qkv_bias=attn.qkv.bias is not None,
            proj_bias=attn.proj.bias is not None,
            attn_drop=attn.attn_drop.p,
            proj_drop=attn.proj_drop.p,
        )
        mlp = template.mlp
        mlp.fc1 = nn.Linear(dim, b.mlp_hidden, bias=mlp.fc1.bias is not None)
        mlp.fc2 = nn.Linear(b.mlp_hidden, dim, bias=mlp.fc2.bias is not None)
        blk.mlp = mlp
        blk.drop_path1, blk.drop_path2 = template.drop_path1, template.drop_path2
        return blk

    def groups(self, model: nn.Module, kinds: Iterable[str]) -> list[Group]:
        return build_groups(model, kinds)

    def slice_state(self, model: nn.Module, plan: Plan) -> dict[str, torch.Tensor]:
        return slice_state(model, plan)

    def reference_norms(self, model: nn.Module, plan: Plan) -> dict[str, nn.Module]:
        """Per stage whose channels the plan prunes: the patch embedding's norm (stage 0), the
        stage's block norms, and the next patch merging's norm (kept positions ``q*C + c``) or the
        final norm, each normalising over the kept channels only."""
        dims = stage_dims(model)
        paths = block_paths(model)
        out: dict[str, nn.Module] = {}
        for s, kept in enumerate(plan.embeds):
            if len(kept) == dims[s]:
                continue
            norms = {f"{p}.{n}": kept for st, p in paths if st == s for n in ("norm1", "norm2")}
            if s == 0:
                norms["patch_embed.norm"] = kept
            if s + 1 < len(dims):
                norms[f"layers.{s + 1}.downsample.norm"] = merge_columns(kept, dims[s])
            else:
                norms["norm"] = kept
            for path, idx in norms.items():
                m = model.get_submodule(path)
                if isinstance(m, nn.LayerNorm):
                    out[path] = KeptChannelLayerNorm(m, idx)
        return out

    def can_remove_block(self, spec: Spec, index: int) -> bool:
        """At least one block stays in every stage."""
        stage = spec.blocks[index].stage
        return sum(b.stage == stage for b in spec.blocks) > 1

    # --------------------------------------------------------------------------------- cost
    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> counting.SwinInfo:
        return counting.info_of(model, img_size)

    # ---------------------------------------------------------------------- for the methods
    def parts(self, model: nn.Module) -> list[BlockParts]:
        return [
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
            for _, p in block_paths(model)
        ]

    def residual_norm_paths(self, model: nn.Module) -> list[str]:
        """Every block's two norms, each patch merging's norm (it reads the previous stage's stream)
        and the final norm."""
        paths = [n for p in self.parts(model) for n in (p.norm1, p.norm2)]
        paths += [f"layers.{s}.downsample.norm" for s in range(1, len(model.layers))]
        return [*paths, "norm"]

    def qkv_heads(self, attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return window_qkv_heads(attn, x)

    def head_outputs(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return window_head_outputs(attn, x)
