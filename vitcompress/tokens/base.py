"""Common pieces of the token reducers: the ``Reducer`` interface and exportable gathers.

A reducer runs inside a block, after the attention residual and before the MLP, on
``x [B, N, C]`` whose first ``prefix`` tokens (class, distillation, register tokens) are never
removed, merged or moved. It returns the reduced tokens and their sizes (``[B, N', 1]``: how many
original patches each token stands for; ``None`` when the reducer does not track sizes).
Every image keeps the same number of tokens (a function of ``N`` only, and, in a runtime-keep
export, of the ``keep_rate`` input: ``Reducer.kept``), chosen per image.
All selections are TopK + gather; merges are one-hot matrix products (no scatter with a
reduction), so every reducer exports to ONNX with symbolic token counts and passes TensorRT.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .arithmetic import keep_count, runtime_keep_count, sym_min

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
    needs_scores = True  # class-token attention of the patch tokens
    needs_metric = False  # keys of all heads side by side (tokens.attention)
    tracks_size = False  # carries token sizes
    default_prop_attn = False  # add log(size) to attention logits in later blocks
    max_keep_permille = 1000  # highest runtime keep rate, in 1/1000 (EViT: 999, it always fuses)

    def __init__(self, prefix: int = 1, keep: float | None = None, merge: int = 0, **options):
        super().__init__()
        self.prefix = int(prefix)
        self.keep = keep
        self.merge = int(merge)
        self.options = options
        #: keep rate in 1/1000 as an integer tensor (``[1]`` int64), set only while a runtime-keep graph
        #: is traced or run (``exporters.runtime_keep``); ``None``: the fixed ``keep``.
        self.runtime_keep: torch.Tensor | None = None

    def kept(self, n, leave_one: bool = False):
        """Patch tokens kept out of ``n``: ``ceil(keep * n)`` (``schedule.keep_count``), or, with a
        runtime keep tensor, the same rule computed in the graph (``schedule.runtime_keep_count``);
        with ``leave_one`` at most ``n - 1``."""
        if getattr(self, "runtime_keep", None) is None:
            k = keep_count(n, self.keep)
            return sym_min(k, n - 1) if leave_one else k
        return runtime_keep_count(n, self.runtime_keep, self.max_keep_permille, leave_one)

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
        return x[:, : self.prefix], x[:, self.prefix :]

    def extra_repr(self) -> str:
        what = f"merge={self.merge}" if self.merge else f"keep={self.keep}"
        return f"{what}, prefix={self.prefix}" + (f", options={self.options}" if self.options else "")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fresh_count(x: torch.Tensor, size: torch.Tensor, prefix: int, n_out):
    """Restate the token axis of ``x``/``size`` (``prefix + n_out`` tokens) as a new symbol while
    ``torch.export`` traces with a symbolic token count; eager calls return the tensors unchanged.

    A reducer whose output count uses ``n`` more than once (ToMe: ``n - min(r, n // 2)``) would make
    the next block's count expression twice as long, so export time would grow exponentially with
    the number of reducing blocks. The restated count is ``n_out`` computed in the graph from the
    shape (a ``Slice`` that keeps every token), so the graph stays exact at every image size. Needs
    a prefix token (``prefix >= 1``) so that the token axis is provably longer than 1; without one
    the tensors are returned unchanged."""
    if isinstance(n_out, int) or prefix < 1:
        return x, size
    u = torch.full((), n_out, dtype=torch.int64, device=x.device).item()
    torch._check(u >= 1)
    torch._check(u <= n_out)
    return x[:, : prefix + u], size[:, : prefix + u]


__all__ = ["Reducer", "gather_tokens", "one_hot", "fresh_count", "EPS", "ceil_div", "math"]
