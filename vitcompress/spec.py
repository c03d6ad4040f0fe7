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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: upper bound of any width, index or count read from a record (a sanity bound far above real models)
MAX_INT = 2**31 - 1


class RecordError(ValueError):
    """A field of an artifact record (``vitcompress.json``) with a wrong type or an impossible value;
    the message names the field (``spec.blocks[2].scale``) and what is wrong with it."""


def need(d: Any, key: str, where: str) -> Any:
    """``d[key]`` of a JSON object ``d`` found at ``where``."""
    if not isinstance(d, dict):
        raise RecordError(f"{where or 'the record'} is {_kind(d)}, not an object")
    if key not in d:
        raise RecordError(f"{_at(where, key)} is missing")
    return d[key]


def as_int(v: Any, where: str, low: int = 0, high: int = MAX_INT) -> int:
    """``v`` when it is a JSON integer in ``[low, high]``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"{where} is {_kind(v)}, not an integer")
    if not low <= v <= high:
        raise RecordError(f"{where} is {v}, outside {low}..{high}")
    return v


def as_float(v: Any, where: str, *, positive: bool = False) -> float:
    """``v`` when it is a finite JSON number (> 0 with ``positive``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(f"{where} is {_kind(v)}, not a finite number")
    if positive and not v > 0:
        raise RecordError(f"{where} is {v}, not a positive number")
    return float(v)


#: the largest finite float32: a scale beyond it is infinite in the model, and the loss NaN
FLOAT32_MAX = 3.4028234663852886e38


def check_finite_json(v: Any, where: str, depth: int = 0) -> None:
    """``RecordError`` for a NaN or infinite number anywhere in the JSON value ``v`` (JSON has no
    such numbers: written back they would make a file other readers refuse), or nesting beyond 64."""
    if depth > 64:
        raise RecordError(f"{where} is nested more than 64 levels deep")
    if isinstance(v, float) and not math.isfinite(v):
        raise RecordError(f"{where} is {v}, not a finite number")
    if isinstance(v, dict):
        for k, x in v.items():
            check_finite_json(x, f"{where}.{str(k)[:20]}", depth + 1)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            check_finite_json(x, f"{where}[{i}]", depth + 1)


def as_dict(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise RecordError(f"{where} is {_kind(v)}, not an object")
    return v


def as_list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise RecordError(f"{where} is {_kind(v)}, not a list")
    return v


def as_indices(v: Any, where: str, high: int = MAX_INT) -> list[int]:
    """A list of distinct integers in ``[0, high)``."""
    out = [as_int(x, f"{where}[{i}]", 0, high - 1) for i, x in enumerate(as_list(v, where))]
    if len(set(out)) != len(out):
        raise RecordError(f"{where} repeats an index")
    return out


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(v: Any) -> str:
    """A short description of a JSON value for messages (``nan``, ``a string '3'``, ``a list``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f"a string {v[:20]!r}"
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    return repr(v)[:40]


#: what a creation option recorded in ``SourceModel.kwargs`` may hold, by kind (``check_kwargs``)
KWARG_KINDS = (
    "size", "count", "count0", "counts", "count|counts", "depth", "rate", "positive", "number?", "bool", "bool?", "str",
)  # fmt: skip


def check_kwarg(key: str, value: Any, kind: str, where: str = "source.kwargs") -> None:
    """Raise ``RecordError`` unless creation option ``key`` holds a value of ``kind``: ``size`` (an
    integer 1..65536 or a pair of them), ``count`` (1..2**24), ``count0`` (0..2**24), ``counts`` (a
    list of up to 64 counts, e.g. blocks per stage), ``count|counts`` (either), ``depth`` (1..1024), ``rate`` (a number in [0, 1)), ``positive`` (a number in (0, 2**24]), ``number?`` (a number or
    null), ``bool``, ``bool?`` (true, false or null), ``str``."""
    at = _at(where, key)
    if kind == "size":
        items = list(value) if isinstance(value, (list, tuple)) and len(value) == 2 else [value]
        for v in items:
            as_int(v, at, 1, 65536)
    elif kind in ("count", "count0", "depth"):
        as_int(value, at, 0 if kind == "count0" else 1, 1024 if kind == "depth" else 2**24)
    elif kind == "count|counts":
        check_kwarg(key, value, "counts" if isinstance(value, (list, tuple)) else "count", where)
    elif kind == "counts":
        items = value if isinstance(value, (list, tuple)) else None
        if items is None or not 1 <= len(items) <= 64:
            raise RecordError(f"{at} is {_kind(value)}, not a list of 1 to 64 integers")
        for i, v in enumerate(items):
            as_int(v, f"{at}[{i}]", 1, 2**24)
    elif kind == "rate":
        if not 0 <= as_float(value, at) < 1:
            raise RecordError(f"{at} is {value}, outside [0, 1)")
    elif kind == "positive":
        if as_float(value, at, positive=True) > 2**24:
            raise RecordError(f"{at} is {value}, above {2**24}")
    elif kind == "number?":
        if value is not None:
            as_float(value, at)
    elif kind in ("bool", "bool?"):
        if not (isinstance(value, bool) or (value is None and kind == "bool?")):
            raise RecordError(f"{at} is {_kind(value)}, not true or false")
    elif kind == "str":
        if not isinstance(value, str) or len(value) > 200:
            raise RecordError(f"{at} is {_kind(value)}, not a short string")
    else:
        raise ValueError(f"unknown creation option kind {kind!r}; use one of {', '.join(KWARG_KINDS)}")


def check_kwargs(
    kwargs: Mapping[str, Any], kinds: Mapping[str, str], family: str = "", where: str = "source.kwargs"
) -> None:
    """Raise ``RecordError`` for a creation option that is not in ``kinds`` (the options a family
    records: anything else, such as ``checkpoint_path``, is never passed to a model constructor) or
    whose value is not of its kind."""
    for key, value in kwargs.items():
        if key not in kinds:
            known = ", ".join(sorted(kinds))
            raise RecordError(
                f"{_at(where, str(key))} is not a creation option the {family or 'model'} family records (known: {known})"
            )
        check_kwarg(key, value, kinds[key], where)


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
        """The record's source; ``RecordError`` for a field of the wrong type (the family checks the
        keyword arguments' keys and values: ``Family.check_source``)."""
        name = need(d, "name", "source")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise RecordError(f"source.name is {_kind(name)}, not a model name")
        kwargs = as_dict(d.get("kwargs", {}), "source.kwargs")
        return cls(name=name, kwargs=dict(kwargs))


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
    def from_dict(cls, d: dict, where: str = "block") -> BlockSpec:
        """A block of a record; ``RecordError`` naming the field for a wrong type or an impossible
        width (every width at least 1, the scale a positive finite number)."""
        return cls(
            as_int(need(d, "source_index", where), f"{where}.source_index"),
            *(as_int(need(d, k, where), f"{where}.{k}", 1) for k in ("num_heads", "qk_dim", "v_dim", "mlp_hidden")),
            as_scale(need(d, "scale", where), f"{where}.scale"),
            as_int(d.get("stage", 0), f"{where}.stage"),
            dict(as_dict(d.get("extra", {}), f"{where}.extra")),
        )


def as_scale(v: Any, where: str) -> float:
    """A softmax scale: positive, finite and at most what a float32 model holds (``FLOAT32_MAX``)."""
    scale = as_float(v, where, positive=True)
    if scale > FLOAT32_MAX:
        raise RecordError(f"{where} is {v}, beyond the largest float32 ({FLOAT32_MAX:.4g})")
    return scale


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
        """The record's spec; ``RecordError`` naming the field for a wrong type, an empty block list,
        a width below 1 or a block on a stage the spec does not have."""
        if isinstance(d, dict) and "stage_dims" in d:
            dims = as_list(d["stage_dims"], "spec.stage_dims")
            dims = [as_int(x, f"spec.stage_dims[{i}]", 1) for i, x in enumerate(dims)]
            if not dims:
                raise RecordError("spec.stage_dims is empty")
        else:
            dims = [as_int(need(d, "embed_dim", "spec"), "spec.embed_dim", 1)]
        raw = as_list(need(d, "blocks", "spec"), "spec.blocks")
        if not raw:
            raise RecordError("spec.blocks is empty")
        blocks = [BlockSpec.from_dict(b, f"spec.blocks[{i}]") for i, b in enumerate(raw)]
        for i, b in enumerate(blocks):
            if b.stage >= len(dims):
                raise RecordError(f"spec.blocks[{i}].stage is {b.stage}, but the spec has {len(dims)} stage(s)")
        return cls(dims, blocks)
