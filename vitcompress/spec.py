"""The per-block shape manifest of a (pruned) ViT, and how to rebuild a module tree from it.

A ``ViTSpec`` plus the ``SourceModel`` it came from is enough to build an empty model with exactly
the right tensor shapes; loading the artifact's safetensors into it gives the pruned model back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import timm
import torch
from torch import nn

from .layers import PrunedAttention, attention_dims
from .models import SourceModel


@dataclass
class BlockSpec:
    """Widths of one transformer block; ``source_index`` is its index in the unpruned model."""

    source_index: int
    num_heads: int
    qk_dim: int
    v_dim: int
    mlp_hidden: int
    scale: float


@dataclass
class ViTSpec:
    """Embedding width plus one ``BlockSpec`` per kept block, in order."""

    embed_dim: int
    blocks: list[BlockSpec] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict:
        return {"embed_dim": self.embed_dim, "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict) -> ViTSpec:
        return cls(embed_dim=int(d["embed_dim"]), blocks=[BlockSpec(**b) for b in d["blocks"]])


def spec_from_model(model: nn.Module) -> ViTSpec:
    """Read the spec off a timm ViT whose blocks hold timm or pruned attention."""
    old = getattr(model, "vitcompress_spec", None)
    blocks = []
    for i, blk in enumerate(model.blocks):
        h, qk, v, scale = attention_dims(blk.attn)
        src = old.blocks[i].source_index if old is not None and len(old.blocks) == len(model.blocks) else i
        blocks.append(BlockSpec(src, h, qk, v, blk.mlp.fc1.out_features, scale))
    return ViTSpec(model.embed_dim, blocks)


def _norm_layer_of(attn: nn.Module):
    if isinstance(attn.q_norm, nn.Identity):
        return None
    return type(attn.q_norm)


def build_model(source: SourceModel, spec: ViTSpec, device: str | torch.device = "meta") -> nn.Module:
    """An uninitialised model with the spec's shapes (on ``device``, meta by default).

    Load weights with ``model.load_state_dict(state, assign=True)``. The timm model is created with
    ``num_heads=1`` so any embedding width is accepted, then every block's attention and MLP
    projections are replaced by modules of the spec's widths.
    """
    kwargs = dict(source.kwargs)
    kwargs.update(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=1)
    with torch.device(device):
        model = timm.create_model(source.name, pretrained=False, **kwargs)
        for blk, bs in zip(model.blocks, spec.blocks):
            old = blk.attn
            qk_norm = not isinstance(old.q_norm, nn.Identity)
            blk.attn = PrunedAttention(
                spec.embed_dim,
                bs.num_heads,
                bs.qk_dim,
                bs.v_dim,
                bs.scale,
                qkv_bias=old.qkv.bias is not None,
                proj_bias=old.proj.bias is not None,
                qk_norm=qk_norm,
                norm_layer=_norm_layer_of(old),
                attn_drop=old.attn_drop.p,
                proj_drop=old.proj_drop.p,
            )
            fc1, fc2 = blk.mlp.fc1, blk.mlp.fc2
            blk.mlp.fc1 = nn.Linear(spec.embed_dim, bs.mlp_hidden, bias=fc1.bias is not None)
            blk.mlp.fc2 = nn.Linear(bs.mlp_hidden, spec.embed_dim, bias=fc2.bias is not None)
    model.vitcompress_source = source
    model.vitcompress_spec = spec
    return model
