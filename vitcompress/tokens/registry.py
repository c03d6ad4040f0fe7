"""The token reducers by name (``--method`` of ``vitcompress tokens``), registered explicitly here."""

from __future__ import annotations

from ..registry import Registry
from .etps import ETPS
from .evit import EViT
from .tome import ToMe
from .topk import TopK, TopKVPA

REDUCERS: Registry = Registry("token reducer")
for _cls in (ETPS, EViT, ToMe, TopK, TopKVPA):
    REDUCERS.register(_cls.name)(_cls)
