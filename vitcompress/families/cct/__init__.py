"""The CCT family: Compact Convolutional Transformers of the ``vit-pytorch`` package (extra ``cct``).

``model.py`` maps model names to ``vit_pytorch.cct.CCT`` arguments and creates them (one-line error
naming the extra when the package is missing), ``family.py`` is the adapter, ``counting.py`` its
MACs and parameter counts.
"""

from .family import CCTFamily

__all__ = ["CCTFamily"]
