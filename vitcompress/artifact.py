"""The artifact that flows prune -> export -> bench: ``model.safetensors`` + ``vitcompress.json``.

The JSON holds the source model (timm name and kwargs), the per-block spec that rebuilds the module
tree, the plan (kept indices in the source model's numbering), the pruning history, MACs and
params before and after, and (for token reduction) the token schedule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .counting import count
from .errors import VitCompressError
from .io import atomic_dir
from .models import SourceModel, infer_source
from .plan import Plan, identity_plan
from .spec import ViTSpec, build_model, spec_from_model

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "vitcompress.json"


@dataclass
class ArtifactMeta:
    """Everything in ``vitcompress.json``."""

    source: SourceModel
    spec: ViTSpec
    plan: Plan
    counts_source: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    tokens: dict | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {
            "format": "vitcompress",
            "format_version": self.format_version,
            "source": self.source.to_dict(),
            "spec": self.spec.to_dict(),
            "plan": self.plan.to_dict(),
            "counts_source": self.counts_source,
            "counts": self.counts,
            "history": self.history,
            "tokens": self.tokens,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ArtifactMeta:
        return cls(
            source=SourceModel.from_dict(d["source"]),
            spec=ViTSpec.from_dict(d["spec"]),
            plan=Plan.from_dict(d["plan"]),
            counts_source=d.get("counts_source", {}),
            counts=d.get("counts", {}),
            history=list(d.get("history", [])),
            tokens=d.get("tokens"),
            extra=dict(d.get("extra", {})),
            format_version=int(d["format_version"]),
        )


def meta_of(model: nn.Module) -> ArtifactMeta:
    """The model's artifact metadata; for a model vitcompress did not prune, a fresh record."""
    meta = getattr(model, "vitcompress_meta", None)
    spec = spec_from_model(model)
    if meta is None:
        source = infer_source(model)
        c = count(model).to_dict()
        meta = ArtifactMeta(source=source, spec=spec, plan=identity_plan(model), counts_source=c)
    meta.spec = spec
    meta.counts = count(model).to_dict()
    return meta


def is_artifact(path: str | os.PathLike) -> bool:
    return Path(path, META).is_file()


def save(model: nn.Module, path: str | os.PathLike, force: bool = False, meta: ArtifactMeta | None = None) -> Path:
    """Write ``model`` as an artifact folder (atomically). Returns the folder."""
    from safetensors.torch import save_file

    meta = meta or meta_of(model)
    meta.spec = spec_from_model(model)
    meta.counts = count(model).to_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path, force=force) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(meta.to_dict(), indent=1) + "\n")
    return Path(path)


def read_meta(path: str | os.PathLike) -> ArtifactMeta:
    """Parse and validate ``vitcompress.json`` of an artifact folder."""
    p = Path(path)
    if not p.exists():
        raise VitCompressError(f"artifact {str(p)!r} does not exist; create one with `vitcompress prune MODEL -o {p}`")
    if not p.is_dir() or not (p / META).is_file():
        raise VitCompressError(
            f"{str(p)!r} is not a vitcompress artifact (no {META}); pass a folder written by `vitcompress prune`"
        )
    try:
        d = json.loads((p / META).read_text())
        if d.get("format") != "vitcompress":
            raise ValueError("not a vitcompress file")
        if int(d["format_version"]) > FORMAT_VERSION:
            raise VitCompressError(
                f"artifact {str(p)!r} has format version {d['format_version']}, newer than this "
                f"vitcompress ({FORMAT_VERSION}); upgrade vitcompress"
            )
        return ArtifactMeta.from_dict(d)
    except VitCompressError:
        raise
    except Exception as e:
        raise VitCompressError(
            f"artifact {str(p)!r} is corrupt ({META}: {type(e).__name__}: {str(e)[:120]}); re-create it"
        ) from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of an artifact folder from its spec and load its weights (eval mode).

    A token schedule recorded in the artifact is applied again (``vitcompress.tokens``)."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    wpath = Path(path, WEIGHTS)
    if not wpath.is_file():
        raise VitCompressError(f"artifact {str(path)!r} is missing {WEIGHTS}; re-create it")
    try:
        model = build_model(meta.source, meta.spec)
        state = load_file(str(wpath), device=str(device))
        model.load_state_dict(state, strict=True, assign=True)
    except VitCompressError:
        raise
    except Exception as e:
        raise VitCompressError(
            f"artifact {str(path)!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:160]}); re-create it"
        ) from None
    model.vitcompress_meta = meta
    if meta.tokens:
        from .tokens import TokenSchedule, apply_tokens

        apply_tokens(model, TokenSchedule.from_dict(meta.tokens))
    return model.eval()
