"""Model families: the adapters through which the pruning core handles each kind of model.

``FAMILIES`` lists them in the order models are matched (a more specific family before the one it
refines: the hybrid ViT and the FLatten ViT before the plain ViT). ``family_of(model)`` finds the
family of a module and refuses, in one line, a module no family supports exactly;
``family_for_name(name)`` does the same for a model name. A new family is a ``Family`` subclass (see ``families/base.py`` and
the worked example in ``docs/pruning.md``) registered with ``register(family, before=None)`` (or,
the same, ``FAMILIES.register(name, before=None)(family)``): ``before`` names the family it refines,
matched after it.

The helpers below are the model-facing entry points the core uses::

    spec_from_model(model) -> Spec        build_model(source, spec) -> nn.Module
    build_groups(model, kinds) -> groups  identity_plan(model) -> Plan
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import VitCompressError
from ..groups import Group
from ..plan import Plan
from ..registry import Registry
from ..spec import SourceModel, Spec
from .base import BlockParts, BlockTokens, Family
from .cct import CCTFamily
from .eva import EvaFamily
from .flatten import FLattenFamily
from .hybrid import HybridViTFamily
from .swin import SwinFamily
from .unsupported import module_reason
from .vit import ParallelViTFamily, ViTFamily


class FamilyRegistry(Registry[Family]):
    """The registered families and the order models are matched in: ``register(name, before=...)``
    puts a family before the one it refines (else last), so a family registered either way
    (``FAMILIES.register(name)(family)`` or ``families.register(family)``) is matched."""

    def __init__(self) -> None:
        super().__init__("model family")
        self.order: list[str] = []

    def register(self, name: str, before: str | None = None) -> Callable[[Family], Family]:
        if before is not None:
            self.get(before)  # a one-line error for an unknown family
        add = super().register(name)

        def deco(family: Family) -> Family:
            if not isinstance(family, Family):
                raise TypeError(f"{self.kind} {name!r} must be a Family instance, got {type(family).__name__}")
            missing = family.missing()
            if missing:
                raise TypeError(f"{self.kind} {name!r} does not implement {', '.join(missing)} (see families/base.py)")
            add(family)
            self.order.insert(self.order.index(before) if before else len(self.order), name)
            return family

        return deco

    def remove(self, name: str) -> None:
        super().remove(name)
        self.order.remove(name)

    def in_order(self) -> list[Family]:
        """Every registered family, in match order."""
        return [self.get(n) for n in self.order]


FAMILIES = FamilyRegistry()


def register(family: Family, before: str | None = None) -> Family:
    """Add ``family`` to ``FAMILIES`` under its name, matched before the family named ``before`` (else last)."""
    return FAMILIES.register(family.name, before=before)(family)


def unregister(name: str) -> Family:
    """Remove the family ``name`` from ``FAMILIES`` (returns it)."""
    family = FAMILIES.get(name)
    FAMILIES.remove(name)
    return family


register(ViTFamily())
register(ParallelViTFamily(), before="vit")
register(HybridViTFamily(), before="vit_parallel")
register(FLattenFamily(), before="vit_parallel")
register(CCTFamily())
register(SwinFamily())
register(EvaFamily())


def families() -> list[Family]:
    """Every registered family, in match order."""
    return FAMILIES.in_order()


def supported() -> str:
    """One line naming the supported families (used in refusals)."""
    return "; ".join(f.title for f in sorted(families(), key=lambda f: f.name != "vit"))


def refuse(label: str, problems: list[str]) -> VitCompressError:
    return VitCompressError(f"unsupported architecture {label}: {'; '.join(problems)}; supported: {supported()}")


def find(model: nn.Module) -> Family | None:
    """The family that recognises ``model`` (its type and stem), or None."""
    return next((f for f in families() if f.recognises(model)), None)


def family_of(model: nn.Module, name: str = "") -> Family:
    """The family of ``model``; a one-line error naming what is unsupported and the supported
    families when no family can prune it exactly."""
    fam = find(model)
    label = name or type(model).__name__
    if fam is None:
        reason = module_reason(type(model).__module__)
        problems = [reason] if reason else FAMILIES.get("vit").problems(model)
        raise refuse(label, problems or [f"{type(model).__name__} is not supported"])
    problems = fam.problems(model)
    if problems:
        raise refuse(label, problems)
    return fam


def family_for_name(name: str) -> Family | None:
    """The family a timm model name belongs to (None: no family)."""
    return next((f for f in families() if f.owns_name(name)), None)


def family_for_source(source: SourceModel) -> Family:
    """The family that rebuilds ``source``."""
    fam = family_for_name(source.name)
    if fam is None:
        raise VitCompressError(f"no model family rebuilds {source.name!r}; supported: {supported()}")
    return fam


def list_models(pattern: str = "*") -> dict[str, list[str]]:
    """timm names that match a glob pattern, per family (families without a match are left out)."""
    out = {}
    for f in families():
        names = f.list_models(pattern)
        if names:
            out[f.name] = names
    return out


def refused_models(pattern: str = "*") -> dict[str, dict[str, str]]:
    """timm names that match a glob pattern and that a family owns but refuses, per family, each
    with the reason (families without such a name are left out)."""
    out = {}
    for f in families():
        names = f.refused_models(pattern)
        if names:
            out[f.name] = names
    return out


def spec_from_model(model: nn.Module) -> Spec:
    """The widths of ``model``, read off its modules."""
    return family_of(model).spec(model)


def build_model(source: SourceModel, spec: Spec, device: str | torch.device = "meta") -> nn.Module:
    """An uninitialised model of ``source`` with ``spec``'s widths (on the meta device by default)."""
    return family_for_source(source).build(source, spec, device)


def build_groups(model: nn.Module, kinds: Iterable[str]) -> list[Group]:
    """The coupling groups of ``model`` of the requested kinds."""
    return family_of(model).groups(model, kinds)


def identity_plan(model: nn.Module) -> Plan:
    """The plan that keeps everything of ``model``."""
    return family_of(model).identity_plan(model)


__all__ = [
    "FAMILIES",
    "BlockParts",
    "BlockTokens",
    "CCTFamily",
    "FLattenFamily",
    "EvaFamily",
    "Family",
    "HybridViTFamily",
    "ParallelViTFamily",
    "SwinFamily",
    "ViTFamily",
    "build_groups",
    "build_model",
    "families",
    "family_for_name",
    "family_for_source",
    "family_of",
    "find",
    "identity_plan",
    "list_models",
    "refused_models",
    "register",
    "spec_from_model",
    "supported",
    "unregister",
]
