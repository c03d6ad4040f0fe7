"""Token-reduction schedules: which blocks reduce, and by how much.

Three forms (``parse_schedule``):

* ``KEEP@B1,B2,...`` - keep a fraction ``KEEP`` of the patch tokens at blocks B1, B2, ... (0-based);
  several groups are joined with ``;`` (``0.9@3;0.7@6,9``).
* ``rate=R`` or ``rate=R@S`` - a constant per-layer pruning rate: every block from ``S`` (default
  ``DEFAULT_RATE_START``) to the last keeps ``1 - R`` of the patch tokens entering it.
* ``merge=R`` or ``merge=R@S`` - ``tome`` only: merge ``R`` token pairs in every block from ``S``
  (default 0).

Token counts follow from a schedule by the integer rules of ``tokens/arithmetic.py``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from ..errors import VitCompressError
from ..spec import RecordError, as_dict, as_float, as_int, need
from .registry import REDUCERS

DEFAULT_RATE_START = 1  # block 0's class attention is nearly uniform: start one block later
KINDS = ("keep", "rate", "merge")
#: reducer options a schedule may carry (all switches): ``prop_attn`` for every reducer, ``vpa`` for topk-vpa
OPTIONS = ("prop_attn", "vpa")


@dataclass
class TokenSchedule:
    """A reducer and where/how much it reduces. Serialises to the artifact's ``tokens`` field.

    ``kind`` is ``keep`` (``keep[block] = fraction``), ``rate`` (``rate`` from ``start``) or
    ``merge`` (``merge`` pairs per block from ``start``). ``options`` are reducer options
    (for example ``{"vpa": False}`` for the ``topk-vpa`` ablation).
    """

    method: str
    kind: str
    keep: dict[int, float] = field(default_factory=dict)
    rate: float = 0.0
    merge: int = 0
    start: int = 0
    options: dict = field(default_factory=dict)
    spec: str = ""

    # ------------------------------------------------------------------ per-block view
    def block_keep(self, depth: int) -> list[float | None]:
        """Keep fraction per block (None: the block does not reduce); ``keep``/``rate`` kinds."""
        if self.kind == "keep":
            return [self.keep.get(i) for i in range(depth)]
        if self.kind == "rate":
            return [None if i < self.start else 1.0 - self.rate for i in range(depth)]
        return [None] * depth

    def block_merge(self, depth: int) -> list[int]:
        """Merges per block (``merge`` kind); 0 elsewhere."""
        if self.kind != "merge":
            return [0] * depth
        return [self.merge if i >= self.start else 0 for i in range(depth)]

    def reducing_blocks(self, depth: int) -> list[int]:
        if self.kind == "merge":
            return [i for i, r in enumerate(self.block_merge(depth)) if r > 0]
        return [i for i, k in enumerate(self.block_keep(depth)) if k is not None]

    def validate(self, depth: int) -> None:
        """One-line error for blocks the model does not have."""
        bad = [i for i in (list(self.keep) if self.kind == "keep" else [self.start]) if not 0 <= i < depth]
        if bad:
            raise VitCompressError(
                f"token schedule {self.spec or self.kind!r} names block {bad[0]}, but the model has blocks "
                f"0..{depth - 1}; use block indices below {depth}"
            )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep"] = {str(k): v for k, v in self.keep.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "tokens") -> TokenSchedule:
        """A schedule written by ``to_dict``; ``RecordError`` naming the field for an unknown key or
        reducer, a wrong type or an out-of-range amount (keep fractions in (0, 1], rate in [0, 1),
        merges and start block integers >= 0)."""
        as_dict(d, where)
        names = ("method", "kind", "keep", "rate", "merge", "start", "options", "spec")
        unknown = [k for k in d if k not in names]
        if unknown:
            raise RecordError(f"{where}.{str(unknown[0])[:20]} is not a schedule field (known: {', '.join(names)})")
        method, kind = need(d, "method", where), need(d, "kind", where)
        if not isinstance(method, str) or method not in REDUCERS:
            raise RecordError(f"{where}.method {str(method)[:20]!r} is not a token reducer")
        if not isinstance(kind, str) or kind not in REDUCERS.get(method).kinds:
            raise RecordError(f"{where}.kind {str(kind)[:20]!r} is not a schedule kind of {method}")
        keep = {}
        for k, v in as_dict(d.get("keep") or {}, f"{where}.keep").items():
            if not k.isdigit() or len(k) > 6:
                raise RecordError(f"{where}.keep key {k[:20]!r} is not a block index")
            keep[int(k)] = as_float(v, f"{where}.keep.{k}")
            if not 0 < keep[int(k)] <= 1:
                raise RecordError(f"{where}.keep.{k} is {v}, outside (0, 1]")
        if kind == "keep" and not keep:
            raise RecordError(f"{where}.keep names no block")
        rate = as_float(d.get("rate", 0.0), f"{where}.rate")
        if not 0 <= rate < 1:
            raise RecordError(f"{where}.rate is {rate}, outside [0, 1)")
        options = as_dict(d.get("options", {}), f"{where}.options")  # null or a list is not a mapping
        for k, v in options.items():
            if k not in OPTIONS or not isinstance(v, bool):
                raise RecordError(
                    f"{where}.options.{str(k)[:20]} is not a reducer switch ({', '.join(OPTIONS)}: true/false)"
                )
        spec = d.get("spec", "")
        if not isinstance(spec, str) or len(spec) > 1000:
            raise RecordError(f"{where}.spec is not a schedule string")
        sched = cls(
            method,
            kind,
            keep=keep,
            rate=rate,
            merge=as_int(d.get("merge", 0), f"{where}.merge", 0, 2**20),
            start=as_int(d.get("start", 0), f"{where}.start", 0, 2**20),
            options=dict(options),
            spec=spec,
        )
        sched._check_fields(where)
        return sched

    def _check_fields(self, where: str) -> None:
        """The fields agree with each other: a keep schedule has no rate, merges or start, a rate or
        merge schedule no keep fractions, and the ``spec`` string (what ``info`` shows) describes the
        schedule that runs. ``RecordError`` naming the field."""
        unused = {
            "keep": ("rate", "merge", "start"),
            "rate": ("keep", "merge"),
            "merge": ("keep", "rate"),
        }[self.kind]
        for name in unused:
            if getattr(self, name):
                raise RecordError(f"{where}.{name} is {getattr(self, name)!r}, but a {self.kind} schedule has none")
        if not self.spec:
            return
        try:
            said = parse_schedule(self.spec, self.method)
        except VitCompressError as e:
            raise RecordError(f"{where}.spec {self.spec[:40]!r} is not a schedule ({str(e)[:120]})") from None
        same = (
            said.kind == self.kind
            and said.start == self.start
            and said.merge == self.merge
            and math.isclose(said.rate, self.rate, rel_tol=1e-5, abs_tol=1e-9)
            and said.keep.keys() == self.keep.keys()
            and all(math.isclose(said.keep[b], self.keep[b], rel_tol=1e-5) for b in self.keep)
        )
        if not same:
            raise RecordError(
                f"{where}.spec {self.spec[:40]!r} does not describe the schedule of the other fields ({self.kind})"
            )

    def describe(self) -> str:
        return f"{self.method} {self.spec or self.kind}"


#: a number as typed in ASCII (``float`` also reads full-width digits and ``1_000``)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _num(text: str, what: str, spec: str) -> float:
    try:
        if not _NUMBER.fullmatch(text):
            raise ValueError(text)
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    except ValueError:
        raise VitCompressError(
            f"token schedule {spec!r}: {what} {text!r} is not a number; use e.g. 0.7@3,6,9, rate=0.06 or merge=8"
        ) from None


def _blocks(text: str, spec: str) -> list[int]:
    try:
        parts = [b for b in text.split(",") if b.strip()]
        if not all(_INTEGER.fullmatch(b) for b in parts):
            raise ValueError(text)
        out = [int(b) for b in parts]
        if any(abs(b) > 2**20 for b in out):
            raise ValueError(text)
    except ValueError:
        raise VitCompressError(
            f"token schedule {spec!r}: block list {text!r} is not integers; use e.g. 0.7@3,6,9"
        ) from None
    if not out:
        raise VitCompressError(f"token schedule {spec!r} names no blocks; use e.g. 0.7@3,6,9")
    return out


def parse_schedule(spec: str, method: str, options: dict | None = None) -> TokenSchedule:
    """Parse a schedule string for ``method`` (see the module docstring for the syntax)."""
    s = re.sub(r"\s+", "", str(spec))
    if not s:
        raise VitCompressError("empty token schedule; use e.g. 0.7@3,6,9, rate=0.06 or merge=8")
    options = dict(options or {})
    if s.startswith(("rate=", "merge=")):
        key, _, rest = s.partition("=")
        val, _, start = rest.partition("@")
        if key == "rate":
            r = _num(val, "rate", spec)
            if not 0.0 <= r < 1.0:
                raise VitCompressError(f"token schedule {spec!r}: rate {r} is outside [0, 1); use e.g. rate=0.06")
            st = _blocks(start, spec)[0] if start else DEFAULT_RATE_START
            sched = TokenSchedule(method, "rate", rate=r, start=st, options=options, spec=s)
        else:
            m = _num(val, "merge count", spec)
            if m != int(m) or not 0 <= m <= 2**20:
                raise VitCompressError(
                    f"token schedule {spec!r}: merge count must be a whole number >= 0; use e.g. merge=8"
                )
            st = _blocks(start, spec)[0] if start else 0
            sched = TokenSchedule(method, "merge", merge=int(m), start=st, options=options, spec=s)
        if st < 0:
            raise VitCompressError(f"token schedule {spec!r}: start block {st} is negative; use a block index >= 0")
    else:
        keep: dict[int, float] = {}
        for group in s.split(";"):
            if "@" not in group:
                raise VitCompressError(
                    f"token schedule {spec!r}: {group!r} lacks '@BLOCKS'; "
                    "use KEEP@B1,B2 (e.g. 0.7@3,6,9), rate=R or merge=N"
                )
            val, _, blocks = group.partition("@")
            k = _num(val, "keep rate", spec)
            if not 0.0 < k <= 1.0:
                raise VitCompressError(
                    f"token schedule {spec!r}: keep rate {k} is outside (0, 1]; "
                    "use e.g. 0.7@3,6,9 (pruning rate = 1 - keep rate)"
                )
            for b in _blocks(blocks, spec):
                if b < 0:
                    raise VitCompressError(f"token schedule {spec!r}: block {b} is negative; use indices >= 0")
                if b in keep:
                    raise VitCompressError(
                        f"token schedule {spec!r}: block {b} is given twice; give each block one keep rate"
                    )
                keep[b] = k
        sched = TokenSchedule(method, "keep", keep=dict(sorted(keep.items())), options=options, spec=s)
    cls = REDUCERS.get(method)
    if sched.kind not in cls.kinds:
        forms = {"keep": "KEEP@BLOCKS", "rate": "rate=R", "merge": "merge=N"}
        raise VitCompressError(
            f"method {method!r} does not take a {forms[sched.kind]} schedule; "
            f"use {' or '.join(forms[k] for k in cls.kinds)}"
        )
    return sched
