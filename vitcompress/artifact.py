"""The artifact that flows prune -> export -> bench: ``model.safetensors`` + ``vitcompress.json``.

The JSON (``meta.ArtifactMeta``) holds the source model (timm name and kwargs), the spec that
rebuilds the module tree, the plan (kept indices in the source model's numbering), the pruning
history, MACs and params before and after, and (for token reduction) the token schedule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .counting import Counts, count
from .errors import VitCompressError
from .families import build_model, family_of
from .io import atomic_dir
from .meta import FORMAT_VERSION, ArtifactMeta, attach, attached
from .models import infer_source
from .tokens.apply import apply_tokens, schedule_of
from .tokens.schedule import TokenSchedule

WEIGHTS = "model.safetensors"
META = "vitcompress.json"

__all__ = [
    "FORMAT_VERSION",
    "META",
    "WEIGHTS",
    "ArtifactMeta",
    "history_record",
    "is_artifact",
    "load",
    "meta_of",
    "read_meta",
    "record_step",
    "save",
]


def meta_of(model: nn.Module) -> ArtifactMeta:
    """The model's artifact record with its spec, counts and token schedule read off the model; for
    a model vitcompress did not create or prune, a fresh record (which the model then carries)."""
    meta = attached(model)
    if meta is None:
        meta = ArtifactMeta(source=infer_source(model))
        attach(model, meta)
    return refresh(model, meta)


def refresh(model: nn.Module, meta: ArtifactMeta) -> ArtifactMeta:
    """Fill ``meta``'s derived fields from ``model`` (in place): spec, counts, token schedule, and
    the plan and source counts of a model nothing was removed from yet."""
    fam = family_of(model)
    if meta.plan is None:
        meta.plan = fam.identity_plan(model)
    if not meta.counts_source:
        meta.counts_source = count(model, with_schedule=False).to_dict()
    meta.spec = fam.spec(model)
    meta.counts = count(model).to_dict()
    sched = schedule_of(model)
    meta.tokens = sched.to_dict() if sched is not None else None
    return meta


def history_record(
    method: str, config: dict, target: tuple[str, float], before: Counts, after: Counts, **details
) -> dict:
    """One entry of an artifact's history: what a step did (``method``, its ``config`` and
    method-specific ``details``), what it aimed at (``target = (metric, reduction)``) and what it
    achieved (MACs and params before and after)."""
    return {
        "method": method,
        **details,
        "config": config,
        "target": {"metric": target[0], "reduction": target[1]},
        "achieved": {
            "macs_reduction": 1 - after.macs / before.macs,
            "params_reduction": 1 - after.params / before.params,
        },
        "before": before.to_dict(),
        "after": after.to_dict(),
    }


def record_step(model: nn.Module, record: dict) -> ArtifactMeta:
    """Append a history entry to ``model``'s record (see ``history_record``); returns the record."""
    meta = meta_of(model)
    meta.history.append(record)
    return meta


def is_artifact(path: str | os.PathLike) -> bool:
    return Path(path, META).is_file()


def save(model: nn.Module, path: str | os.PathLike, force: bool = False, meta: ArtifactMeta | None = None) -> Path:
    """Write ``model`` as an artifact folder (atomically). Returns the folder.

    ``meta`` (default: the record the model carries) supplies the source, plan, history and extras;
    spec, counts and token schedule are always the model's own."""
    meta = meta_of(model) if meta is None else refresh(model, meta)
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
    meta = read_meta(path)
    wpath = Path(path, WEIGHTS)
    if not wpath.is_file():
        raise VitCompressError(f"artifact {str(path)!r} is missing {WEIGHTS}; re-create it")
    try:
        model = build_model(meta.source, meta.require_spec())
        state = load_file(str(wpath), device=str(device))
        model.load_state_dict(state, strict=True, assign=True)
    except VitCompressError:
        raise
    except Exception as e:
        raise VitCompressError(
            f"artifact {str(path)!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:160]}); re-create it"
        ) from None
    attach(model, meta)
    if meta.tokens:
        apply_tokens(model, TokenSchedule.from_dict(meta.tokens))
    return model.eval()
