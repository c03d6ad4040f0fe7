"""The ViT families: timm ``VisionTransformer`` with serial blocks (``vit``) or ViT-22B style parallel
blocks (``vit_parallel``)."""

from .family import ParallelViTFamily, ViTFamily, entry_module

__all__ = ["ParallelViTFamily", "ViTFamily", "entry_module"]
