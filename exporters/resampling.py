"""Position-embedding resampling of a dynamic-size export, and its TensorRT-compatible form.

A timm ViT built with ``dynamic_img_size=True`` resamples its position-embedding grid in
``forward`` (``timm.layers.resample_abs_pos_embed``: bicubic with ``antialias=True``). The ONNX
exporter writes that as one ``Resize`` node: ``mode=cubic``, ``cubic_coeff_a=-0.5``,
``exclude_outside=1``, ``coordinate_transformation_mode=half_pixel``, ``antialias=1``. TensorRT's
ONNX parser refuses ``antialias=1`` ("Antialiasing is not supported currently") and parses the rest.

``drop_antialias`` sets ``antialias=0`` on those nodes; nothing else changes. Antialiasing only acts
when the grid shrinks, so the graph computes exactly what the PyTorch model computes at the native
image size and at every larger one. At a smaller image the antialiased resampling low-pass filters
the grid over a support widened by the shrink factor; without it each new grid point is the 4-tap
cubic interpolation (Keys kernel, a = -0.5) of its neighbours, weights renormalised over the taps
inside the grid. ``resample_plain`` is that computation in PyTorch (interpolation matrices per
axis), and ``Resampled(model)`` runs a model with it: the reference of such an export's parity
check, at every image size.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

#: ``export.pos_embed_resampling`` metadata values.
ANTIALIAS, PLAIN = "bicubic, antialias", "bicubic"
#: Keys' cubic coefficient of timm's (and PIL's) antialiased bicubic kernel.
CUBIC_A = -0.5

_lock = threading.RLock()


def _keys(d: float, a: float = CUBIC_A) -> float:
    """Keys' cubic convolution kernel at distance ``d``."""
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def cubic_matrix(n_in: int, n_out: int, a: float = CUBIC_A) -> torch.Tensor:
    """``[n_out, n_in]`` weights of ONNX ``Resize`` (cubic, ``half_pixel``, ``exclude_outside=1``,
    no antialiasing) along one axis: output ``i`` samples the input at ``(i + 0.5) * n_in / n_out -
    0.5`` with the 4 taps around it; taps outside the input are dropped and the rest renormalised."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(x)
        for j in range(base - 1, base + 3):
            if 0 <= j < n_in:
                w[i, j] = _keys(x - j, a)
        w[i] /= w[i].sum()
    return w


def resample_plain(posemb: torch.Tensor, new_size, old_size=None, num_prefix_tokens: int = 1, **_) -> torch.Tensor:
    """``timm.layers.resample_abs_pos_embed`` without antialiasing (see the module doc); same arguments."""
    n_pos = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(math.sqrt(n_pos))
        old_size = (side, side)
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    grid = grid.reshape(old_size[0], old_size[1], -1).double()
    rows = cubic_matrix(int(old_size[0]), int(new_size[0])).to(grid.device)
    cols = cubic_matrix(int(old_size[1]), int(new_size[1])).to(grid.device)
    out = torch.einsum("oh,hwc,pw->opc", rows, grid, cols).reshape(1, -1, grid.shape[-1]).to(posemb.dtype)
    return torch.cat([prefix, out], dim=1) if num_prefix_tokens else out


@contextlib.contextmanager
def plain_resampling() -> Iterator[None]:
    """Within the block, timm ViTs resample their position embeddings with ``resample_plain``: every
    loaded timm module that calls ``resample_abs_pos_embed`` (``vision_transformer``, ``deit``, ...)
    looks it up in its own namespace, where it is replaced for the duration."""
    with _lock:
        patched = [
            m
            for name, m in list(sys.modules.items())
            if name.startswith("timm.") and getattr(m, "resample_abs_pos_embed", None) is resample_abs_pos_embed
        ]
        for m in patched:
            m.resample_abs_pos_embed = resample_plain
        try:
            yield
        finally:
            for m in patched:
                m.resample_abs_pos_embed = resample_abs_pos_embed


class Resampled(nn.Module):
    """``model`` whose forward resamples position embeddings without antialiasing (``resample_plain``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, *args):
        with plain_resampling():
            return self.model(*args)


def drop_antialias(proto) -> int:
    """Set ``antialias=0`` on every ``Resize`` of the main graph that has ``antialias=1``; returns how many."""
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "Resize":
            continue
        for attr in node.attribute:
            if attr.name == "antialias" and attr.i != 0:
                attr.i = 0
                changed += 1
    return changed


def describe(antialias: bool) -> str:
    """The ``export.pos_embed_resampling`` metadata value of a resampling."""
    return ANTIALIAS if antialias else PLAIN
