"""Classifier logits from a timm ViT's forward output.

A distilled DeiT returns ``(class head, distillation head)`` while it trains with distillation
(``set_distilled_training(True)``) and their mean otherwise; ``logits_of`` always gives the mean,
so every caller (evaluation, scoring, the pruning methods, the recipe) sees the logits the model
predicts with.
"""

from __future__ import annotations

import torch


def logits_of(out: torch.Tensor | tuple | list) -> torch.Tensor:
    """The logits a model predicts with: the tensor itself, or the mean of a (class, distillation) pair."""
    if isinstance(out, (tuple, list)):
        return (out[0] + out[1]) / 2 if len(out) == 2 else out[0]
    return out
