"""The artifact that flows prune -> export -> bench: ``model.safetensors`` + ``vitcompress.json``.

The JSON (``meta.ArtifactMeta``) holds the source model (timm name and kwargs), the spec that
rebuilds the module tree, the plan (kept indices in the source model's numbering), the pruning
history, MACs and params before and after, and (for token reduction) the token schedule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .counting import Counts, count
from .errors import VitCompressError
from .families import Family, build_model, family_for_source, family_of
from .io import atomic_dir, check_output_path
from .meta import FORMAT_VERSION, ArtifactMeta, attach, attached
from .models import infer_source
from .quantizers import apply_quantizers, check_record, record_of
from .spec import RecordError, Spec
from .tokens.apply import apply_tokens, schedule_of
from .tokens.schedule import TokenSchedule

WEIGHTS = "model.safetensors"
META = "vitcompress.json"

__all__ = [
    "FORMAT_VERSION",
    "META",
    "WEIGHTS",
    "ArtifactMeta",
    "check_output",
    "history_record",
    "is_artifact",
    "load",
    "meta_of",
    "read_meta",
    "record_step",
    "save",
]


def meta_of(model: nn.Module, family: Family | None = None) -> ArtifactMeta:
    """The model's artifact record with its spec, counts and token schedule read off the model; for
    a model vitcompress did not create or prune, a fresh record (which the model then carries).
    ``family``: the model's, when the caller already knows it."""
    meta = attached(model)
    if meta is None:
        meta = ArtifactMeta(source=infer_source(model, family))
        attach(model, meta)
    return refresh(model, meta, family)


def refresh(model: nn.Module, meta: ArtifactMeta, family: Family | None = None) -> ArtifactMeta:
    """Fill ``meta``'s derived fields from ``model`` (in place): spec, counts, token schedule, and
    the plan and source counts of a model nothing was removed from yet (``family``: the model's,
    when already known)."""
    fam = family or family_of(model)
    if meta.plan is None:
        meta.plan = fam.identity_plan(model)
    if not meta.counts_source:
        meta.counts_source = count(model, with_schedule=False, family=fam).to_dict()
    meta.spec = fam.spec(model)
    meta.counts = count(model, family=fam).to_dict()
    sched = schedule_of(model)
    meta.tokens = sched.to_dict() if sched is not None else None
    quant = record_of(model)
    if quant is not None:  # the precision and layers are the model's; calibration details stay
        meta.extra["quantization"] = {**meta.extra.get("quantization", {}), **quant}
    else:
        meta.extra.pop("quantization", None)
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


def record_step(model: nn.Module, record: dict, family: Family | None = None) -> ArtifactMeta:
    """Append a history entry to ``model``'s record (see ``history_record``); returns the record."""
    meta = meta_of(model, family)
    meta.history.append(record)
    return meta


def is_artifact(path: str | os.PathLike) -> bool:
    return Path(path, META).is_file()


def check_output(
    path: str | os.PathLike,
    *,
    force: bool = False,
    inputs: Iterable = (),
    kind: str = "folder",
    exists_ok: bool = False,
    resumable: bool = False,
    what: str = "output",
    others: Iterable = (),
) -> Path:
    """Refuse, in one line and before anything is written, an output path whose writing would lose
    data; returns it as a ``Path``.

    Always refused, ``force`` or not (the one output rule): an empty path, the working folder or a
    folder containing it (``io.check_output_path``), the same path as one of ``inputs`` (the
    artifact folders and files the run reads: artifact, teacher, checkpoint, table, config; modules
    and model names are skipped), a path inside one or containing one, and the same path as one of
    ``others`` (the run's other outputs, existing or not). Refused without ``force``:
    a path inside an artifact folder, and an existing path (unless ``exists_ok``; ``resumable``: the
    message offers ``resume=True`` too). An existing path of the other ``kind`` (``folder`` or
    ``file``) is refused either way."""
    p = check_output_path(path, what)
    target = Path(os.path.realpath(p))
    for inp in inputs:
        if inp is None or isinstance(inp, nn.Module) or not os.path.exists(str(inp)):
            continue
        src = Path(os.path.realpath(str(inp)))
        if src == target:
            raise VitCompressError(
                f"{what} {str(path)!r} is the input {str(inp)!r}; no run writes over what it reads, even with "
                "force=True: choose another path",
                params=["force"],
            )
        if src in target.parents:
            raise VitCompressError(
                f"{what} {str(path)!r} is inside the input {str(inp)!r}; no run writes into what it reads, "
                "choose a path outside it"
            )
        if target in src.parents:
            raise VitCompressError(
                f"{what} {str(path)!r} contains the input {str(inp)!r}, and writing it would replace that input; "
                "choose another path"
            )
    for other in others:
        if other is not None and Path(os.path.realpath(str(other))) == target:
            raise VitCompressError(
                f"{what} {str(path)!r} is also the path of another output of this run ({str(other)!r}); "
                "choose two different paths"
            )
    if not force:
        inside = next((a for a in target.parents if is_artifact(a)), None)
        if inside is not None:
            raise VitCompressError(
                f"{what} {str(path)!r} is inside the artifact folder {str(inside)!r}; pass force=True to write "
                "there or choose a path outside it",
                params=["force"],
            )
    if os.path.lexists(p):
        is_dir = os.path.isdir(p)
        if kind == "file" and is_dir:
            raise VitCompressError(f"{what} {str(path)!r} is a folder; pass a file path such as {p / 'out'}")
        if kind == "folder" and not is_dir:
            raise VitCompressError(f"{what} {str(path)!r} is a file, not a folder; choose another path")
        if not (force or exists_ok):
            how = (
                "pass resume=True to continue it, force=True to overwrite it,"
                if resumable
                else ("pass force=True to overwrite it")
            )
            raise VitCompressError(
                f"{what} {str(path)!r} already exists; {how} or choose another path", params=["resume", "force"]
            )
    return p


def save(
    model: nn.Module,
    path: str | os.PathLike,
    force: bool = False,
    meta: ArtifactMeta | None = None,
    family: Family | None = None,
) -> Path:
    """Write ``model`` as an artifact folder (atomically). Returns the folder.

    ``meta`` (default: the record the model carries) supplies the source, plan, history and extras;
    spec, counts and token schedule are always the model's own (``family``: the model's, when the
    caller already knows it)."""
    meta = meta_of(model, family) if meta is None else refresh(model, meta, family)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    need = sum(v.numel() * v.element_size() for v in state.values())
    with atomic_dir(path, force=force, need=need) as tmp:
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
        if not isinstance(d, dict) or d.get("format") != "vitcompress":
            raise RecordError("not a vitcompress file (format is not 'vitcompress')")
        version = d.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise VitCompressError(
                f"artifact {str(p)!r} has format version {version}, newer than this "
                f"vitcompress ({FORMAT_VERSION}); upgrade vitcompress"
            )
        meta = ArtifactMeta.from_dict(d)
        check_with_family(meta)
        return meta
    except VitCompressError:
        raise
    except RecordError as e:
        raise VitCompressError(f"artifact {str(p)!r} is corrupt ({META}: {str(e)[:200]}); re-create it") from None
    except Exception as e:
        raise VitCompressError(
            f"artifact {str(p)!r} is corrupt ({META}: {type(e).__name__}: {str(e)[:120]}); re-create it"
        ) from None


def check_with_family(meta: ArtifactMeta) -> None:
    """The checks of a record that need its model family: the creation options
    (``Family.check_source``: only those the family records, and ``counts_source`` must be the counts
    of the model they describe), the plan against the source model (``Plan.check``: nothing kept that
    the source does not have), the token schedule and every
    token step of the history (``TokenSchedule.from_dict``, blocks within the depth). Raises
    ``RecordError`` naming the field, or ``VitCompressError`` for a model no family rebuilds."""
    fam = family_for_source(meta.source)
    fam.check_source(meta.source)
    spec = meta.require_spec()
    try:
        source_spec = fam.source_spec(meta.source)
        info = fam.arch_info(fam.build(meta.source, spec, device="meta"))
    except (RecordError, VitCompressError):
        raise
    except (
        Exception
    ) as e:  # options of the right kinds the model's code refuses together (heads not dividing the width)
        text = " ".join(str(e).split())[:120] or "its own check failed"
        raise RecordError(f"source.kwargs and spec do not build a model ({type(e).__name__}: {text})") from None
    if meta.plan is not None:
        meta.plan.check(spec, source_spec)
    _check_source_counts(fam, meta, source_spec, info)
    if meta.tokens is not None:
        _schedule(meta.tokens, "tokens", spec.depth)
    if "quantization" in meta.extra:
        check_record(meta.extra["quantization"])
    for i, step in enumerate(meta.history):
        if step.get("method") == "tokens":
            _schedule(step.get("schedule"), f"history[{i}].schedule", None)


def _check_source_counts(fam: Family, meta: ArtifactMeta, source_spec: Spec, info: object) -> None:
    """``RecordError`` unless ``counts_source`` (the MACs and parameters recorded for the unpruned
    model) are those of the model ``source.kwargs`` describe: a creation option changed after the
    record was written (``depth``, ``embed_dim``, ``num_classes``, ``img_size``, ...) describes another
    model than the one the artifact was pruned from. The counts are analytic (``Family.macs`` and
    ``Family.params`` of the source's widths, with the width-independent constants read off a model of
    the artifact's spec built on the meta device: ``info``), so a huge width or depth costs no memory."""
    macs, params = fam.macs(source_spec, info), fam.params(source_spec, info)
    got = meta.counts_source
    if (got.get("macs"), got.get("params")) != (macs, params):
        dims = ",".join(str(d) for d in source_spec.stage_dims)
        raise RecordError(
            f"source.kwargs (depth {source_spec.depth}, width {dims}) give {params:,} params and {macs:,} MACs, "
            f"counts_source {got['params']:,} and {got['macs']:,}: they are not the source model's options"
        )


def _schedule(d, where: str, depth: int | None) -> TokenSchedule:
    sched = TokenSchedule.from_dict(d, where)
    if depth is not None:
        try:
            sched.validate(depth)
        except VitCompressError as e:
            raise RecordError(f"{where}: {e}") from None
    return sched


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of an artifact folder from its spec and load its weights (eval mode).

    A token schedule recorded in the artifact is applied again (``vitcompress.tokens``); a
    quantized artifact's layers are fake-quantized again (``vitcompress.quantizers``), their scales
    read from the weights file."""
    meta = read_meta(path)
    wpath = Path(path, WEIGHTS)
    if not wpath.is_file():
        raise VitCompressError(f"artifact {str(path)!r} is missing {WEIGHTS}; re-create it")
    try:
        model = build_model(meta.source, meta.require_spec())
        if "quantization" in meta.extra:
            precision, layers = check_record(meta.extra["quantization"])
            try:
                apply_quantizers(model, layers, precision)
            except (AttributeError, VitCompressError) as e:
                raise RecordError(f"extra.quantization.layers: {str(e).splitlines()[0][:120]}") from None
        state = load_file(str(wpath), device=str(device))
        check_weights(state, model.state_dict())
        model.load_state_dict(state, strict=True, assign=True)
        attach(model, meta)
        if meta.tokens:  # the model is of the family that built it
            apply_tokens(model, TokenSchedule.from_dict(meta.tokens), family=family_for_source(meta.source))
    except VitCompressError:
        raise
    except RecordError as e:
        raise VitCompressError(f"artifact {str(path)!r} is corrupt ({WEIGHTS}: {e}); re-create it") from None
    except Exception as e:
        raise VitCompressError(
            f"artifact {str(path)!r} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:160]}); re-create it"
        ) from None
    return model.eval()


def check_weights(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """``RecordError`` unless ``state`` has exactly the tensors of ``own`` (a model built from the
    record, on any device), each of the same shape and dtype, and every floating-point value finite
    (NaN or infinite weights are refused, not copied into later artifacts)."""
    missing = [k for k in own if k not in state]
    if missing:
        raise RecordError(f"tensor {missing[0]!r} is missing ({len(missing)} missing)")
    extra = [k for k in state if k not in own]
    if extra:
        raise RecordError(f"tensor {extra[0]!r} is not part of the model")
    for k, t in state.items():
        ref = own[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise RecordError(f"tensor {k!r} has shape {tuple(t.shape)}, the spec gives {tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise RecordError(f"tensor {k!r} is {t.dtype}, the model expects {ref.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RecordError(f"tensor {k!r} holds NaN or infinite values")
