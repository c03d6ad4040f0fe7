"""The model an export works on: an fp32 eval copy of an artifact or module, and its dynamic-size twin."""

from __future__ import annotations

import copy
import os

from torch import nn

from vitcompress.artifact import meta_of
from vitcompress.errors import VitCompressError
from vitcompress.families import build_model, family_for_source, family_of, spec_from_model
from vitcompress.quantizers import apply_quantizers, record_of
from vitcompress.resolve import resolve_model
from vitcompress.tokens import apply_tokens, remove_tokens, schedule_of


def load_source(model_or_path: str | os.PathLike | nn.Module):
    """(fp32 eval copy of the model, its ArtifactMeta, label of the source), through
    ``resolve.resolve_model`` with artifacts only (``names=False``): a module is copied, never
    changed; an artifact folder is loaded with its token schedule."""
    if isinstance(model_or_path, nn.Module):
        model = copy.deepcopy(resolve_model(model_or_path)).float().eval()
        return model, copy.deepcopy(meta_of(model)), "<module>"
    model = resolve_model(model_or_path, names=False)
    return model.float().eval(), model.vitcompress_meta, str(model_or_path)


def with_dynamic_size(model: nn.Module, meta) -> nn.Module:
    """The same weights in the model built to take any image size (``Family.dynamic_size_source``:
    for a timm ViT ``dynamic_img_size=True``, position embeddings resampled in ``forward``, a patch
    embedding without a fixed input size); its token schedule, if any, applied again."""
    if getattr(model, "dynamic_img_size", False):
        return model
    sched = schedule_of(model)
    plain = remove_tokens(copy.deepcopy(model)) if sched is not None else model
    src = family_for_source(meta.source).dynamic_size_source(meta.source)
    if src is None:
        raise VitCompressError(
            f"{meta.source.name} cannot take other image sizes; export without dynamic_size", params=["dynamic_size"]
        )
    dyn = build_model(src, spec_from_model(plain), device="cpu")
    quant = record_of(plain)
    if quant is not None:  # a quantized model's twin has the same quantizers (its scales are in the state)
        apply_quantizers(dyn, quant["layers"], quant["precision"])
    dyn.load_state_dict(plain.state_dict(), strict=True)
    for attr in ("pretrained_cfg", "default_cfg", "vitcompress_meta"):
        if hasattr(plain, attr):
            setattr(dyn, attr, getattr(plain, attr))
    if sched is not None:
        apply_tokens(dyn, copy.deepcopy(sched))
    return dyn.float().eval()


def patch_and_size(model: nn.Module) -> tuple[int, int, int]:
    """(image-side multiple, native image side, input channels) of the model, from its family."""
    fam = family_of(model)
    in_chans, size, _ = fam.input_size(model)
    return fam.image_stride(model), size, in_chans
