"""Window attention with explicit widths, and per-head reads of any Swin window attention.

timm's ``WindowAttention`` derives its head width from ``dim // num_heads`` and its softmax scale
from that width. After pruning a block can have any number of heads, a q/k width per head different
from its v width, and must keep the unpruned scale. ``PrunedWindowAttention`` stores these
explicitly and keeps timm's parameter names (``qkv``, ``proj``, ``relative_position_bias_table``)
and its forward (relative-position bias per head, the shifted-window mask passed in by the block:
the ``bias`` and ``window_mask`` of the attention core, ``vitcompress.attention``), so an unpruned
``WindowAttention`` maps onto it without reordering.

The fused ``qkv`` rows are ``[q (head-major) | k (head-major) | v (head-major)]``; the bias table has
one column per head.
"""

from typing import Final

import torch
from timm.layers import to_2tuple, use_fused_attn
from timm.models.swin_transformer import WindowAttention, get_relative_position_index
from torch import nn

from ...attention import attention, attention_probs, merge_heads, split_qkv


class PrunedWindowAttention(nn.Module):
    """Window multi-head self-attention with relative-position bias and explicit per-layer widths."""

    fused_attn: Final[bool]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        scale: float,
        window_size: int | tuple[int, int],
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if num_heads < 1 or qk_dim < 1 or v_dim < 1:
            raise ValueError(f"attention needs >= 1 head and dims, got {num_heads}, {qk_dim}, {v_dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.v_dim = v_dim
        self.head_dim = qk_dim  # timm attribute name, kept for tools that read it
        self.attn_dim = num_heads * v_dim
        self.scale = float(scale)
        self.window_size = to_2tuple(window_size)
        win_h, win_w = self.window_size
        self.window_area = win_h * win_w
        self.fused_attn = use_fused_attn(experimental=True)  # as timm's WindowAttention
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * win_h - 1) * (2 * win_w - 1), num_heads, **dd)
        )
        self.register_buffer(
            "relative_position_index", get_relative_position_index(win_h, win_w, device=device), persistent=False
        )
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the relative-position index on the device of the bias table (timm's hook name:
        a model built on the meta device gets it once its weights are loaded)."""
        win_h, win_w = self.window_size
        index = get_relative_position_index(win_h, win_w, device=self.relative_position_bias_table.device)
        self.register_buffer("relative_position_index", index, persistent=False)

    def _get_rel_pos_bias(self) -> torch.Tensor:
        """The relative-position bias [1, H, N, N] (timm's method name; a method, so TorchScript compiles it)."""
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    @property
    def qkv_sizes(self) -> tuple[int, int, int]:
        h = self.num_heads
        return h * self.qk_dim, h * self.qk_dim, h * self.v_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: windows [num_windows * B, N, C]; ``mask``: the shifted-window (0 / -100) mask
        [num_windows, N, N] or None."""
        q, k, v = split_qkv(self.qkv(x), self.num_heads, self.qk_dim, self.v_dim)
        x = attention(
            q,
            k,
            v,
            scale=self.scale,
            fused=self.fused_attn,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            bias=self._get_rel_pos_bias(),
            window_mask=mask,
        )
        return self.proj_drop(self.proj(merge_heads(x)))

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, scale={self.scale:.6g}, "
            f"window_size={self.window_size}, fused_attn={self.fused_attn}"
        )


def window_attention_dims(attn: nn.Module) -> tuple[int, int, int, float]:
    """(num_heads, qk_dim, v_dim, scale) of a timm ``WindowAttention`` or a ``PrunedWindowAttention``."""
    if isinstance(attn, PrunedWindowAttention):
        return attn.num_heads, attn.qk_dim, attn.v_dim, attn.scale
    if not isinstance(attn, WindowAttention):
        raise TypeError(f"not a window attention: {type(attn).__name__}")
    head_dim = attn.qkv.out_features // (3 * attn.num_heads)
    return attn.num_heads, head_dim, head_dim, float(attn.scale)


def relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """The relative-position bias of a window attention: [1, H, N, N] (one table column per head)."""
    n = attn.window_area
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1)
    return bias.permute(2, 0, 1).contiguous().unsqueeze(0)


def window_qkv_heads(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [B_, H, N, qk] and v [B_, H, N, v] of a window attention on windows ``x`` [B_, N, C]."""
    h, qk, v, _ = window_attention_dims(attn)
    return split_qkv(attn.qkv(x), h, qk, v)


def window_head_outputs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each head's contribution to a window attention's output (before the proj bias): [H, B_, N, D].

    Computed per window with the relative-position bias; the shifted-window mask (held by the block,
    not by the attention) is not applied, so in a shifted block the tokens of a window that spans a
    region boundary also attend across it here."""
    h, _, v, scale = window_attention_dims(attn)
    q, k, vv = window_qkv_heads(attn, x)
    o = attention_probs(q, k, scale, bias=relative_position_bias(attn)) @ vv  # [B_, H, N, v]
    w = attn.proj.weight.reshape(-1, h, v)  # [D, H, v]: column h*v+d
    return torch.einsum("bhnv,dhv->hbnd", o, w)
