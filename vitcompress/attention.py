"""The attention core: softmax attention of per-head q, k and v, with the terms every family adds.

Every softmax attention of a vitcompress model runs through ``attention``: ``PrunedAttention``
(``layers.py``) and EVA's subclass of it (rotary embeddings), Swin's ``PrunedWindowAttention``
(relative-position bias, shifted-window mask), the ViT family's ``PrunedParallelBlock`` and
``PrunedAttentionPool``, and the token reducers' attention (``tokens/attention.py``: the log-size
bias of proportional attention). A module computes its q, k, v (its projection layout and q/k norms
are its own), calls ``attention`` with the terms it has, and projects the merged heads. The per-head
reads of the pruning methods (``head_outputs``) use ``attention_probs``, the same logits.

With ``q`` ``[B, H, Nq, qk]``, ``k`` ``[B, H, Nk, qk]``, ``v`` ``[B, H, Nk, v]``:

1. ``rope`` (``[N - rope_prefix, 2 * qk]``, ``[sin | cos]``): q and k of every token after the first
   ``rope_prefix`` are rotated (timm's ``apply_rot_embed_cat``; ``rope_half``: the half-split
   layout), then cast back to v's dtype;
2. logits ``(q * scale) @ k^T``; ``scale=None`` is ``1 / sqrt(qk)``, the default of
   ``F.scaled_dot_product_attention`` (a pruned attention passes its stored unpruned scale);
3. ``+ bias``: an additive term broadcast to ``[B, H, Nq, Nk]`` (a relative-position bias
   ``[1, H, N, N]``; the log token sizes ``[B, 1, 1, Nk]`` of proportional attention);
4. ``+ window_mask``: the shifted-window mask ``[num_windows, N, N]`` of windows laid out
   batch-major (``B = images * num_windows``), the same for every head;
5. ``is_causal``: keys after the query are masked; ``attn_mask``: a boolean mask (False: masked)
   or an additive term;
6. softmax over the keys, dropout ``dropout_p`` (pass 0 outside training), ``@ v``.

``fused=True`` runs steps 2-6 in ``F.scaled_dot_product_attention``, the terms of steps 3-5
summed into its ``attn_mask`` (``is_causal`` passed through); ``fused=False`` runs them as written
above, in that order (the path the flop counter measures; exported graphs of it keep this order).
Both paths give the same result within float rounding.

``split_heads``, ``split_qkv`` and ``merge_heads`` are the head layout shared by the modules: a
fused ``qkv`` projection's output is ``[q (head-major) | k (head-major) | v (head-major)]``, timm's
order. The functions are TorchScript-compatible (no keyword-only parameters), so scripted models
compile them.
"""

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import apply_rot_embed_cat


def split_heads(x: torch.Tensor, num_heads: int, width: int) -> torch.Tensor:
    """``[B, N, num_heads * width]`` (head-major) -> ``[B, num_heads, N, width]``."""
    B, N, _ = x.shape
    return x.reshape(B, N, num_heads, width).transpose(1, 2)


def split_qkv(
    qkv: torch.Tensor, num_heads: int, qk_dim: int, v_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused ``[q | k | v]`` projection ``[B, N, H * (2 qk + v)]`` -> q, k ``[B, H, N, qk]``, v ``[B, H, N, v]``."""
    q, k, v = qkv.split([num_heads * qk_dim, num_heads * qk_dim, num_heads * v_dim], dim=-1)
    return split_heads(q, num_heads, qk_dim), split_heads(k, num_heads, qk_dim), split_heads(v, num_heads, v_dim)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, v]`` -> ``[B, N, H * v]``, head-major (the input layout of the output projection)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


def rotate(x: torch.Tensor, rope: torch.Tensor, prefix: int = 0, half: bool = False) -> torch.Tensor:
    """Rotary embedding ``rope`` (``[sin | cos]``) applied to the tokens of ``x`` ``[B, H, N, d]`` after
    the first ``prefix`` (class and register tokens are not rotated)."""
    return torch.cat([x[:, :, :prefix], apply_rot_embed_cat(x[:, :, prefix:], rope, half=half)], 2)


def _masked(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    window_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
) -> torch.Tensor:
    """Steps 3-5 of the module docstring on explicit logits ``[B, H, Nq, Nk]``."""
    if bias is not None:
        logits = logits + bias
    if window_mask is not None:
        num_win, h, n, m = window_mask.shape[0], logits.shape[1], logits.shape[-2], logits.shape[-1]
        logits = logits.view(-1, num_win, h, n, m) + window_mask.unsqueeze(1).unsqueeze(0)
        logits = logits.view(-1, h, n, m)
    if is_causal:
        n = logits.shape[-1]
        causal = torch.ones(n, n, dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return logits


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    window_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """The attention probabilities ``[B, H, Nq, Nk]`` (steps 2-5 and the softmax, no dropout)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    logits = (q * scale) @ k.transpose(-2, -1)
    return _masked(logits, bias, window_mask, attn_mask, is_causal).softmax(dim=-1)


def sdpa_mask(
    bias: torch.Tensor | None,
    window_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    batch: int,
    num_heads: int,
    n: int,
) -> torch.Tensor | None:
    """Steps 3-5 (but ``is_causal``) as one ``attn_mask`` of ``F.scaled_dot_product_attention`` for
    ``batch`` x ``num_heads`` x ``n`` queries (None where there is no term; a lone ``attn_mask`` is
    passed as given)."""
    mask = bias
    if window_mask is not None:
        num_win = window_mask.shape[0]
        windows = window_mask.view(1, num_win, 1, n, n).expand(batch // num_win, -1, num_heads, -1, -1)
        windows = windows.reshape(-1, num_heads, n, n)
        mask = windows if mask is None else mask + windows
    if attn_mask is not None:
        if mask is None:
            mask = attn_mask
        elif attn_mask.dtype == torch.bool:
            mask = torch.where(attn_mask, mask, float("-inf"))
        else:
            mask = mask + attn_mask
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    fused: bool = True,
    dropout_p: float = 0.0,
    bias: torch.Tensor | None = None,
    window_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    rope: torch.Tensor | None = None,
    rope_prefix: int = 0,
    rope_half: bool = False,
) -> torch.Tensor:
    """Softmax attention ``[B, H, Nq, v]`` of per-head ``q``, ``k``, ``v`` with the terms of the module
    docstring; ``fused`` picks ``F.scaled_dot_product_attention`` or the explicit path."""
    if rope is not None:
        q = rotate(q, rope, rope_prefix, rope_half).type_as(v)
        k = rotate(k, rope, rope_prefix, rope_half).type_as(v)
    if fused:
        mask = sdpa_mask(bias, window_mask, attn_mask, q.shape[0], q.shape[1], q.shape[-2])
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
        )
    p = attention_probs(q, k, scale, bias, window_mask, attn_mask, is_causal)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p)
    return p @ v
