"""Attention forward for token-reducing blocks: output, class-token scores, keys, size bias.

The attention itself is the attention core's (``vitcompress.attention``); the log sizes are its ``bias``.

Works on timm ``Attention`` and on ``PrunedAttention`` (any heads, q/k width, v width, stored
scale): both lay the fused ``qkv`` output out as ``[q | k | v]``, head-major.

* ``bias`` (``[B, N]``, log token sizes) is added to every key's logits (proportional attention).
* Class-token scores come from the same q/k, scale and bias as the attention itself. With a class
  token they are one extra row, ``softmax(q_cls k^T * scale + bias)`` averaged over heads
  (``heads * N * qk_dim`` MACs, counted by ``tokens.counting``), so the main product can stay on
  the fused SDPA kernel. Without a class token (``global_pool='avg'`` models) the score of a token
  is the attention it receives averaged over heads and queries, which needs the explicit
  attention matrix (no extra MACs).
* ``metric`` is the keys of every head side by side (``[B, N, heads * qk_dim]``, before any
  per-head key norm), the similarity feature of token merging: the cosine of two tokens' metrics
  is the sum of their per-head key products over the product of their norms. A removed head or
  q/k dim adds nothing to either, so a width-pruned model merges exactly the tokens its masked
  original merges (keys *averaged* over heads would mix dims that pruning renumbers per head).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import attention, attention_probs, split_heads
from ..layers import attention_dims


def attend(
    attn: nn.Module,
    x: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    scores: bool = False,
    has_cls: bool = True,
    prefix: int = 1,
    metric: bool = False,
):
    """Return ``(out [B, N, C], scores [B, N - prefix] or None, metric [B, N, heads * qk] or None)``."""
    h, qk, vd, scale = attention_dims(attn)
    q, k, v = attn.qkv(x).split((h * qk, h * qk, h * vd), dim=-1)
    feature = k if metric else None  # [B, N, H*qk], head-major, before the key norm
    q = attn.q_norm(split_heads(q, h, qk))
    k = attn.k_norm(split_heads(k, h, qk))
    v = split_heads(v, h, vd)
    mask = None if bias is None else bias[:, None, None, :].to(q.dtype)  # [B, 1, 1, N]
    s = None
    if scores and not has_cls:
        p = attn.attn_drop(attention_probs(q, k, scale, bias=mask))
        out = p @ v
        s = p.mean(dim=(1, 2))[:, prefix:]
    else:
        out = attention(
            q,
            k,
            v,
            scale=scale,
            fused=attn.fused_attn,
            dropout_p=attn.attn_drop.p if attn.training else 0.0,
            bias=mask,
        )
        if scores:  # the class token's row: [B, H, 1, N]
            s = attention_probs(q[:, :, :1], k, scale, bias=mask).mean(dim=1)[:, 0, prefix:]
    out = torch.cat(out.unbind(1), dim=-1) if h > 1 else out[:, 0]  # [B, N, H*vd], head-major
    norm = getattr(attn, "norm", None)
    if norm is not None:
        out = norm(out)
    out = attn.proj_drop(attn.proj(out))
    return out, s, feature
