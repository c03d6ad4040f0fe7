"""Modules of pruned ViTs whose timm counterparts derive their widths from the embedding width.

``PrunedAttentionPool`` is timm's ``AttentionPoolLatent`` (``global_pool='map'``, SigLIP) with the
pool's inner width and heads kept while its input and output (the residual stream) shrink;
``PrunedParallelBlock`` is timm's ``ParallelScalingBlock`` (ViT-22B style: one fused input projection
``[mlp | q | k | v]`` for the MLP and the attention) with explicit per-block widths and softmax scale.
Both keep timm's parameter names, so state dicts map onto them without renaming, and run their
softmax attention in the attention core (``vitcompress.attention``). ``mlp_like``
rebuilds any of timm's MLPs (``Mlp``, ``GluMlp``, ``SwiGLU``) at another width.
"""

import copy
from typing import Final

import torch
from timm.layers import GluMlp, LayerScale, Mlp, SwiGLU, use_fused_attn
from torch import nn

from ...attention import attention, merge_heads
from ...layers import norm_like


def mlp_hidden(mlp: nn.Module) -> int:
    """Hidden neurons of an MLP: the input width of ``fc2`` (a gated MLP's ``fc1`` has two rows per
    neuron)."""
    return int(mlp.fc2.in_features)


def mlp_like(mlp: nn.Module, dim: int, hidden: int) -> nn.Module:
    """An MLP of ``mlp``'s class, activation, norm, biases and dropouts with input/output width ``dim``
    and ``hidden`` neurons (uninitialised where built under a meta device)."""
    bias = (mlp.fc2.bias is not None,)
    if isinstance(mlp, SwiGLU):
        new: nn.Module = SwiGLU(dim, hidden, bias=(mlp.fc1_g.bias is not None, *bias))
    elif isinstance(mlp, GluMlp):
        new = GluMlp(dim, 2 * hidden, bias=(mlp.fc1.bias is not None, *bias), gate_last=mlp.gate_last)
    elif isinstance(mlp, Mlp):
        new = Mlp(dim, hidden, bias=(mlp.fc1.bias is not None, *bias))
    else:
        raise TypeError(f"don't know how to rebuild {type(mlp).__name__}")
    new.act = copy.deepcopy(mlp.act)
    new.drop1.p, new.drop2.p = mlp.drop1.p, mlp.drop2.p
    if not isinstance(mlp.norm, nn.Identity):
        new.norm = norm_like(mlp.norm, hidden)
    return new


class PrunedAttentionPool(nn.Module):
    """Attention pooling with a learned latent query (timm ``AttentionPoolLatent``, ``pool='token'``
    or ``'avg'``) whose residual width ``dim`` is independent of its inner width ``inner``.

    ``latent [1, L, dim]`` -> ``q`` (dim -> inner), tokens -> ``kv`` (dim -> 2 inner), ``heads`` heads
    of ``inner // heads``, ``proj`` (inner -> dim), then ``x + mlp(norm(x))`` on the residual width.
    """

    fused_attn: Final[bool]

    def __init__(
        self,
        dim: int,
        inner: int,
        heads: int,
        hidden: int,
        latent_len: int = 1,
        qkv_bias: bool = True,
        qk_norm: nn.Module | None = None,
        norm: nn.Module | None = None,
        act: nn.Module | None = None,
        pool_type: str = "token",
    ):
        super().__init__()
        self.num_heads = heads
        self.head_dim = inner // heads
        self.inner = inner
        self.scale = self.head_dim**-0.5
        self.pool = pool_type
        self.latent_len = latent_len
        self.fused_attn = use_fused_attn()
        self.latent = nn.Parameter(torch.zeros(1, latent_len, dim))
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * inner, bias=qkv_bias)
        self.q_norm = norm_like(qk_norm, self.head_dim) if qk_norm is not None else nn.Identity()
        self.k_norm = norm_like(qk_norm, self.head_dim) if qk_norm is not None else nn.Identity()
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.norm = norm_like(norm, dim) if norm is not None else nn.Identity()
        self.mlp = Mlp(dim, hidden, out_features=dim)
        if act is not None:
            self.mlp.act = copy.deepcopy(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, self.latent_len, h, hd).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        # scale=None: SDPA's default, as in timm's pool (the explicit path's head_dim**-0.5 is self.scale)
        x = attention(q, k, v, scale=None, fused=self.fused_attn)
        x = self.proj_drop(self.proj(merge_heads(x)))
        x = x + self.mlp(self.norm(x))
        if self.pool == "token":
            return x[:, 0]
        if self.pool == "avg":
            return x.mean(1)
        return x

    def extra_repr(self) -> str:
        return f"inner={self.inner}, heads={self.num_heads}, latent_len={self.latent_len}, pool={self.pool!r}"


class PrunedParallelBlock(nn.Module):
    """timm's ``ParallelScalingBlock`` with explicit widths: ``y = in_proj(in_norm(x))`` split into the
    MLP's ``hidden`` pre-activations and ``num_heads`` heads of q, k (``qk_dim`` each) and v
    (``v_dim``); ``x + ls(attn_out_proj(attention) + mlp_out_proj(act(mlp)))`` (or one fused
    ``out_proj`` over ``[attention | mlp]``). ``scale`` is stored, as in ``PrunedAttention``.
    """

    fused_attn: Final[bool]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        v_dim: int,
        hidden: int,
        scale: float,
        *,
        like: nn.Module,
    ):
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim, self.hidden = num_heads, qk_dim, v_dim, hidden
        self.head_dim = qk_dim
        self.scale = float(scale)
        self.fused_attn = use_fused_attn()
        self.in_split = [hidden, num_heads * qk_dim, num_heads * qk_dim, num_heads * v_dim]
        qkv_bias = like.in_proj.bias is not None
        self.in_norm = norm_like(like.in_norm, dim)
        self.in_proj = nn.Linear(dim, sum(self.in_split), bias=qkv_bias)
        if like.mlp_bias is None:
            self.register_parameter("mlp_bias", None)
        else:
            self.mlp_bias = nn.Parameter(torch.zeros(hidden))
        qk = not isinstance(like.q_norm, nn.Identity)
        self.q_norm = norm_like(like.q_norm, qk_dim) if qk else nn.Identity()
        self.k_norm = norm_like(like.k_norm, qk_dim) if qk else nn.Identity()
        self.attn_drop = nn.Dropout(like.attn_drop.p)
        self.mlp_drop = nn.Dropout(like.mlp_drop.p)
        self.mlp_act = copy.deepcopy(like.mlp_act)
        attn_dim = num_heads * v_dim
        if like.out_proj is not None:
            self.out_proj = nn.Linear(attn_dim + hidden, dim, bias=like.out_proj.bias is not None)
            self.attn_out_proj = self.mlp_out_proj = None
        else:
            self.out_proj = None
            self.attn_out_proj = nn.Linear(attn_dim, dim, bias=like.attn_out_proj.bias is not None)
            self.mlp_out_proj = nn.Linear(hidden, dim, bias=like.mlp_out_proj.bias is not None)
        self.ls = LayerScale(dim) if isinstance(like.ls, LayerScale) else nn.Identity()
        self.drop_path = copy.deepcopy(like.drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        x_mlp, q, k, v = torch.split(self.in_proj(self.in_norm(x)), self.in_split, dim=-1)
        if self.mlp_bias is not None:
            x_mlp = x_mlp + self.mlp_bias
        q = self.q_norm(q.view(B, N, self.num_heads, self.qk_dim)).transpose(1, 2)
        k = self.k_norm(k.view(B, N, self.num_heads, self.qk_dim)).transpose(1, 2)
        v = v.view(B, N, self.num_heads, self.v_dim).transpose(1, 2)
        x_attn = attention(
            q,
            k,
            v,
            scale=self.scale,
            fused=self.fused_attn,
            dropout_p=self.attn_drop.p if self.training else 0.0,
            attn_mask=attn_mask,
            is_causal=is_causal,
        )
        x_attn = merge_heads(x_attn)
        x_mlp = self.mlp_drop(self.mlp_act(x_mlp))
        if self.out_proj is not None:
            y = self.out_proj(torch.cat((x_attn, x_mlp), dim=-1))
        else:
            y = self.attn_out_proj(x_attn) + self.mlp_out_proj(x_mlp)
        return x + self.drop_path(self.ls(y))

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, qk_dim={self.qk_dim}, v_dim={self.v_dim}, hidden={self.hidden}, "
            f"scale={self.scale:.6g}, fused_attn={self.fused_attn}"
        )
