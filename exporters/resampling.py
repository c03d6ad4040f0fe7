"""Position-embedding resampling of a dynamic-size export: timm's antialiased bicubic, as MatMuls.

A timm ViT built with ``dynamic_img_size=True`` resamples its position-embedding grid in
``forward`` (``timm.layers.resample_abs_pos_embed``: ``F.interpolate`` bicubic with
``antialias=True``). Exported as it is, that is one ``Resize`` node with ``mode=cubic`` and
``antialias=1``; onnx-tensorrt's operators.md lists only the nearest and linear modes of ``Resize``
and says antialiasing is unsupported, so TensorRT refuses that graph.

The resampling is separable: the new grid is ``R @ grid @ C^T`` with one interpolation matrix per
axis (``R``: ``[new_h, old_h]``, ``C``: ``[new_w, old_w]``). ``aa_matrix`` builds such a matrix from
the runtime size with element-wise operations (``Range``, ``Mul``, ``Div``, ``Abs``, ``Where``,
``ReduceSum``) exactly as PyTorch's antialiased kernel computes its weights (``aten``
``_compute_indices_min_size_weights_aa``): with ``scale = old / new``, output ``i`` is centred at
``scale * (i + 0.5)``, input ``j`` weighs ``keys((j - centre + 0.5) / max(scale, 1))`` (Keys' cubic,
``a = -0.5``, whose support is widened by the shrink factor), and each row is normalised to sum 1.
At the native size the matrices are the identity; enlarging, they are the plain 4-tap cubic
(antialiasing only acts when shrinking); shrinking, they low-pass filter as timm does. So one graph,
made only of operations TensorRT documents, equals timm at every size (within fp32 rounding) and is
what ONNX Runtime runs and what ``--trt`` builds.

``matmul_resampling()`` makes timm's ViT modules use ``resample_matmul`` while the exporter traces.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator

import torch
from timm.layers import resample_abs_pos_embed

#: ``export.pos_embed_resampling`` metadata value of a dynamic-size export.
MATMUL = "bicubic, antialias (separable MatMul)"
#: Keys' cubic coefficient of timm's (PyTorch's, PIL's) antialiased bicubic kernel.
CUBIC_A = -0.5

_lock = threading.RLock()


def _keys(d: torch.Tensor, a: float = CUBIC_A) -> torch.Tensor:
    """Keys' cubic convolution kernel at distances ``d`` (element-wise, zero from 2 on)."""
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def aa_matrix(n_in: int, n_out) -> torch.Tensor:
    """``[n_out, n_in]`` float32 weights of PyTorch's antialiased bicubic along one axis (module doc).

    ``n_out`` may be symbolic (the exporter's size from the input shape): the weights are computed
    from ``arange(n_out)`` with tensor operations, so the graph builds them for the runtime size."""
    i = torch.arange(n_out).to(torch.float32)  # an integer Range on the runtime size, then a Cast
    scale = n_in / torch.ones_like(i).sum()  # old / new, a tensor however n_out is given
    centre = scale * (i + 0.5)
    j = torch.arange(n_in, dtype=torch.float32)
    w = _keys((j[None, :] - centre[:, None] + 0.5) / scale.clamp(min=1.0))
    return w / w.sum(-1, keepdim=True)


def resample_matmul(
    posemb: torch.Tensor, new_size, old_size=None, num_prefix_tokens: int = 1, interpolation="bicubic", **_
) -> torch.Tensor:
    """``timm.layers.resample_abs_pos_embed`` (bicubic, antialiased; same arguments) with two MatMuls."""
    if interpolation != "bicubic":
        return resample_abs_pos_embed(posemb, new_size, old_size, num_prefix_tokens, interpolation)
    n_pos = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.sqrt(n_pos))
        old_size = (side, side)
    h_in, w_in = int(old_size[0]), int(old_size[1])
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    c = grid.shape[-1]
    g = grid.float().reshape(h_in, w_in * c)
    rows = aa_matrix(h_in, new_size[0]).to(g.device)
    cols = aa_matrix(w_in, new_size[1]).to(g.device)
    t = (rows @ g).reshape(-1, w_in, c).transpose(1, 2)  # [new_h, C, old_w]
    out = (t @ cols.transpose(0, 1)).transpose(1, 2).reshape(1, -1, c).to(posemb.dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out


@contextlib.contextmanager
def matmul_resampling() -> Iterator[None]:
    """Within the block, timm models resample their position embeddings with ``resample_matmul``:
    every loaded timm module that calls ``resample_abs_pos_embed`` (``vision_transformer``, ``deit``,
    ``eva``, ...) looks it up in its own namespace, where it is replaced for the duration."""
    with _lock:
        patched = [
            m
            for name, m in list(sys.modules.items())
            if name.startswith("timm.") and getattr(m, "resample_abs_pos_embed", None) is resample_abs_pos_embed
        ]
        for m in patched:
            m.resample_abs_pos_embed = resample_matmul
        try:
            yield
        finally:
            for m in patched:
                m.resample_abs_pos_embed = resample_abs_pos_embed
