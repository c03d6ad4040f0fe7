"""What every pruning method shares: its options dataclass, its output, and how options are parsed.

A method is a function ``run(model, cfg, options, *, progress, budget, family) -> MethodOutput``.
``cfg`` is the ``PruneConfig`` of the prune call (budget, granularity, round-to, data, seed, labels);
``options`` is the method's own dataclass of hyperparameters; ``budget`` (None: ``cfg.budget()``) is
what the plan is selected under (the pruner passes one that counts MACs with the model's token
schedule); ``family`` is the model's family as the pruner resolved it (None: the method asks
``family_of``), passed down to every step so that a prune looks the family up once. The method returns the model to slice (the input
model after its training stage, with any learned scales folded into the weights) and a ``Plan``
chosen with the core's ``budget.select``; the pruner slices it with the core's ``slice_model``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..config import parse_pairs
from ..errors import VitCompressError
from ..plan import Plan

#: the largest magnitude a method option may have (step counts, rates): beyond it nothing is meaningful
MAX_INT = 2**31 - 1
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass
class MethodOptions:
    """Base of every method's hyperparameter dataclass (plain scalars, so it serialises)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Range checks; subclasses raise ``VitCompressError`` naming the option and the fix."""

    def check(self, method: str = "") -> None:
        """Every field of its declared kind (numbers finite, integers whole and at most ``MAX_INT``),
        then the method's ranges (``validate``): what both the command line and the library run."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _kind(f)
            where = f"method option {f.name}" + (f" of {method}" if method else "")
            if kind == "bool" and not isinstance(value, bool):
                raise VitCompressError(f"{where} must be true or false, got {value!r}; pass e.g. {f.name}={f.default}")
            if kind in ("int", "float"):
                number = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
                if isinstance(value, bool) or not number:
                    raise VitCompressError(
                        f"{where} must be {'an integer' if kind == 'int' else 'a number'}, got "
                        f"{value!r}; pass e.g. {f.name}={f.default}"
                    )
                if not math.isfinite(value) or abs(value) > MAX_INT:
                    raise VitCompressError(
                        f"{where} must be a finite number of at most {MAX_INT}, got {value}; pass e.g. "
                        f"{f.name}={f.default}"
                    )
        self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, method: str = "") -> MethodOptions:
        """Options from ``key -> value`` (values may be strings, as given on the command line)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, raw in (values or {}).items():
            name = str(key).strip().replace("-", "_")
            if name not in fields:
                raise VitCompressError(
                    f"unknown option {key!r} for method {method or cls.__name__}; "
                    f"valid options: {', '.join(sorted(fields))}"
                )
            kwargs[name] = _convert(raw, fields[name], method)
        opts = cls(**kwargs)
        opts.check(method)
        return opts


def _kind(f: dataclasses.Field) -> str:
    """A field's annotation as a name (``int``, ``float``, ``bool``, ...)."""
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))


def _convert(raw: Any, f: dataclasses.Field, method: str) -> Any:
    kind = _kind(f)
    if not isinstance(raw, str):
        return raw
    s = raw.strip()
    try:
        if kind == "bool":
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise ValueError(s)
        if kind == "int":
            return int(s)
        if kind == "float":
            return float(s)
    except ValueError:
        raise VitCompressError(
            f"option {f.name}={raw!r} of method {method} is not a valid {kind}; pass e.g. {f.name}={f.default}"
        ) from None
    return s


def check_positive(opts: MethodOptions, *names: str, allow_zero: bool = False) -> None:
    """Raise a one-line error for the first named option that is not > 0 (or >= 0)."""
    for n in names:
        v = getattr(opts, n)
        if v < 0 or (v == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise VitCompressError(f"method option {n} must be {bound}, got {v}")


@dataclass
class MethodOutput:
    """What a method hands to the pruner.

    ``model`` is sliced with ``plan``; the result equals ``reference.mask_model(model, plan)``.
    ``finish`` (optional) runs on the sliced model (e.g. fine-tuning) and returns the final model.
    ``extra`` holds method diagnostics stored in the artifact's history record.
    """

    model: nn.Module
    plan: Plan
    achieved: float
    extra: dict = field(default_factory=dict)
    finish: Callable[[nn.Module], nn.Module] | None = None


@dataclass
class Method:
    """A registered pruning method: its runner, options class and the granularities it supports."""

    name: str
    run: Callable[..., MethodOutput]
    options: type
    kinds: tuple[str, ...]
    summary: str

    def parse_options(self, values: Mapping[str, Any] | MethodOptions | None) -> MethodOptions:
        if isinstance(values, MethodOptions):
            if not isinstance(values, self.options):
                raise VitCompressError(f"method {self.name} takes {self.options.__name__}, got {type(values).__name__}")
            values.check(self.name)
            return values
        return self.options.from_dict(values, self.name)

    def check_kinds(self, granularity) -> None:
        bad = [k for k in granularity if k not in self.kinds]
        if bad:
            raise VitCompressError(
                f"method {self.name} cannot prune {', '.join(bad)}; use granularity with a subset of "
                f"{','.join(self.kinds)}",
                params=["granularity"],
            )


def parse_option_pairs(pairs) -> dict[str, str]:
    """``['steps=10', 'lr=1e-3']`` -> ``{'steps': '10', 'lr': '1e-3'}`` (the CLI's --method-opt)."""
    return parse_pairs(pairs, "method option", "method_opts", "steps=50")
