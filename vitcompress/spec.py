"""The shape manifest of a (pruned) model: where it came from, its residual widths and its blocks.

A ``Spec`` plus the ``SourceModel`` it came from is enough for the model's family
(``vitcompress.families``) to build an empty model with exactly the right tensor shapes; loading the
artifact's safetensors into it gives the pruned model back. A spec is always read off the modules
(``Family.spec``), never kept beside them.

A plain ViT has one residual stream (``stage_dims == [embed_dim]``); a family with several stages
(each with its own residual width, as in Swin) lists one width per stage and tags each block with
its stage. ``BlockSpec.extra`` holds per-block settings of a family that must survive depth pruning
(for example a window shift); it is stored in the artifact only when not empty, so the JSON of a
plain ViT is what it always was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SourceModel:
    """How to rebuild the unpruned model: a timm model name and the keyword arguments it was
    created with (JSON-serialisable; never includes weights)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict) -> SourceModel:
        return cls(name=d["name"], kwargs=dict(d.get("kwargs", {})))


@dataclass
class BlockSpec:
    """Widths of one transformer block; ``source_index`` is its index in the unpruned model.

    ``num_heads``, ``qk_dim`` (per head), ``v_dim`` (per head) and ``mlp_hidden`` count the block's
    elements; ``scale`` is the softmax scale (kept from the unpruned model); ``stage`` the residual
    stream the block lives on; ``extra`` family settings of the block (JSON values).
    """

    source_index: int
    num_heads: int
    qk_dim: int
    v_dim: int
    mlp_hidden: int
    scale: float
    stage: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "source_index": self.source_index,
            "num_heads": self.num_heads,
            "qk_dim": self.qk_dim,
            "v_dim": self.v_dim,
            "mlp_hidden": self.mlp_hidden,
            "scale": self.scale,
        }
        if self.stage:
            d["stage"] = self.stage
        if self.extra:
            d["extra"] = copy.deepcopy(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BlockSpec:
        return cls(
            int(d["source_index"]),
            int(d["num_heads"]),
            int(d["qk_dim"]),
            int(d["v_dim"]),
            int(d["mlp_hidden"]),
            float(d["scale"]),
            int(d.get("stage", 0)),
            dict(d.get("extra", {})),
        )


def copy_block(b: BlockSpec) -> BlockSpec:
    """A shallow copy of a block spec (of any ``BlockSpec`` subclass), cheaply."""
    new = object.__new__(type(b))
    new.__dict__.update(b.__dict__)
    return new


@dataclass
class Spec:
    """Residual width of every stage plus one ``BlockSpec`` per kept block, in order."""

    stage_dims: list[int]
    blocks: list[BlockSpec] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.stage_dims, int):  # Spec(embed_dim, blocks): one residual stream
            self.stage_dims = [self.stage_dims]

    @property
    def embed_dim(self) -> int:
        """Width of the first (for a plain ViT: the only) residual stream."""
        return self.stage_dims[0]

    @embed_dim.setter
    def embed_dim(self, value: int) -> None:
        self.stage_dims[0] = int(value)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def dim_of(self, block: BlockSpec) -> int:
        """Residual width of the stage ``block`` lives on."""
        return self.stage_dims[block.stage]

    def copy(self) -> Spec:
        """An independent copy (block ``extra`` dicts are shared: they are never changed in place)."""
        return Spec(list(self.stage_dims), [copy_block(b) for b in self.blocks])

    def to_dict(self) -> dict:
        widths = {"embed_dim": self.embed_dim} if len(self.stage_dims) == 1 else {"stage_dims": list(self.stage_dims)}
        return {**widths, "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        dims = [int(x) for x in d["stage_dims"]] if "stage_dims" in d else [int(d["embed_dim"])]
        return cls(dims, [BlockSpec.from_dict(b) for b in d["blocks"]])
