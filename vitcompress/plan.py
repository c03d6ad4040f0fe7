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

from .spec import MAX_INT, RecordError, Spec, as_dict, as_indices, as_list, need


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
    def from_dict(cls, d: dict, where: str = "layer") -> LayerPlan:
        """A layer of a record; ``RecordError`` naming the field for anything but lists of distinct
        indices >= 0 with one q/k and one v list per kept head."""
        heads = as_indices(need(d, "heads", where), f"{where}.heads")
        rows = {}
        for key in ("qk", "v"):
            raw = as_list(need(d, key, where), f"{where}.{key}")
            if len(raw) != len(heads):
                raise RecordError(f"{where}.{key} has {len(raw)} rows for {len(heads)} kept heads")
            rows[key] = [as_indices(r, f"{where}.{key}[{i}]") for i, r in enumerate(raw)]
        return cls(heads, rows["qk"], rows["v"], as_indices(need(d, "mlp", where), f"{where}.mlp"))


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
        """The record's plan; ``RecordError`` naming the field for a wrong type, a repeated or negative
        index, or a kept block without its layer (``check`` compares it with the spec)."""
        layers = {}
        for k, v in as_dict(need(d, "layers", "plan"), "plan.layers").items():
            if not k.isdigit() or int(k) > MAX_INT:
                raise RecordError(f"plan.layers key {k[:20]!r} is not a block index")
            layers[int(k)] = LayerPlan.from_dict(v, f"plan.layers.{k}")
        blocks = as_indices(need(d, "blocks", "plan"), "plan.blocks")
        missing = [b for b in blocks if b not in layers]
        if missing:
            raise RecordError(f"plan.layers has no entry for kept block {missing[0]}")
        stages = as_list(d.get("stage_embeds", []), "plan.stage_embeds")
        return cls(
            as_indices(need(d, "embed", "plan"), "plan.embed"),
            blocks,
            layers,
            [as_indices(e, f"plan.stage_embeds[{i}]") for i, e in enumerate(stages)],
        )

    def check(self, spec: Spec, source: Spec | None = None) -> None:
        """``RecordError`` unless the plan describes ``spec`` (one kept block per spec block, in
        order, with the spec's widths) and, given the ``source`` model's spec, keeps only
        structures the source has."""
        if self.blocks != [b.source_index for b in spec.blocks]:
            raise RecordError("plan.blocks do not match the spec's blocks (their source_index)")
        if len(self.embeds) != len(spec.stage_dims):
            raise RecordError(
                f"plan keeps channels of {len(self.embeds)} stage(s), the spec has {len(spec.stage_dims)}"
            )
        for s, (kept, dim) in enumerate(zip(self.embeds, spec.stage_dims)):
            if len(kept) != dim:
                raise RecordError(f"plan keeps {len(kept)} channels of stage {s}, the spec's width is {dim}")
        for b in spec.blocks:
            lp, at = self.layers[b.source_index], f"plan.layers.{b.source_index}"
            widths = {
                "heads": (len(lp.heads), b.num_heads),
                "qk": ({len(r) for r in lp.qk}, {b.qk_dim}),
                "v": ({len(r) for r in lp.v}, {b.v_dim}),
                "mlp": (len(lp.mlp), b.mlp_hidden),
            }
            for key, (got, want) in widths.items():
                if got != want:
                    raise RecordError(f"{at}.{key} keeps {got}, the spec says {want}")
        if source is None:
            return
        if len(source.stage_dims) != len(spec.stage_dims):
            raise RecordError(
                f"the spec has {len(spec.stage_dims)} stage(s), its source model {len(source.stage_dims)}"
            )
        for s, (kept, dim) in enumerate(zip(self.embeds, source.stage_dims)):
            if max(kept) >= dim:
                raise RecordError(f"plan keeps channel {max(kept)} of stage {s}, the source model has {dim}")
        for b in spec.blocks:
            i = b.source_index
            if i >= source.depth:
                raise RecordError(f"plan keeps block {i}, the source model has {source.depth}")
            lp, full, at = self.layers[i], source.blocks[i], f"plan.layers.{i}"
            limits = {
                "heads": (lp.heads, full.num_heads),
                "qk": ([d for r in lp.qk for d in r], full.qk_dim),
                "v": ([d for r in lp.v for d in r], full.v_dim),
                "mlp": (lp.mlp, full.mlp_hidden),
            }
            for key, (kept, n) in limits.items():
                if max(kept) >= n:
                    raise RecordError(f"{at}.{key} keeps index {max(kept)}, the source block has {n}")

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
