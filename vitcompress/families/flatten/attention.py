"""Focused linear attention (FLatten Transformer, Han et al., ICCV 2023), written from the paper.

Per head, with ``x`` a query or key vector of the head's q/k channels:

- **focusing function** ``phi_p(x) = ||r|| * r**p / ||r**p||`` with ``r = ReLU(x) / softplus(s)``:
  ``s`` is a learnable scale per q/k channel (shared by q and k), ``p`` the focusing factor (3 by
  default). Raising to the power ``p`` sharpens each vector towards its largest channels (the
  "focus"), the norms keep its length;
- **linear attention** ``o_i = phi(q_i) (sum_j phi(k_j)^T v_j) / (phi(q_i) . sum_j phi(k_j))``: the
  normalised attention ``phi(q) phi(k)^T`` applied to ``v`` without forming the N x N matrix, so the
  cost is linear in the number of tokens N;
- **rank restoration**: a depthwise convolution (kernel 5 by default) on ``v`` over the patch grid,
  added to the attention output (prefix tokens such as the class token get no convolution term).

Choices of this implementation (each keeps pruning exact):

- the norms of the focusing function run over each head's channels (the official code takes them
  over all heads' channels at once), so heads are independent: removing a head, or a q/k channel of
  one head, changes nothing in the others;
- ``ReLU(x)`` is not shifted by a small constant before focusing (the official code adds 1e-6);
  a small constant guards the divisions instead, so a zeroed q/k channel contributes exactly
  nothing, as a removed one does;
- the depthwise convolution has one kernel per head and value channel (``H * v`` channels; the
  official code shares one kernel per channel across heads), so each head keeps its own value
  channels under pruning.

Parameters: the fused ``qkv`` (rows ``[q | k | v]``, head-major, as timm's attention), ``proj``,
``focus_scale`` (``H * qk``, channel ``h * qk + d``) and ``dwc`` (``H * v`` channels, channel
``h * v + d``, the same numbering as ``proj``'s input columns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import PrunedAttention

EPS = 1e-6


class FocusedLinearAttention(PrunedAttention):
    """Focused linear attention with explicit widths (heads, q/k and v channels per head).

    Built by timm's ``Block`` (``attn_layer``: ``dim`` and ``num_heads`` give ``dim // num_heads``
    channels per head) or with ``qk_dim`` / ``v_dim`` for a pruned block. ``grid_size`` and
    ``num_prefix_tokens`` (set by the model) say where the patch tokens are for the convolution.
    ``scale`` is kept for the ``PrunedAttention`` interface; linear attention does not use it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type | None = None,
        *,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        grid_size: tuple[int, int] = (1, 1),
        num_prefix_tokens: int = 0,
        device=None,
        dtype=None,
    ):
        if qk_norm or scale_norm:
            raise ValueError("focused linear attention has no q/k norm or output norm")
        head_dim = dim // num_heads
        qk, v = qk_dim or head_dim, v_dim or head_dim
        super().__init__(
            dim,
            num_heads,
            qk,
            v,
            1.0,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            device=device,
            dtype=dtype,
        )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the depthwise convolution needs an odd kernel size, got {kernel_size}")
        self.focusing_factor = float(focusing_factor)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.focus_scale = nn.Parameter(torch.zeros(num_heads * qk, device=device, dtype=dtype))
        c = num_heads * v
        self.dwc = nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c, device=device, dtype=dtype)

    @property
    def kernel_size(self) -> int:
        return int(self.dwc.kernel_size[0])

    def set_kernel_size(self, kernel_size: int) -> None:
        """Replace the depthwise convolution by one with another (odd) kernel size."""
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the depthwise convolution needs an odd kernel size, got {kernel_size}")
        old = self.dwc
        c = old.in_channels
        w = old.weight
        self.dwc = nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c, device=w.device, dtype=w.dtype)

    # ------------------------------------------------------------------------------ pieces
    def focus(self, x: torch.Tensor, eps: float = EPS) -> torch.Tensor:
        """``phi_p`` of queries or keys [B, H, N, qk] (norms over each head's channels)."""
        s = F.softplus(self.focus_scale).reshape(self.num_heads, 1, self.qk_dim)
        r = F.relu(x) / s
        rp = r.pow(self.focusing_factor)
        norm = torch.linalg.vector_norm
        return rp * (norm(r, dim=-1, keepdim=True) / (norm(rp, dim=-1, keepdim=True) + eps))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Focused q, k [B, H, N, qk] and v [B, H, N, v] of the input tokens ``x`` [B, N, C]."""
        q, k, v = self.split_heads(x)
        return self.focus(q), self.focus(k), v

    @staticmethod
    def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = EPS) -> torch.Tensor:
        """``q (k^T v) / (q . sum_j k_j)`` per head, from focused q, k and v: [B, H, N, v].

        Three matrix products, each linear in the number of tokens: ``k^T v`` (qk x v per token),
        ``q (k^T v)`` (qk x v per token) and the normaliser ``q . mean_j k_j`` (qk per token)."""
        k = k / k.shape[-2]  # means instead of sums: the same ratio, smaller numbers
        kv = k.transpose(-2, -1) @ v
        z = q @ k.sum(-2, keepdim=True).transpose(-2, -1)
        return (q @ kv) / (z + eps)

    def local(self, v: torch.Tensor) -> torch.Tensor:
        """The depthwise convolution of the patch tokens' values: [B, H, patches, v]."""
        B, H, _, d = v.shape
        gh, gw = self.grid_size
        x = v[:, :, self.num_prefix_tokens :].transpose(-2, -1).reshape(B, H * d, gh, gw)
        return self.dwc(x).reshape(B, H, d, gh * gw).transpose(-2, -1)

    def head_values(self, x: torch.Tensor) -> torch.Tensor:
        """Every head's output before the projection: [B, H, N, v]."""
        q, k, v = self.features(x)
        out = self.linear_attention(q, k, v)
        p = self.num_prefix_tokens
        if p:
            return torch.cat([out[:, :, :p], out[:, :, p:] + self.local(v)], dim=2)
        return out + self.local(v)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("focused linear attention takes no attention mask")
        return self.merge_heads(self.head_values(x))

    # ---------------------------------------------------------------------- for the methods
    def qk_removal_effect(self, x: torch.Tensor) -> torch.Tensor:
        """How much each q/k channel matters to its head: [H, qk], entry (h, d) the Frobenius norm
        of the change of head h's attention output (``linear_attention``, summed over the batch's
        images) when channel d is removed from q and k."""
        q, k, v = self.split_heads(x)
        full = self.linear_attention(self.focus(q), self.focus(k), v)
        out = torch.empty(self.num_heads, self.qk_dim, dtype=torch.float64, device=x.device)
        keep = torch.ones(self.qk_dim, dtype=q.dtype, device=q.device)
        for d in range(self.qk_dim):
            keep[d] = 0.0
            o = self.linear_attention(self.focus(q * keep), self.focus(k * keep), v)
            keep[d] = 1.0
            out[:, d] = (o - full).square().sum(dim=(-2, -1)).sqrt().sum(0).to(torch.float64)
        return out

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, "
            f"focusing_factor={self.focusing_factor:g}, kernel_size={self.kernel_size}, grid={self.grid_size}, "
            f"prefix_tokens={self.num_prefix_tokens}"
        )
