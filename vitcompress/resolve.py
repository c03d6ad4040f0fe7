"""One way to turn what a user names as a model into a module, and its family, once per call.

``resolve_model`` takes a module (returned as it is), an artifact folder (loaded, its token
schedule applied again; a ``checkpoint`` replaces its weights) or a model name of a supported
family (created, with hub weights when ``pretrained``, a local ``checkpoint``, and creation
options such as ``num_classes``, ``img_size``, ``patch_size``, recorded as the model's source). A
Hugging Face ``transformers`` ViT, as a module or a ``save_pretrained`` folder (its
``config.json`` names a ``model_type``), becomes the timm ViT that computes the same
(``vitcompress.hf``). A path that is not an artifact is never looked up as a model name; with
``names=False`` no string is (what is not an artifact or a transformers folder is refused as a
missing artifact).

``resolve`` does the same and also asks for the model's family once (``families.family_of``: a
one-line refusal for a model no family prunes exactly), returning a ``Resolved``: the module, its
family, its widths and its token schedule, which a workflow passes down instead of looking the
family up again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from .artifact import is_artifact, load
from .errors import VitCompressError
from .families import Family, family_of
from .hf import hf_folder_config, is_hf_model, load_folder, to_timm
from .models import create_with_family, load_checkpoint
from .spec import Spec
from .tokens.apply import schedule_of
from .tokens.schedule import TokenSchedule

__all__ = ["Resolved", "model_path_problem", "resolve", "resolve_model"]


@dataclass
class Resolved:
    """A model resolved for one call: the module, its family (asked once), its widths and the token
    schedule it carries (None: none)."""

    model: nn.Module
    family: Family
    spec: Spec
    schedule: TokenSchedule | None

    @classmethod
    def of(cls, model: nn.Module, family: Family | None = None) -> Resolved:
        """The record of ``model`` (``family``: already known, else asked with ``family_of``)."""
        fam = family or family_of(model)
        return cls(model, fam, fam.spec(model), schedule_of(model))


def model_path_problem(s: str) -> str | None:
    """Why ``s``, given where a model is expected, is a path but not an artifact folder (None when it
    is an artifact or does not look like a path, i.e. may be a model name)."""
    if is_artifact(s) or hf_folder_config(s) is not None:
        return None
    if os.path.isdir(s):
        return f"folder {s!r} is not a vitcompress artifact (no vitcompress.json)"
    if os.path.exists(s):
        return f"{s!r} is a file, not a vitcompress artifact folder"
    if "/" in s or os.sep in s or s.endswith((".pth", ".pt", ".safetensors", ".onnx", ".engine")):
        return f"{s!r} does not exist"
    return None


def resolve(
    model: str | os.PathLike | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    names: bool = True,
    **options: Any,
) -> Resolved:
    """``resolve_model``'s module with its family (asked once), widths and token schedule."""
    net, fam = _resolve(model, pretrained, checkpoint, names, options)
    return Resolved.of(net, fam)


def resolve_model(
    model: str | os.PathLike | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    names: bool = True,
    **options: Any,
) -> nn.Module:
    """A module from a module, an artifact folder or a model name (see the module docstring).

    ``options`` with value None are ignored; for an artifact, ``pretrained`` and creation options
    are an error (its architecture is recorded)."""
    return _resolve(model, pretrained, checkpoint, names, options)[0]


def _resolve(
    model: str | os.PathLike | nn.Module, pretrained: bool, checkpoint: str | None, names: bool, options: dict
) -> tuple[nn.Module, Family | None]:
    """The module, and its family where resolving it already asked (a model created by name)."""
    if is_hf_model(model):
        return to_timm(model), None  # type: ignore[arg-type]
    if isinstance(model, nn.Module):
        return model, None
    s = str(model)
    options = {k: v for k, v in options.items() if v is not None}
    if not is_artifact(s) and hf_folder_config(s) is not None:
        if pretrained or options:
            raise VitCompressError(
                f"{s!r} is a transformers folder; its architecture is in its config.json, drop the creation options"
            )
        net = load_folder(s)
        if checkpoint:
            load_checkpoint(net, checkpoint)
        return net, None
    if is_artifact(s) or not names:
        if pretrained or options:
            given = ", ".join(["pretrained", *options] if pretrained else list(options))
            raise VitCompressError(
                f"{s!r} is an artifact; {given} apply to model names only (an artifact's architecture is recorded)"
            )
        net = load(s)  # a recorded token schedule is applied again; a non-artifact is refused here
        if checkpoint:
            load_checkpoint(net, checkpoint)
        return net, None
    problem = model_path_problem(s)
    if problem:
        raise VitCompressError(
            f"{problem}; pass an artifact folder or a timm model name (weights go in checkpoint)",
            params=["checkpoint"],
        )
    return create_with_family(s, pretrained=pretrained, checkpoint=checkpoint, **options)
