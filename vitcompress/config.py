"""Settings dataclasses from files and dictionaries: merged field by field, with type checks.

``merge_config(cfg, values)`` returns a copy of the dataclass ``cfg`` with ``values`` (a mapping,
nested mappings for nested dataclasses such as ``PipelineConfig.train``) written over its fields;
``load_config(PipelineConfig, "pipe.yaml")`` does the same from a JSON or YAML file over the
defaults, and ``with_options(PruneConfig, config, options, "prune")`` from a library function's
keyword options (``prune(model, config, flops_reduction=0.3)``). Every problem is one
``VitCompressError`` line that names the key: an unknown key (with the known ones), a value of the
wrong type, a file that cannot be read. ``parse_pairs`` reads the command line's repeatable
``KEY=VALUE`` options (``--model-opt``, ``--method-opt``).

Types follow the field annotations: ``int``, ``float`` (an integer is accepted), ``bool``, ``str``
(a path is accepted, as its string), ``tuple[str, ...]`` (a list, or a comma-separated string),
``X | None`` and nested dataclasses (a mapping of their own keys, or an instance).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import VitCompressError

T = TypeVar("T")


def read_config_file(path: str | os.PathLike, what: str = "") -> dict:
    """The mapping in a JSON file, or a YAML file (``.yaml``/``.yml``)."""
    p = Path(path)
    try:
        text = p.read_text()
        data = yaml.safe_load(text) if p.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as e:
        if isinstance(e, RecursionError):
            reason = "its values are nested too deeply"
        else:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise VitCompressError(
            f"cannot read {_label(what)} {str(path)!r}: {reason}; pass a JSON or YAML file"
        ) from None
    if not isinstance(data, dict):
        raise VitCompressError(
            f"{_label(what)} {str(path)!r} holds a {type(data).__name__}, not a mapping of keys to values; "
            "write it as an object of settings"
        )
    return data


def load_config(cls: type[T], path: str | os.PathLike, what: str = "") -> T:
    """The dataclass ``cls`` with its defaults, overridden by the settings in a JSON or YAML file."""
    return merge_config(cls(), read_config_file(path, what), what)


def merge_config(
    cfg: T, values: Mapping[str, Any], what: str = "", _prefix: str = "", *, kind: str = "config key"
) -> T:
    """A copy of the dataclass ``cfg`` with ``values`` written over its fields (type-checked, recursively).

    ``what`` and ``kind`` name the keys in errors: ``unknown train config key 'lr_x'`` (a file or the
    command line), ``unknown prune option 'flops'`` (``kind="option"``, a function's keywords)."""
    hints = typing.get_type_hints(type(cfg))
    known = {f.name: f for f in dataclasses.fields(cfg) if f.init}  # type: ignore[arg-type]
    check_keys(values, known, what, kind, _prefix)
    label = " ".join(w for w in (what, kind) if w)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{_prefix}{key}"
        current = getattr(cfg, key)
        plain = _plain(hints[key])
        nested = next(iter(plain)) if len(plain) == 1 else None  # a field of one dataclass type (or None)
        if not (isinstance(nested, type) and dataclasses.is_dataclass(nested)):
            nested = None
        if nested is not None and isinstance(value, nested):
            changes[key] = value
        elif dataclasses.is_dataclass(current) and not isinstance(current, type) and nested is not None:
            if not isinstance(value, Mapping):
                raise VitCompressError(
                    f"{label} {name!r} must be a mapping of its own settings, got {value!r}", params=[key]
                )
            changes[key] = merge_config(current, value, what, f"{name}.", kind=kind)
        else:
            changes[key] = _coerce(value, hints[key], f"{label} {name!r}", key)
            choices = known[key].metadata.get("choices")
            if choices and changes[key] not in choices:
                raise VitCompressError(
                    f"{label} {name!r} must be one of {', '.join(choices)}, got {value!r}", params=[key]
                )
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def with_options(cls: type[T], config: T | None, options: Mapping[str, Any], what: str) -> T:
    """``config`` (default: ``cls()``, the defaults) with a function's keyword ``options`` (field
    names) written over its fields: ``merge_config`` with errors that say ``{what} option``."""
    return merge_config(config if config is not None else cls(), options, what, kind="option")


def check_keys(
    values: Mapping[str, Any], known: Collection[str], what: str = "", kind: str = "config key", _prefix: str = ""
) -> None:
    """A one-line ``VitCompressError`` for the first key of ``values`` not in ``known``, naming the
    known ones: ``unknown export option 'opsett'; known: batch, check, ...``."""
    for key in values:
        if key not in known:
            label, name = " ".join(w for w in ("unknown", what, kind) if w), f"{_prefix}{key}"
            raise VitCompressError(f"{label} {name!r}; known: {', '.join(sorted(known))}")


def parse_pairs(
    pairs: Iterable[str] | None, what: str, param: str, example: str, *, json_values: bool = False
) -> dict[str, Any]:
    """The command line's repeatable ``KEY=VALUE`` options as a dict: ``['steps=10', 'lr=1e-3']`` ->
    ``{'steps': '10', 'lr': '1e-3'}`` (keys and values stripped, a later key replacing an earlier).
    With ``json_values`` a value is read as JSON where it is JSON (``depths=[2,2]`` -> ``[2, 2]``),
    else kept as its text. ``what`` names the option, ``param`` the parameter that carries the pairs
    and ``example`` shows one pair in errors: ``method option 'steps' is not KEY=VALUE; pass e.g.
    method_opts=steps=50`` (the command line writes ``--method-opt steps=50``)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, eq, raw = pair.partition("=")
        if not eq:
            raise VitCompressError(f"{what} {pair!r} is not KEY=VALUE; pass e.g. {param}={example}", params=[param])
        if not key.strip():
            raise VitCompressError(f"{what} {pair!r} has no key; pass e.g. {param}={example}", params=[param])
        value: Any = raw.strip()
        if json_values:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                pass
        out[key.strip()] = value
    return out


def _label(what: str) -> str:
    return f"{what} config" if what else "config"


def _coerce(value: Any, hint: Any, where: str, key: str = "") -> Any:
    """``value`` as the annotated type (a list becomes a tuple, an int a float), or a one-line error."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _coerce(value, rest[0], where, key)
        for a in rest:
            try:
                return _coerce(value, a, where, key)
            except VitCompressError:
                pass
        raise VitCompressError(
            f"{where} must be one of {', '.join(_name(a) for a in rest)}, got {value!r}", params=[key] if key else []
        )
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif origin is tuple or hint is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            item = args[0] if args else Any
            return tuple(_coerce(v, item, where, key) for v in items)
    elif origin is list or hint is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:
        return value
    raise VitCompressError(f"{where} must be {_name(hint)}, got {value!r}", params=[key] if key else [])


def _name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) is tuple or hint is tuple:
        return "a list"
    return getattr(hint, "__name__", str(hint))


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its help text kept beside it (``metadata["help"]``, shown by the command
    line), optionally the values it accepts (``metadata["choices"]``, checked by ``merge_config``) and
    its range (``ge``/``gt``/``le``/``lt``: at least, above, at most, below; checked by
    ``check_fields``)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        metadata["range"] = bounds
    return dataclasses.field(default=default, metadata=metadata, **kw)


#: the largest integer setting without a stated upper bound (counts, sizes, steps): beyond it nothing is
#: meaningful, and loops and samplers take C integers
MAX_INT = 2**31 - 1


def range_text(bounds: Mapping[str, float]) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``in [0, 1)``; ``{"gt": 0}`` -> ``> 0``."""

    def num(v: float) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{num(low[1])}, {num(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {num(low[1])}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {num(high[1])}"
    return "any number"


def field_range(cfg: Any, name: str) -> dict[str, float]:
    """The range ``setting`` gave the field ``name`` of the settings dataclass (or instance) ``cfg``
    (``{"ge": 17, "le": 23}``; empty without one)."""
    return dict(next(f for f in dataclasses.fields(cfg) if f.name == name).metadata.get("range", {}))


def in_range(value: float, bounds: Mapping[str, float]) -> bool:
    """Whether ``value`` lies within ``bounds`` (``ge``/``gt``/``le``/``lt``)."""
    return not (
        ("ge" in bounds and not value >= bounds["ge"])
        or ("gt" in bounds and not value > bounds["gt"])
        or ("le" in bounds and not value <= bounds["le"])
        or ("lt" in bounds and not value < bounds["lt"])
    )


def check_number(name: str, value: Any, bounds: Mapping[str, float] | None = None, *, integer: bool = False) -> None:
    """A one-line ``VitCompressError`` naming ``name`` unless ``value`` is a finite number (an integer
    with ``integer``) within ``bounds``."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise VitCompressError(f"{name} must be {kind}, got {value!r}", params=[name])
    if not integer and not math.isfinite(value):
        raise VitCompressError(f"{name} must be a finite number, got {value}", params=[name])
    if bounds and not in_range(value, bounds):
        raise VitCompressError(f"{name} must be {range_text(bounds)}, got {value}", params=[name])


def check_fields(cfg: Any) -> None:
    """Check every field of the settings dataclass ``cfg`` against its annotation and ``setting``
    metadata: numbers finite (no NaN or infinity anywhere) and within their range, integers whole,
    strings among their choices, nested dataclasses recursively. Raises one ``VitCompressError``
    naming the first bad field (``params=[name]``, so the command line shows its flag)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value)
            continue
        kinds = _plain(hints.get(f.name, Any))
        bounds = f.metadata.get("range")
        if kinds & {int, float} and not kinds & {str}:
            integer = float not in kinds
            check_number(f.name, value, bounds, integer=integer)
            if integer and not (bounds and {"le", "lt"} & set(bounds)) and abs(value) > MAX_INT:
                raise VitCompressError(f"{f.name} must be at most {MAX_INT}, got {value}", params=[f.name])
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise VitCompressError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}", params=[f.name])


def _plain(hint: Any) -> set:
    """The non-None types of an annotation (``float | None`` -> ``{float}``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return {a for a in typing.get_args(hint) if a is not type(None)}
    return {hint}
