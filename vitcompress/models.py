"""Source models: create a timm Vision Transformer by name and check that vitcompress can prune it."""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from .errors import VitCompressError
from .layers import PrunedAttention
from .registry import suggest

SUPPORTED_FAMILIES = (
    "timm VisionTransformer models: vit_* (ViT-Ti/S/B/L/H, register-token variants), "
    "deit_* and deit3_* (DeiT, distilled DeiT)"
)
_SUPPORTED_MODULES = ("timm.models.vision_transformer", "timm.models.deit")

# timm keyword arguments that describe an architecture and are safe to store in an artifact.
_ARCH_KEYS = (
    "img_size",
    "patch_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "class_token",
    "reg_tokens",
    "no_embed_class",
    "qkv_bias",
    "init_values",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "pre_norm",
    "fc_norm",
    "dynamic_img_size",
)


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
        return cls(name=d["name"], kwargs=dict(d.get("kwargs", {})))


def list_models(pattern: str = "*") -> list[str]:
    """timm model names of the supported families that match a glob pattern."""
    names = []
    for name in timm.list_models(pattern):
        try:
            module = timm.models.model_entrypoint(name).__module__
        except Exception:  # pragma: no cover - timm registry inconsistencies
            continue
        if module in _SUPPORTED_MODULES and fnmatch.fnmatch(name, pattern):
            names.append(name)
    return names


def check_model_name(name: str) -> None:
    """Raise a one-line error for a name timm does not know, with close names."""
    if not timm.is_model(name):
        raise VitCompressError(
            f"unknown model {name!r}{suggest(name, timm.list_models())}; list models with `vitcompress models 'deit*'`"
        )
    module = timm.models.model_entrypoint(name).__module__
    if module not in _SUPPORTED_MODULES:
        raise VitCompressError(
            f"unsupported architecture {name!r} ({module.rsplit('.', 1)[-1]}); supported: {SUPPORTED_FAMILIES}"
        )


def check_supported(model: nn.Module, name: str = "") -> None:
    """Raise a one-line error unless the module tree is one vitcompress can slice exactly."""
    label = name or type(model).__name__
    problems = []
    if not isinstance(model, VisionTransformer):
        problems.append(f"{type(model).__name__} is not a VisionTransformer")
    else:
        if getattr(model, "attn_pool", None) is not None:
            problems.append(f"attention pooling (global_pool={model.global_pool!r})")
        if model.global_pool not in ("token", "avg", ""):
            problems.append(f"global_pool={model.global_pool!r}")
        if model.pos_embed is None:
            problems.append("no position embedding")
        for i, blk in enumerate(model.blocks):
            if type(blk) is not Block:
                problems.append(f"block {i} is {type(blk).__name__}")
                break
            if not isinstance(blk.attn, (Attention, PrunedAttention)) or getattr(blk.attn, "gate", None) is not None:
                problems.append(f"block {i} attention is {type(blk.attn).__name__}")
                break
            if not isinstance(blk.attn.norm if hasattr(blk.attn, "norm") else nn.Identity(), nn.Identity):
                problems.append("attention output norm (scale_attn_norm)")
                break
            if type(blk.mlp) is not Mlp or not isinstance(blk.mlp.norm, nn.Identity):
                problems.append(f"block {i} MLP is {type(blk.mlp).__name__}")
                break
            for norm in (blk.norm1, blk.norm2):
                if not isinstance(norm, nn.LayerNorm):
                    problems.append(f"block {i} uses {type(norm).__name__} instead of LayerNorm")
                    break
    if problems:
        raise VitCompressError(
            f"unsupported architecture {label}: {'; '.join(problems)}; supported: {SUPPORTED_FAMILIES}"
        )


def create_source_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create an unpruned timm ViT by name, optionally with hub weights or a local checkpoint.

    ``kwargs`` are passed to ``timm.create_model`` (for example ``num_classes``, ``img_size``,
    ``patch_size``) and recorded in the model's ``vitcompress_source`` attribute so that an
    artifact can rebuild the same architecture.
    """
    check_model_name(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except VitCompressError:
        raise
    except TypeError as e:
        raise VitCompressError(f"cannot create {name!r} with {kwargs}: {e}") from None
    except Exception as e:  # hub unreachable, bad kwargs
        if pretrained:
            raise VitCompressError(
                f"cannot load pretrained weights for {name!r} ({type(e).__name__}: {str(e)[:160]}); "
                "use --checkpoint FILE on machines without hub access"
            ) from None
        raise VitCompressError(f"cannot create {name!r}: {e}") from None
    check_supported(model, name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.vitcompress_source = SourceModel(name, kwargs)
    return model.eval()


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a state dict (.safetensors, .pth/.pt with optional 'model'/'state_dict' wrapping)."""
    if not os.path.isfile(path):
        raise VitCompressError(f"checkpoint {path!r} does not exist; pass a .safetensors or .pth file")
    try:
        state = timm.models.load_state_dict(path, use_ema=False)
        why = _not_a_state_dict(state)
    except Exception as e:
        why = _unreadable_reason(e)
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
            "pass the model name and --num-classes/--img-size it was trained with"
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


def _unreadable_reason(e: BaseException) -> str:
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
    if any(type(c).__name__ == "SafetensorError" for c in chain):
        return "corrupt safetensors file"
    if any(isinstance(c, EOFError) for c in chain):
        return "the file is empty or truncated"
    return "not a torch.save file: corrupt, truncated or another format"


def infer_source(model: nn.Module) -> SourceModel:
    """Best-effort SourceModel for a timm ViT that vitcompress did not create itself."""
    src = getattr(model, "vitcompress_source", None)
    if src is not None:
        return src
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if not name:
        raise VitCompressError(
            "cannot tell which timm model this is; create it with vitcompress.create_source_model(name)"
        )
    pe = model.patch_embed
    kwargs = {
        "img_size": list(pe.img_size),
        "patch_size": list(pe.patch_size),
        "in_chans": pe.proj.in_channels,
        "num_classes": model.num_classes,
    }
    return SourceModel(name, kwargs)
