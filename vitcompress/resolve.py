"""One way to turn what a user names as a model into a module.

``resolve_model`` takes a module (returned as it is), an artifact folder (loaded; a ``checkpoint``
replaces its weights) or a model name of a supported family (created, with hub weights when
``pretrained``, a local ``checkpoint``, and creation options such as ``num_classes``,
``img_size``, ``patch_size``, recorded as the model's source). A Hugging Face ``transformers`` ViT,
as a module or a ``save_pretrained`` folder (its ``config.json`` names a ``model_type``), becomes
the timm ViT that computes the same (``vitcompress.hf``). A path that is not an artifact is never
looked up as a model name.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .artifact import is_artifact, load
from .errors import VitCompressError
from .hf import hf_folder_config, is_hf_model, load_folder, to_timm
from .models import create_source_model, load_checkpoint

__all__ = ["model_path_problem", "resolve_model"]


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


def resolve_model(
    model: str | os.PathLike | nn.Module,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **options: Any,
) -> nn.Module:
    """A module from a module, an artifact folder or a model name (see the module docstring).

    ``options`` with value None are ignored; for an artifact, ``pretrained`` and creation options
    are an error (its architecture is recorded)."""
    if is_hf_model(model):
        return to_timm(model)  # type: ignore[arg-type]
    if isinstance(model, nn.Module):
        return model
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
        return net
    if is_artifact(s):
        if pretrained or options:
            given = ", ".join(["pretrained", *options] if pretrained else list(options))
            raise VitCompressError(
                f"{s!r} is an artifact; {given} apply to model names only (an artifact's architecture is recorded)"
            )
        net = load(s)
        if checkpoint:
            load_checkpoint(net, checkpoint)
        return net
    problem = model_path_problem(s)
    if problem:
        raise VitCompressError(
            f"{problem}; pass an artifact folder or a timm model name (weights go in checkpoint)",
            params=["checkpoint"],
        )
    return create_source_model(s, pretrained=pretrained, checkpoint=checkpoint, **options)
