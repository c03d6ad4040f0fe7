"""What to keep: indices per coupling group, in the numbering of the model the plan applies to.

A plan is the output of the budget step and the input of the slicers. In an artifact it is stored
in the *source* model's numbering; ``compose`` maps a plan made on an already pruned model back to
that numbering, so iterative pruning keeps one consistent record.

``embed`` holds the kept channels of the (first) residual stream; a family with several stages
keeps the channels of stages 1, 2, ... in ``stage_embeds`` (``Plan.embeds`` lists all of them). The
JSON of a single-stream plan is unchanged: ``stage_embeds`` is written only when not empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import Spec


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
    stage_embeds: list[list[int]] = field(default_factory=list)

    @property
    def embeds(self) -> list[list[int]]:
        """Kept channels of every residual stream, stage by stage."""
        return [self.embed, *self.stage_embeds]

    def set_embed(self, stage: int, kept: list[int]) -> None:
        """Replace the kept channels of ``stage``."""
        if stage == 0:
            self.embed = kept
        else:
            self.stage_embeds[stage - 1] = kept

    def to_dict(self) -> dict:
        d = {
            "embed": self.embed,
            "blocks": self.blocks,
            "layers": {str(k): v.to_dict() for k, v in sorted(self.layers.items())},
        }
        if self.stage_embeds:
            d["stage_embeds"] = self.stage_embeds
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            [int(i) for i in d["embed"]],
            [int(i) for i in d["blocks"]],
            {int(k): LayerPlan.from_dict(v) for k, v in d["layers"].items()},
            [[int(i) for i in s] for s in d.get("stage_embeds", [])],
        )

    def validate(self) -> None:
        """Structural sanity: nothing empty, per-head widths equal within a layer."""
        if not all(self.embeds) or not self.blocks:
            raise ValueError("a plan must keep at least one embedding channel per stage and one block")
        for b in self.blocks:
            lp = self.layers[b]
            if not lp.heads or not lp.mlp:
                raise ValueError(f"block {b} keeps no heads or no MLP neurons")
            if len(lp.qk) != len(lp.heads) or len(lp.v) != len(lp.heads):
                raise ValueError(f"block {b}: per-head dims do not match the kept heads")
            if len({len(r) for r in lp.qk}) != 1 or len({len(r) for r in lp.v}) != 1 or not lp.qk[0] or not lp.v[0]:
                raise ValueError(f"block {b}: every head must keep the same, non-zero number of dims")


def full_plan(spec: Spec) -> Plan:
    """The plan that keeps every element of a model with this spec (block ``i`` is numbered ``i``)."""
    layers = {
        i: LayerPlan(
            list(range(b.num_heads)),
            [list(range(b.qk_dim)) for _ in range(b.num_heads)],
            [list(range(b.v_dim)) for _ in range(b.num_heads)],
            list(range(b.mlp_hidden)),
        )
        for i, b in enumerate(spec.blocks)
    }
    dims = [list(range(d)) for d in spec.stage_dims]
    return Plan(dims[0], list(range(spec.depth)), layers, dims[1:])


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
    embeds = [[o[c] for c in i] for o, i in zip(outer.embeds, inner.embeds)]
    return Plan(embeds[0], blocks, layers, embeds[1:])
