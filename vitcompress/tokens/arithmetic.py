"""Token-count arithmetic shared by the schedules, the reducers and the exports.

Token counts are integer functions of the incoming patch-token count ``n`` (``keep_count``,
``merge_count``) so they stay symbolic when a model is exported with dynamic image sizes.
"""

from __future__ import annotations

from fractions import Fraction

import torch

_DENOM = 1000  # keep fractions are rounded to multiples of 1/1000 (exact integer arithmetic)


def keep_fraction(keep: float) -> tuple[int, int]:
    """``keep`` as an exact fraction (numerator, denominator), rounded to the nearest 1/1000
    (at least 1/1000), the same rounding a runtime-keep graph applies to its ``keep_rate`` input."""
    f = Fraction(max(1, round(float(keep) * _DENOM)), _DENOM)
    return f.numerator, f.denominator


def keep_count(n, keep: float):
    """Kept patch tokens out of ``n``: ``ceil(keep * n)`` in integer arithmetic (symbolic-safe)."""
    a, c = keep_fraction(keep)
    return (a * n + c - 1) // c


def runtime_keep_count(n, keep_permille: torch.Tensor, max_permille: int = _DENOM, leave_one: bool = False):
    """``keep_count`` with the keep rate an integer tensor of per-mille (the ``keep_permille`` input of
    a runtime-keep export).

    ``K = ceil(a * n / 1000)`` with ``a = keep_permille`` clipped to ``[1, max_permille]``. ``a`` is
    read with ``.item()`` and ``K`` computed in integer size arithmetic: while ``torch.export``
    traces, ``a`` is a fresh (unbacked) symbol bounded by ``1 <= a <= max_permille`` and ``K`` an
    integer expression of it and the token count, which ONNX gets as integer ``Mul``/``Add``/``Div``
    feeding the ``TopK`` (in a TensorRT engine ``K`` is then a shape tensor; tensor division would
    export through floating point). Equal to ``keep_count(n, a / 1000)``. ``leave_one``: at most
    ``n - 1`` (a reducer that must always prune a token, ``evit``)."""
    a = keep_permille.reshape(-1)[0].to(torch.int64).clamp(1, max_permille).item()
    torch._check(a >= 1)
    torch._check(a <= max_permille)
    k = (a * n + (_DENOM - 1)) // _DENOM
    if leave_one:
        k = sym_min(k, n - 1)
    torch._check(k >= (0 if leave_one else 1))
    torch._check(k <= (n - 1 if leave_one else n))
    return k


def sym_min(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    return torch.sym_min(a, b)


def merge_count(n, r: int):
    """Merges actually done on ``n`` patch tokens: ``min(r, n // 2)`` (bipartite matching limit)."""
    return sym_min(r, n // 2)
