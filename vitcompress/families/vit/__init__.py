"""The plain ViT family (timm ``VisionTransformer``: ViT, DeiT, DeiT-III)."""

from .family import ViTFamily, entry_module

__all__ = ["ViTFamily", "entry_module"]
