"""Learnable per-channel scales attached by replacing modules (no hooks), and folding them back.

``Scaled(module, out_scale=f, in_scale=g)`` computes ``module(x * g()) * f()`` with the scales
broadcast along the last axis. Methods replace a training copy's ``qkv``, ``fc1``, ``fc2`` or
LayerNorm modules with ``Scaled`` wrappers whose scale functions read the method's learnable
parameters. ``fold`` turns every wrapper back into its plain module with the current scales
multiplied into the weights - for a ``Linear``, an output scale multiplies rows (and the bias), an
input scale multiplies columns; for a ``LayerNorm``, an output scale multiplies weight and bias - so
the folded model computes exactly what the wrapped model computed, with the original parameter
names, ready for the core's slicers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..families import Family, family_of
from ..families.base import replace_module

ScaleFn = Callable[[], torch.Tensor]


class Scaled(nn.Module):
    """``module(x * in_scale()) * out_scale()``; either scale may be ``None``."""

    def __init__(self, module: nn.Module, out_scale: ScaleFn | None = None, in_scale: ScaleFn | None = None):
        super().__init__()
        self.module = module
        # plain attributes, not submodules: the scales' owner registers and optimises them
        self.out_scale = out_scale
        self.in_scale = in_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_scale is not None:
            x = x * self.in_scale().to(x.dtype)
        y = self.module(x)
        if self.out_scale is not None:
            y = y * self.out_scale().to(y.dtype)
        return y

    def folded(self) -> nn.Module:
        """The wrapped module with the current scales multiplied into its parameters (in place)."""
        m = self.module
        with torch.no_grad():
            out = self.out_scale().detach() if self.out_scale is not None else None
            inp = self.in_scale().detach() if self.in_scale is not None else None
            if isinstance(m, nn.Linear):
                if out is not None:
                    m.weight.mul_(out.to(m.weight.dtype)[:, None])
                    if m.bias is not None:
                        m.bias.mul_(out.to(m.bias.dtype))
                if inp is not None:
                    m.weight.mul_(inp.to(m.weight.dtype)[None, :])
            elif isinstance(m, nn.LayerNorm):
                if inp is not None:
                    raise ValueError("an input scale cannot be folded into a LayerNorm")
                if out is not None:
                    m.weight.mul_(out.to(m.weight.dtype))
                    if m.bias is not None:
                        m.bias.mul_(out.to(m.bias.dtype))
            else:
                raise ValueError(f"cannot fold scales into {type(m).__name__}")
        return m


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def attach(model: nn.Module, path: str, out_scale: ScaleFn | None = None, in_scale: ScaleFn | None = None) -> Scaled:
    """Replace the module at ``path`` by a ``Scaled`` wrapper around it (in place)."""
    mod = get_module(model, path)
    if isinstance(mod, Scaled):
        raise ValueError(f"{path} already carries scales")
    w = Scaled(mod, out_scale, in_scale)
    replace_module(model, path, w)
    return w


def fold(model: nn.Module) -> nn.Module:
    """Fold every ``Scaled`` wrapper of ``model`` into its weights (in place); returns ``model``."""
    paths = [n for n, m in model.named_modules() if isinstance(m, Scaled)]
    for path in sorted(paths, key=lambda p: -p.count(".")):
        replace_module(model, path, get_module(model, path).folded())
    return model


def residual_norm_paths(model: nn.Module, family: Family | None = None) -> list[str]:
    """Norms that *read* the residual stream (``Family.residual_norm_paths``: in a ViT every
    block's norm1/norm2 and the final norm). A scale on their output is a gate on each channel.
    ``family``: the model's, when the caller already knows it (else asked with ``family_of``)."""
    return (family or family_of(model)).residual_norm_paths(model)
