"""Command-line options generated from the library's settings dataclasses.

``config_options(TrainConfig)`` adds one option per field: the flag is the field name with dashes
(``batch_size`` -> ``--batch-size``, or a name from ``flags``), the type and default are the
field's, the help text is the field's ``metadata["help"]`` (``vitcompress.config.setting``). So a
default or a help line is written once, next to the field. ``given(TrainConfig, kw)`` takes the
values the user typed back out of the command's keyword arguments, to be merged over the defaults
or a config file with ``vitcompress.config.merge_config``.

Each generated option also records ``field name -> flag`` on the command function, so that the
entry point can show a library error's parameter names as flags (``VitCompressError.with_flags``).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Container, Mapping
from typing import Any

import click
from click.core import ParameterSource

from vitcompress.errors import VitCompressError

FLAGS_ATTR = "__vitcompress_flags__"
_TYPES = {int: int, float: float, str: str}


def csv(value: str | None) -> list[str]:
    """``'a, b,,c'`` -> ``['a', 'b', 'c']``."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _fields(cls: type, only: Container[str] | None, exclude: Container[str]) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [
        (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.init
        and (only is None or f.name in only)
        and f.name not in exclude
        and not (isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]))
    ]


def _dest(name: str, prefix: str) -> str:
    return f"{prefix}_{name}" if prefix else name


def _flag(name: str, prefix: str, flags: Mapping[str, str]) -> str:
    return flags.get(name) or "--" + (f"{prefix}-" if prefix else "") + name.replace("_", "-")


def _option(f: dataclasses.Field, hint: Any, flag: str, dest: str, help: str | None) -> Callable:
    """One click option for a dataclass field."""
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None  # a required field: the option is optional, its absence means "not used"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    text = help if help is not None else f.metadata.get("help", "")
    if hint is bool:
        if default is True and "/" not in flag:  # a setting that is on by default needs a way to turn it off
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        return click.option(flag, dest, is_flag=True, default=bool(default), help=text)
    if origin is tuple or hint is tuple:  # a comma list on the command line
        shown = ",".join(map(str, default)) if default is not None else None
        return click.option(flag, dest, default=shown, show_default=shown is not None, help=text)
    choices = f.metadata.get("choices")
    kind = click.Choice(list(choices)) if choices else _TYPES.get(hint, str)
    return click.option(flag, dest, type=kind, default=default, show_default=default is not None, help=text)


def config_options(
    cls: type,
    *,
    only: Container[str] | None = None,
    exclude: Container[str] = (),
    prefix: str = "",
    flags: Mapping[str, str] | None = None,
    help: Mapping[str, str] | None = None,
) -> Callable[[Callable], Callable]:
    """A decorator adding one option per field of the dataclass ``cls`` (nested dataclasses skipped).

    ``only``/``exclude`` select fields; ``prefix`` goes in front of every flag and parameter name
    (``prefix="gas"``: ``target`` -> ``--gas-target``, keyword ``gas_target``); ``flags`` renames
    flags (``{"kind": "--distill"}``); ``help`` replaces help texts.
    """
    flags, help = flags or {}, help or {}
    chosen = _fields(cls, only, exclude)

    def decorate(fn: Callable) -> Callable:
        for f, hint in reversed(chosen):
            flag = _flag(f.name, prefix, flags)
            fn = _option(f, hint, flag, _dest(f.name, prefix), help.get(f.name))(fn)
        recorded = dict(getattr(fn, FLAGS_ATTR, {}))
        recorded.update({f.name: _flag(f.name, prefix, flags) for f, _ in chosen})
        setattr(fn, FLAGS_ATTR, recorded)
        return fn

    return decorate


def given(
    cls: type,
    kw: dict,
    *,
    only: Container[str] | None = None,
    exclude: Container[str] = (),
    prefix: str = "",
) -> dict:
    """Remove ``cls``'s options from the keyword arguments ``kw``; return ``{field: value}`` of those
    the user gave (on the command line or through the environment), to merge over defaults."""
    ctx = click.get_current_context()
    out = {}
    for f, _ in _fields(cls, only, exclude):
        dest = _dest(f.name, prefix)
        value = kw.pop(dest)
        if ctx.get_parameter_source(dest) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            out[f.name] = value
    return out


def command_flags(cmd: click.Command) -> dict[str, str]:
    """``parameter name -> flag`` for a command: its options' names, and the fields its generated
    options stand for."""
    flags = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name:
            longs = [o for o in p.opts if o.startswith("--")]
            if longs:
                flags[p.name] = longs[0]
    flags.update(getattr(cmd.callback, FLAGS_ATTR, {}))
    return flags


def default_of(fn: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``fn`` (a command option that mirrors a keyword argument)."""
    return inspect.signature(fn).parameters[name].default


def require(present: bool, companion: str, *names: str) -> None:
    """Unless ``present`` (the companion option was given), a one-line error naming the first of the
    parameters ``names`` the user gave: it would have no effect without ``companion``."""
    if present:
        return
    ctx = click.get_current_context()
    for name in names:
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            flag = command_flags(ctx.command).get(name, "--" + name.replace("_", "-"))
            raise VitCompressError(f"{flag} has no effect without {companion}; pass {companion} or drop {flag}")
