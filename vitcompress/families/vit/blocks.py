"""The two block layouts of the ViT family, and the widths of a block of either.

- **serial** (timm ``Block``, and ``ResPostBlock`` whose norms follow the branches): ``norm1``, a
  fused-``qkv`` attention ``attn`` (timm ``Attention`` or ``PrunedAttention``: ``qkv``, optional
  ``q_norm``/``k_norm`` per head, optional output norm ``norm`` over the heads' outputs, ``proj``),
  ``ls1``, ``norm2``, an MLP ``mlp`` (``Mlp``, gated ``GluMlp`` with ``fc1`` rows ``[x1 | x2]``, or
  ``SwiGLU`` with ``fc1_g``/``fc1_x``; optional hidden norm ``norm``), ``ls2``;
- **parallel** (timm ``ParallelScalingBlock`` or ``PrunedParallelBlock``): ``in_norm``, one input
  projection ``in_proj`` with rows ``[mlp | q | k | v]`` (q/k/v head-major), ``mlp_bias`` when the
  projection has no bias, ``q_norm``/``k_norm``, ``attn_out_proj`` and ``mlp_out_proj`` (or one
  ``out_proj`` over ``[attention | mlp]``), ``ls``.
"""

from __future__ import annotations

from timm.layers import GluMlp, SwiGLU
from timm.models.vision_transformer import Block, ParallelScalingBlock, ResPostBlock
from torch import nn

from ...layers import attention_dims
from .modules import PrunedParallelBlock, mlp_hidden

SERIAL = (Block, ResPostBlock)
PARALLEL = (ParallelScalingBlock, PrunedParallelBlock)


def is_parallel(block: nn.Module) -> bool:
    return isinstance(block, PARALLEL)


def block_dims(block: nn.Module) -> tuple[int, int, int, float, int]:
    """(heads, q/k dim, v dim, softmax scale, MLP neurons) of a block of either layout."""
    if isinstance(block, PrunedParallelBlock):
        return block.num_heads, block.qk_dim, block.v_dim, block.scale, block.hidden
    if isinstance(block, ParallelScalingBlock):
        return block.num_heads, block.head_dim, block.head_dim, float(block.scale), block.in_split[0]
    h, qk, v, scale = attention_dims(block.attn)
    return h, qk, v, scale, mlp_hidden(block.mlp)


def fc1_names(mlp: nn.Module) -> tuple[str, ...]:
    """The MLP's input projections (whose rows are its neurons)."""
    return ("fc1_g", "fc1_x") if isinstance(mlp, SwiGLU) else ("fc1",)


def fc1_rows(mlp: nn.Module) -> int:
    """Rows of the input projection(s) per neuron: 2 for a gated MLP."""
    return 2 if isinstance(mlp, (GluMlp, SwiGLU)) else 1


# parameters of a block that run along the residual stream (their residual axis), per layout
SERIAL_EMBED_AXES = {
    "norm1.weight": 0,
    "norm1.bias": 0,
    "attn.qkv.weight": 1,
    "attn.proj.weight": 0,
    "attn.proj.bias": 0,
    "ls1.gamma": 0,
    "norm2.weight": 0,
    "norm2.bias": 0,
    "mlp.fc1.weight": 1,
    "mlp.fc1_g.weight": 1,
    "mlp.fc1_x.weight": 1,
    "mlp.fc2.weight": 0,
    "mlp.fc2.bias": 0,
    "ls2.gamma": 0,
    "gamma_1": 0,  # EVA blocks' layer scales and separate q/k/v projections
    "gamma_2": 0,
    "attn.q_proj.weight": 1,
    "attn.k_proj.weight": 1,
    "attn.v_proj.weight": 1,
}
PARALLEL_EMBED_AXES = {
    "in_norm.weight": 0,
    "in_norm.bias": 0,
    "in_proj.weight": 1,
    "attn_out_proj.weight": 0,
    "attn_out_proj.bias": 0,
    "mlp_out_proj.weight": 0,
    "mlp_out_proj.bias": 0,
    "out_proj.weight": 0,
    "out_proj.bias": 0,
    "ls.gamma": 0,
}


def embed_axes(block: nn.Module) -> dict[str, int]:
    """Residual axis of each of ``block``'s parameters on the residual stream (block-relative names)."""
    return PARALLEL_EMBED_AXES if is_parallel(block) else SERIAL_EMBED_AXES


def norm_paths(block: nn.Module) -> list[str]:
    """The block's norms over the residual width (block-relative)."""
    return ["in_norm"] if is_parallel(block) else ["norm1", "norm2"]
