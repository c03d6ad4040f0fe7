"""Random scores: a baseline every other criterion must beat."""

from __future__ import annotations

import torch
from torch import nn

from ..groups import Group


def random_scores(model: nn.Module, groups: list[Group], *, seed: int = 0, **_) -> list[torch.Tensor]:
    """Uniform random scores, reproducible for a seed."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(g.shape, generator=gen, dtype=torch.float64) for g in groups]
