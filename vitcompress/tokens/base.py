"""Common pieces of the token reducers: the ``Reducer`` interface and exportable gathers.

A reducer runs inside a block, after the attention residual and before the MLP, on
``x [B, N, C]`` whose first ``prefix`` tokens (class, distillation, register tokens) are never
removed, merged or moved. It returns the reduced tokens and their sizes (``[B, N', 1]``: how many
original patches each token stands for; ``None`` when the reducer does not track sizes).
Every image keeps the same number of tokens (a function of ``N`` only), chosen per image.
All selections are TopK + gather; merges are one-hot matrix products (no scatter with a
reduction), so every reducer exports to ONNX with symbolic token counts and passes TensorRT.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

EPS = 1e-6


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [B, N, C]`` at token indices ``idx [B, K]`` -> ``[B, K, C]``."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def one_hot(idx: torch.Tensor, n, dtype: torch.dtype) -> torch.Tensor:
    """``idx [B, M]`` -> ``[B, M, n]`` one-hot (Equal + Cast; exports everywhere)."""
    return (idx.unsqueeze(-1) == torch.arange(n, device=idx.device)).to(dtype)


class Reducer(nn.Module):
    """One reducing step. Subclasses set the class attributes and implement ``forward``,
    ``out_count`` (patch tokens out of ``n`` in) and ``extra_macs`` (matrix-product MACs the
    reducer adds to its block, per image)."""

    name = ""
    kinds: tuple[str, ...] = ("keep", "rate")
    needs_scores = True      # class-token attention of the patch tokens
    needs_metric = False     # keys averaged over heads
    tracks_size = False      # carries token sizes
    default_prop_attn = False  # add log(size) to attention logits in later blocks

    def __init__(self, prefix: int = 1, keep: Optional[float] = None, merge: int = 0, **options):
        super().__init__()
        self.prefix = int(prefix)
        self.keep = keep
        self.merge = int(merge)
        self.options = options

    def set_keep(self, keep: float) -> None:
        """Change the keep fraction (used by the automatic rate controller while training)."""
        self.keep = float(keep)

    @property
    def prop_attn(self) -> bool:
        return bool(self.options.get("prop_attn", self.default_prop_attn))

    def out_count(self, n):
        raise NotImplementedError

    def extra_macs(self, n: int, heads: int, qk: int, dim: int, has_cls: bool) -> int:
        """MACs of the reducer's own products: the class-token score row by default."""
        return heads * (n + self.prefix) * qk if (self.needs_scores and has_cls) else 0

    def split(self, x: torch.Tensor):
        return x[:, : self.prefix], x[:, self.prefix:]

    def extra_repr(self) -> str:
        what = f"merge={self.merge}" if self.merge else f"keep={self.keep}"
        return f"{what}, prefix={self.prefix}" + (f", options={self.options}" if self.options else "")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["Reducer", "gather_tokens", "one_hot", "EPS", "ceil_div", "math"]
