"""Layers of pruned models and their references: attention with its own widths, kept-channel norm.

timm's ``Attention`` derives everything from ``dim // num_heads``; after pruning, a layer can have
any number of heads, a q/k width per head different from its v width, and must keep the softmax
scale of the unpruned model. ``PrunedAttention`` stores all of these explicitly and keeps timm's
parameter names (``qkv``, ``proj``, ``q_norm``, ``k_norm``) so state dicts stay familiar; its
softmax attention is the attention core's (``vitcompress.attention``).
``qkv_heads`` and ``head_outputs`` read any attention with timm's fused ``qkv`` layout per head.

``KeptChannelNorm`` is the exact reference of a LayerNorm or RMSNorm whose channels are pruned: it
normalises over the kept channels only (see ``vitcompress.reference``); ``norm_like`` builds a norm of
the same kind, epsilon and affinity at another width.
"""

from collections.abc import Callable
from typing import Final

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers import RmsNorm, use_fused_attn
from torch import nn

from .attention import attention, attention_probs, merge_heads, split_qkv

#: norms whose statistics run over the channel axis and that ``KeptChannelNorm`` / ``norm_like`` handle
NORMS = (nn.LayerNorm, RmsNorm)


class PrunedAttention(nn.Module):
    """Multi-head self-attention with explicit per-layer widths.

    The fused ``qkv`` projection has ``num_heads * (2 * qk_dim + v_dim)`` outputs laid out as
    ``[q (head-major) | k (head-major) | v (head-major)]``, the same order timm uses, so an unpruned
    timm ``Attention`` maps onto it without reordering. ``scale`` is stored, never recomputed: after
    q/k dims are removed it stays ``1 / sqrt(original head dim)`` so that attention logits equal the
    unpruned model's logits with the removed dims zeroed.

    ``qk_norm`` normalises each head's q and k over their dims, ``scale_norm`` the concatenated head
    outputs before ``proj`` (timm's ``scale_norm``); ``norm_layer(width)`` builds either norm.
    """

    fused_attn: Final[bool]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        scale: float,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_layer: Callable[..., nn.Module] | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        scale_norm: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("qk_norm and scale_norm need a norm_layer")
        if num_heads < 1 or qk_dim < 1 or v_dim < 1:
            raise ValueError(f"attention needs >= 1 head and dims, got {num_heads}, {qk_dim}, {v_dim}")
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.head_dim = qk_dim  # timm attribute name, kept for tools that read it
        self.attn_dim = num_heads * v_dim
        self.scale = float(scale)
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias, **dd)
        if qk_norm:
            self.q_norm = norm_layer(qk_dim, **dd)
            self.k_norm = norm_layer(qk_dim, **dd)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @property
    def qkv_sizes(self) -> tuple[int, int, int]:
        h = self.num_heads
        return h * self.qk_dim, h * self.qk_dim, h * self.v_dim

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x`` [B, N, C] to q, k [B, H, N, qk_dim] (after the q/k norms) and v [B, H, N, v_dim]."""
        q, k, v = split_qkv(self.qkv(x), self.num_heads, self.qk_dim, self.v_dim)
        return self.q_norm(q), self.k_norm(k), v

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, N, v_dim] -> projected [B, N, C]."""
        return self.proj_drop(self.proj(self.norm(merge_heads(x))))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        x = attention(
            q,
            k,
            v,
            scale=self.scale,
            fused=self.fused_attn,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            attn_mask=attn_mask,
            is_causal=is_causal,
        )
        return self.merge_heads(x)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, "
            f"scale={self.scale:.6g}, fused_attn={self.fused_attn}"
        )


def attention_dims(attn: nn.Module) -> tuple[int, int, int, float]:
    """(num_heads, qk_dim, v_dim, scale) of a timm ``Attention`` or a ``PrunedAttention``."""
    if isinstance(attn, PrunedAttention):
        return attn.num_heads, attn.qk_dim, attn.v_dim, attn.scale
    return attn.num_heads, attn.head_dim, attn.head_dim, float(attn.scale)


def qkv_heads(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [B, H, N, qk] (after q/k norms) and v [B, H, N, v] of a fused-``qkv`` attention for ``x``."""
    h, qk, v, _ = attention_dims(attn)
    q, k, vv = split_qkv(attn.qkv(x), h, qk, v)
    return attn.q_norm(q), attn.k_norm(k), vv


def head_outputs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each head's contribution to the attention output (before the proj bias): [H, B, N, D].

    Summing over heads and adding ``proj.bias`` gives the attention's output.
    """
    h, qk, v, scale = attention_dims(attn)
    q, k, vv = qkv_heads(attn, x)
    o = attention_probs(q, k, scale) @ vv  # [B, H, N, v]
    w = attn.proj.weight.reshape(-1, h, v)  # [D, H, v]: column h*v+d
    return torch.einsum("bhnv,dhv->hbnd", o, w)


def norm_like(norm: nn.Module, width: int, **dd) -> nn.Module:
    """A norm of ``norm``'s class, epsilon and affinity over ``width`` channels."""
    if isinstance(norm, nn.LayerNorm):
        bias = norm.bias is not None or not norm.elementwise_affine
        if isinstance(norm, TimmLayerNorm):  # timm's subclass takes ``affine``
            return type(norm)(width, eps=norm.eps, affine=norm.elementwise_affine, bias=bias, **dd)
        return nn.LayerNorm(width, eps=norm.eps, elementwise_affine=norm.elementwise_affine, bias=bias, **dd)
    if isinstance(norm, RmsNorm):
        return RmsNorm(width, eps=norm.eps, affine=norm.elementwise_affine, **dd)
    raise TypeError(f"don't know how to rebuild {type(norm).__name__} at another width")


def norm_factory(norm: nn.Module) -> Callable[..., nn.Module]:
    """``width -> norm_like(norm, width)``, for constructors that take a ``norm_layer``."""
    return lambda width, **dd: norm_like(norm, width, **dd)


class KeptChannelNorm(nn.Module):
    """A LayerNorm or RMSNorm over a subset of its channels; the other channels are output as zero."""

    def __init__(self, norm: nn.Module, kept: list[int]):
        super().__init__()
        if not isinstance(norm, NORMS):
            raise TypeError(f"no kept-channel reference for {type(norm).__name__}")
        self.norm = norm
        self.register_buffer("kept", torch.as_tensor(kept, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.index_select(-1, self.kept)
        w = self.norm.weight.index_select(0, self.kept) if self.norm.weight is not None else None
        if isinstance(self.norm, nn.LayerNorm):
            b = self.norm.bias.index_select(0, self.kept) if self.norm.bias is not None else None
            y = F.layer_norm(xs, (len(self.kept),), w, b, self.norm.eps)
        else:  # RMSNorm: x / sqrt(mean(x^2) + eps) * w
            y = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + self.norm.eps)
            if w is not None:
                y = y * w
        out = torch.zeros_like(x)
        return out.index_copy(-1, self.kept, y.to(x.dtype))


#: the name the LayerNorm case was first published under
KeptChannelLayerNorm = KeptChannelNorm
