"""The Swin Transformer family (timm ``SwinTransformer`` v1)."""

from .attention import PrunedWindowAttention
from .family import SwinFamily

__all__ = ["PrunedWindowAttention", "SwinFamily"]
