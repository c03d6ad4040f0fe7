"""Source models: create a model of a supported family by name, load checkpoints, tell its source."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import pickletools
import re
import traceback
import warnings
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

from .errors import VitCompressError
from .families import Family, family_for_name, family_of, supported
from .families import list_models as family_models
from .families.unsupported import module_reason
from .families.vit import entry_module
from .meta import ArtifactMeta, attach, attached
from .registry import suggest
from .spec import RecordError, SourceModel

__all__ = [
    "SourceModel",
    "check_model_name",
    "check_supported",
    "create_source_model",
    "create_with_family",
    "infer_source",
    "list_models",
    "load_checkpoint",
    "unpickling_reason",
]


def list_models(pattern: str = "*") -> list[str]:
    """timm model names of the supported families that match a glob pattern, sorted
    (``families.list_models`` lists them per family)."""
    return sorted(n for names in family_models(pattern).values() for n in names if fnmatch.fnmatch(n, pattern))


def check_model_name(name: str) -> Family:
    """The family that owns ``name``; a one-line error for a name no family owns: unknown (with
    close names) or of an unsupported architecture."""
    fam = family_for_name(name)
    if fam is not None:
        return fam
    if not timm.is_model(name):
        raise VitCompressError(
            f"unknown model {name!r}{suggest(name, sorted(set(timm.list_models()) | set(list_models())))}; "
            "list models with `vitcompress models 'deit*'`"
        )
    module = entry_module(name)
    reason = module_reason(module)
    why = f"{module.rsplit('.', 1)[-1]}: {reason}" if reason else module.rsplit(".", 1)[-1]
    raise VitCompressError(f"unsupported architecture {name!r} ({why}); supported: {supported()}")


def check_supported(model: nn.Module, name: str = "") -> Family:
    """The family of ``model``; a one-line error unless its family can slice it exactly."""
    return family_of(model, name)


def _one_line(e: BaseException) -> str:
    """An exception's text on one line (hub errors span several)."""
    return " ".join(str(e).split())


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the hub client while weights are fetched: without a connection it logs every retry
    (several lines) before it raises, and the failure becomes one error line of its own."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="huggingface_hub")
            yield
    finally:
        hub.setLevel(level)


def _hub_reason(e: BaseException) -> str:
    """Why hub weights could not be loaded, in a few words."""
    names = set()
    c: BaseException | None = e
    while c is not None and type(c).__name__ not in names:
        names.add(type(c).__name__)
        c = c.__cause__ or c.__context__
    offline = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "ReadTimeout"}
    if names & offline:
        return "the model hub cannot be reached and the weights are not in the local hub cache"
    return f"{type(e).__name__}: {_one_line(e)[:160]}"


def _reason(e: Exception, kwargs: dict) -> str:
    """Why model creation failed: the exception's text, or for a bare ``assert`` of the model's
    code (timm's shape checks carry no message) the check that failed and the options given."""
    text = _one_line(e)
    if text:
        return text
    frames = traceback.extract_tb(e.__traceback__)
    check = f"`{frames[-1].line}`" if frames and frames[-1].line else type(e).__name__
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "its defaults"
    return f"the model's check {check} failed{where} with {given}; pass options this model supports"


def create_source_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create an unpruned model of a supported family by name, optionally with hub weights or a
    local checkpoint.

    ``kwargs`` are creation options (for a timm model ``num_classes``, ``img_size``,
    ``patch_size``, ...), recorded as the model's source (``model.vitcompress_meta.source``) so that
    an artifact can rebuild the same architecture.
    """
    return create_with_family(name, pretrained=pretrained, checkpoint=checkpoint, **kwargs)[0]


def create_with_family(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, Family]:
    """``create_source_model`` and the family that supports the model (checked once, on the module)."""
    fam = check_model_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key, value in kwargs.items():
        try:
            fam.check_source(SourceModel(name, {key: value}), where="")
        except RecordError as e:
            raise VitCompressError(f"cannot create {name!r}: {e}", params=[key]) from None
    try:
        with _quiet_hub() if pretrained else contextlib.nullcontext():
            model = fam.create(name, pretrained=pretrained, **kwargs)
    except VitCompressError:
        raise
    except TypeError as e:
        raise VitCompressError(f"cannot create {name!r} with {kwargs}: {e}") from None
    except Exception as e:  # hub unreachable, bad kwargs
        if pretrained:
            raise VitCompressError(
                f"cannot load pretrained weights for {name!r} ({_hub_reason(e)}); pass a local weights file "
                "with checkpoint=FILE (.safetensors or .pth), or put the weights in the hub cache",
                params=["checkpoint"],
            ) from None
        raise VitCompressError(f"cannot create {name!r}: {_reason(e, kwargs)}") from None
    fam = family_of(model, name)
    check_geometry(fam, model, name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    attach(model, ArtifactMeta(source=SourceModel(name, kwargs)))
    return model.eval(), fam


def check_geometry(fam: Family, model: nn.Module, name: str = "") -> None:
    """A one-line error unless the model's image sides are multiples of its patch (its family's
    ``image_stride``) and at least one patch: other sizes leave pixels out or fail at run time."""
    try:
        _, h, w = fam.input_size(model)
        stride = fam.image_stride(model)
    except NotImplementedError:  # a family without a fixed input geometry
        return
    bad = next((s for s in (h, w) if s < stride or s % stride), None)
    if bad is not None:
        raise VitCompressError(
            f"{name or 'the model'} takes {h}x{w} images, but its image side must be a multiple of its patch "
            f"{stride} and at least one patch; pass img_size as a multiple of {stride}",
            params=["img_size"],
        )


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict (.safetensors, .pth/.pt with optional 'model'/'state_dict' wrapping)."""
    if not os.path.isfile(path):
        raise VitCompressError(f"checkpoint {path!r} does not exist; pass a .safetensors or .pth file")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it may then refuse
            warnings.simplefilter("ignore", UserWarning)
            state = timm.models.load_state_dict(path, use_ema=False)
        why = _not_a_state_dict(state)
    except Exception as e:
        why = _unreadable_reason(e, path)
    if why:
        raise VitCompressError(
            f"checkpoint {path!r} is not a readable state dict ({why}); pass a .safetensors file or a .pth "
            "state dict saved with torch.save(model.state_dict())"
        )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        detail = []
        if mismatched:
            detail.append(f"shape mismatch: {', '.join(mismatched[:3])}")
        if missing:
            detail.append(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            detail.append(f"unexpected: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise VitCompressError(
            f"checkpoint {path!r} does not fit the model ({'; '.join(detail)}); "
            "pass the model name and the num_classes and img_size it was trained with",
            params=["num_classes", "img_size"],
        )
    model.load_state_dict(state, strict=True)


def _not_a_state_dict(state) -> str | None:
    """Why a loaded object is not a name -> tensor mapping (None when it is one)."""
    if not isinstance(state, dict):
        return f"it holds a Python {type(state).__name__}, not a dict of tensors"
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            return f"entry {str(k)[:40]!r} holds a Python {type(v).__name__}, not a tensor"
    return None


def _unreadable_reason(e: BaseException, path: str | None = None) -> str:
    """A short reason for a checkpoint that torch.load / safetensors could not read."""
    chain: list[BaseException] = []
    c: BaseException | None = e
    while c is not None and c not in chain:
        chain.append(c)
        c = c.__cause__ or c.__context__
    text = " ".join(str(c) for c in chain)
    m = re.search(r"Unsupported globals?: (?:GLOBAL )?([\w.]+?)\.?(?:\s|$)", text)
    if m:
        return f"it pickles the Python object {m.group(1)}, which is not loaded for safety"
    m = re.search(r"'(\w+)' object has no attribute 'items'", text)
    if m:
        return f"it holds a Python {m.group(1)}, not a dict of tensors"
    refused = next((c for c in chain if "Weights only load failed" in str(c)), None)
    if refused is not None:  # torch's refusal of a pickled object other than tensors and plain values
        return unpickling_reason(refused, path)
    if any(type(c).__name__ == "SafetensorError" for c in chain):
        return "corrupt safetensors file"
    if any(isinstance(c, EOFError) for c in chain):
        return "the file is empty or truncated"
    return "not a torch.save file: corrupt, truncated or another format"


def unpickling_reason(e: BaseException, path: str | os.PathLike | None = None) -> str:
    """Why ``torch.load(weights_only=True)`` refused or failed to read a file, in a few words."""
    text = str(e)
    for marker in ("Unsupported global: GLOBAL ", "Unsupported global: ", "load unsupported GLOBAL "):
        if marker in text:
            what = text.split(marker, 1)[1].split()[0].rstrip(".,")
            return f"it pickles the Python object {what}, which is never loaded, for safety"
    if "Weights only load failed" in text:
        named = _first_global(path) if path is not None else None
        if named:
            return f"it pickles the Python object {named}, which is never loaded, for safety"
        return "it pickles Python objects other than tensors and plain values, which are never loaded, for safety"
    if isinstance(e, EOFError) or "EOF" in text:
        return "the file is empty or truncated"
    return f"not a torch.save file: {type(e).__name__}"


def _first_global(path: str | os.PathLike, limit: int = 1 << 20) -> str | None:
    """The first class or function a raw pickle names, read from its opcodes with ``pickletools``
    (which only decodes, never executes); None for a zip archive or when none is found in ``limit`` bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return None
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL" and isinstance(arg, str):
                return ".".join(arg.split(" ", 1))
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # truncated or not a pickle: nothing more to say
        return None
    return None


def infer_source(model: nn.Module, family: Family | None = None) -> SourceModel:
    """How to rebuild ``model``: its recorded source, or (for a model vitcompress did not create)
    what its family (``family``, else ``family_of(model)``) can tell from the module."""
    meta = attached(model)
    if meta is not None:
        return meta.source
    src = (family or family_of(model)).source_of(model)
    if src is None:
        raise VitCompressError(
            "cannot tell which timm model this is; create it with vitcompress.create_source_model(name)"
        )
    return src
