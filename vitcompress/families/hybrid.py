"""The hybrid ViT family: a CNN stem (timm ``HybridEmbed``) in front of a plain ViT.

``vit_tiny_r_s16_p8_*``, ``vit_small_r26_s32_*``, ``vit_base_r50_s16_*`` and the other models of
``timm.models.vision_transformer_hybrid``: the stem (a ResNetV2 or ResNet backbone) is kept whole;
its projection to the embedding (``patch_embed.proj``, a convolution) has its output channels
coupled to the residual stream, so ``embed`` pruning cuts its rows. The transformer is pruned as a
plain ViT, and the token reducers work on it unchanged. The stem's MACs are counted from its
convolutions' shapes (measured once per image size: a forward pass records every output shape).
A stem without a projection (``vit_base_mci_224``: the CNN's output channels *are* the embedding)
is refused.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .vit import ViTFamily
from .vit.counting import ArchInfo

_STEM_MACS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# models of the hybrid module whose stem has no projection (refused by ``problems``; not listed)
NO_PROJECTION = ("vit_base_mci_224",)


def conv_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs per image of a convolution or linear layer that produced ``out`` (batch 1)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // module.groups) * kh * kw
    return out[0].numel() * module.in_features


def stem_macs(backbone: nn.Module, in_chans: int, img_size: Sequence[int]) -> int:
    """MACs per image of ``backbone``'s convolutions and linear layers at ``img_size``."""
    key = (in_chans, int(img_size[0]), int(img_size[1]))
    cache = _STEM_MACS.setdefault(backbone, {})
    if key in cache:
        return cache[key]
    total = [0]

    def hook(module, _inputs, out):
        total[0] += conv_macs(module, out)

    p = next(backbone.parameters())
    hooks = [m.register_forward_hook(hook) for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = [(m, m.training) for m in backbone.modules()]
    try:
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(1, *key, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        for m, t in was:
            m.training = t
    cache[key] = total[0]
    return total[0]


class HybridViTFamily(ViTFamily):
    name = "hybrid"
    title = "timm hybrid ViTs with a CNN stem: vit_*_r*_s* (ResNetV2 stem), vit_*_resnet*d_* (ResNet-D stem)"
    name_modules = ("timm.models.vision_transformer_hybrid",)

    def list_models(self, pattern: str = "*") -> list[str]:
        return [n for n in super().list_models(pattern) if n not in NO_PROJECTION]

    def refused_models(self, pattern: str = "*") -> dict[str, str]:
        out = super().refused_models(pattern)
        for n in super().list_models(pattern):
            if n in NO_PROJECTION:
                out[n] = "the CNN stem has no projection (proj=False): its output channels are the embedding"
        return out

    def recognises(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer) and isinstance(model.patch_embed, HybridEmbed)

    def problems(self, model: nn.Module) -> list[str]:
        problems = super().problems(model)
        pe = model.patch_embed
        if not isinstance(pe.proj, nn.Conv2d):
            problems.append(
                "the CNN stem has no projection (proj=False), so its output channels are the embedding "
                "and would have to be pruned inside the stem"
            )
        if not pe.flatten:
            problems.append("the stem does not flatten its output to tokens")
        return problems

    def stem_axis(self, name: str) -> int | None:
        if name.startswith("patch_embed.backbone."):
            return None  # the CNN stem is kept whole
        return super().stem_axis(name)

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        return int(pe.in_chans), int(pe.img_size[0]), int(pe.img_size[1])

    def image_stride(self, model: nn.Module) -> int:
        return int(model.patch_embed.feat_ratio())

    def arch_info(self, model: nn.Module, img_size: Sequence[int] | None = None) -> ArchInfo:
        pe = model.patch_embed
        size = tuple(pe.img_size) if img_size is None else tuple(img_size)
        info = ArchInfo.from_model(model)  # the projection's input: the stem's output channels
        return info.replace(
            grid=tuple(pe.dynamic_feat_size(size)) if img_size is not None else tuple(pe.grid_size),
            stem_macs=stem_macs(pe.backbone, pe.in_chans, size),
            stem_params=sum(p.numel() for p in pe.backbone.parameters()),
        )
