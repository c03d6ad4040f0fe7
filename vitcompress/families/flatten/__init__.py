"""The FLatten Transformer family: focused linear attention in a timm ViT (``flatten_deit_*``).

``model.py`` registers the models with timm, ``attention.py`` is the attention layer, ``family.py``
the adapter and ``counting.py`` its linear-attention MACs.
"""

from .attention import FocusedLinearAttention
from .family import FLattenFamily
from .model import FLattenVisionTransformer

__all__ = ["FLattenFamily", "FLattenVisionTransformer", "FocusedLinearAttention"]
