"""FLatten-DeiT: timm's ``VisionTransformer`` with focused linear attention in every block, registered
with timm (``timm.create_model('flatten_deit_tiny_patch16_224')``, ``vitcompress models 'flatten*'``).

The model is a DeiT (patch embedding, class token, position embedding, pre-norm blocks, class-token
classifier) whose attention is ``FocusedLinearAttention``; ``focusing_factor`` (3) and
``kernel_size`` (5, the depthwise convolution) are creation options. The convolution needs the
fixed patch grid, so the model takes one image size (no ``dynamic_img_size``).
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _cfg

from .attention import FocusedLinearAttention


class FLattenVisionTransformer(VisionTransformer):
    """A ViT whose blocks use focused linear attention (see ``attention.py``)."""

    def __init__(self, *args: Any, focusing_factor: float = 3.0, kernel_size: int = 5, **kwargs: Any):
        if kwargs.get("dynamic_img_size") or kwargs.get("dynamic_img_pad"):
            raise ValueError("FLatten models take one image size: the depthwise convolution needs the patch grid")
        kwargs.pop("attn_layer", None)
        super().__init__(*args, attn_layer=FocusedLinearAttention, **kwargs)
        for blk in self.blocks:
            self.configure(blk.attn, focusing_factor, kernel_size)
        self.focusing_factor = float(focusing_factor)
        self.kernel_size = int(kernel_size)

    def configure(self, attn: FocusedLinearAttention, focusing_factor: float, kernel_size: int) -> None:
        """Give ``attn`` the model's patch grid, prefix tokens, focusing factor and kernel size."""
        attn.grid_size = tuple(self.patch_embed.grid_size)
        attn.num_prefix_tokens = self.num_prefix_tokens
        attn.focusing_factor = float(focusing_factor)
        if attn.kernel_size != kernel_size:
            attn.set_kernel_size(kernel_size)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> FLattenVisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)  # features_only=True: timm's ViT feature getter, as for ViTs
    return build_model_with_cfg(
        FLattenVisionTransformer,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


# no hub weights: the models are trained with vitcompress (``vitcompress train``)
default_cfgs = generate_default_cfgs(
    {
        "flatten_deit_tiny_patch16_224": _cfg(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        "flatten_deit_small_patch16_224": _cfg(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        "flatten_deit_base_patch16_224": _cfg(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    }
)


@register_model
def flatten_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> FLattenVisionTransformer:
    """FLatten-DeiT-T: DeiT-Tiny (width 192, 12 blocks, 3 heads) with focused linear attention."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create("flatten_deit_tiny_patch16_224", pretrained, **{**args, **kwargs})


@register_model
def flatten_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> FLattenVisionTransformer:
    """FLatten-DeiT-S: DeiT-Small (width 384, 12 blocks, 6 heads) with focused linear attention."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create("flatten_deit_small_patch16_224", pretrained, **{**args, **kwargs})


@register_model
def flatten_deit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> FLattenVisionTransformer:
    """FLatten-DeiT-B: DeiT-Base (width 768, 12 blocks, 12 heads) with focused linear attention."""
    args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create("flatten_deit_base_patch16_224", pretrained, **{**args, **kwargs})
