"""What to keep: indices per coupling group, in the numbering of the model the plan applies to.

A plan is the output of the budget step and the input of the slicers. In an artifact it is stored
in the *source* model's numbering; ``compose`` maps a plan made on an already pruned model back to
that numbering, so iterative pruning keeps one consistent record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .layers import attention_dims


@dataclass
class LayerPlan:
    """Kept structures of one block: head indices, and per kept head its kept q/k and v dims."""

    heads: list[int]
    qk: list[list[int]]
    v: list[list[int]]
    mlp: list[int]

    def to_dict(self) -> dict:
        return {"heads": self.heads, "qk": self.qk, "v": self.v, "mlp": self.mlp}

    @classmethod
    def from_dict(cls, d: dict) -> LayerPlan:
        return cls(
            [int(i) for i in d["heads"]],
            [[int(i) for i in r] for r in d["qk"]],
            [[int(i) for i in r] for r in d["v"]],
            [int(i) for i in d["mlp"]],
        )


@dataclass
class Plan:
    """Kept residual channels, kept blocks (in order) and a ``LayerPlan`` per kept block."""

    embed: list[int]
    blocks: list[int]
    layers: dict[int, LayerPlan] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "embed": self.embed,
            "blocks": self.blocks,
            "layers": {str(k): v.to_dict() for k, v in sorted(self.layers.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            [int(i) for i in d["embed"]],
            [int(i) for i in d["blocks"]],
            {int(k): LayerPlan.from_dict(v) for k, v in d["layers"].items()},
        )

    def validate(self) -> None:
        """Structural sanity: nothing empty, per-head widths equal within a layer."""
        if not self.embed or not self.blocks:
            raise ValueError("a plan must keep at least one embedding channel and one block")
        for b in self.blocks:
            lp = self.layers[b]
            if not lp.heads or not lp.mlp:
                raise ValueError(f"block {b} keeps no heads or no MLP neurons")
            if len(lp.qk) != len(lp.heads) or len(lp.v) != len(lp.heads):
                raise ValueError(f"block {b}: per-head dims do not match the kept heads")
            if len({len(r) for r in lp.qk}) != 1 or len({len(r) for r in lp.v}) != 1 or not lp.qk[0] or not lp.v[0]:
                raise ValueError(f"block {b}: every head must keep the same, non-zero number of dims")


def identity_plan(model: nn.Module) -> Plan:
    """The plan that keeps everything of ``model``."""
    layers = {}
    for i, blk in enumerate(model.blocks):
        h, qk, v, _ = attention_dims(blk.attn)
        layers[i] = LayerPlan(
            list(range(h)),
            [list(range(qk)) for _ in range(h)],
            [list(range(v)) for _ in range(h)],
            list(range(blk.mlp.fc1.out_features)),
        )
    return Plan(list(range(model.embed_dim)), list(range(len(model.blocks))), layers)


def compose(outer: Plan, inner: Plan) -> Plan:
    """``inner`` is in the numbering of the model produced by ``outer``; return it in ``outer``'s
    input numbering (kept structures of both prunings)."""
    layers = {}
    blocks = []
    for j in inner.blocks:
        src_block = outer.blocks[j]
        blocks.append(src_block)
        o, n = outer.layers[src_block], inner.layers[j]
        layers[src_block] = LayerPlan(
            heads=[o.heads[h] for h in n.heads],
            qk=[[o.qk[h][d] for d in n.qk[hi]] for hi, h in enumerate(n.heads)],
            v=[[o.v[h][d] for d in n.v[hi]] for hi, h in enumerate(n.heads)],
            mlp=[o.mlp[m] for m in n.mlp],
        )
    return Plan([outer.embed[c] for c in inner.embed], blocks, layers)
