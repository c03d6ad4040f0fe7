"""Training callbacks: the hooks of the one training loop and the callbacks built on them.

Callback, LoopState                 # the hooks (callbacks/base.py)
GASController(model, GASConfig(0.4))  # token-pruning rate adjusted while fine-tuning (callbacks/gas.py)
"""

from __future__ import annotations

from .base import Callback, LoopState
from .gas import GASConfig, GASController, gas_step

__all__ = ["Callback", "GASConfig", "GASController", "LoopState", "gas_step"]
