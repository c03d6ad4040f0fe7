"""Magnitude scorers: the L1 or L2 norm of all parameter slices of each element."""

from __future__ import annotations

import torch
from torch import nn

from ..groups import Group, reduce_group


def l1(model: nn.Module, groups: list[Group], **_) -> list[torch.Tensor]:
    """Sum of |w| over the element's slices."""
    params = dict(model.named_parameters())
    with torch.inference_mode():  # no gradient needed
        return [reduce_group(g, torch.abs, params) for g in groups]


def l2(model: nn.Module, groups: list[Group], **_) -> list[torch.Tensor]:
    """sqrt(sum of w^2) over the element's slices."""
    params = dict(model.named_parameters())
    with torch.inference_mode():
        return [reduce_group(g, torch.square, params).sqrt() for g in groups]
