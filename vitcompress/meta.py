"""vitcompress's record of a model: one attribute on the module, written as the artifact's JSON.

A model created, pruned or loaded by vitcompress carries one ``ArtifactMeta`` in
``model.vitcompress_meta`` (as timm keeps one ``pretrained_cfg``): the source model, the plan in
the source's numbering, the pruning history and the counts of the source. What the modules
themselves define is never kept beside them: the spec is read off the modules
(``Family.spec``), the token schedule off the reducers (``tokens.schedule_of``), the counts are
computed (``counting.count``); ``artifact.meta_of`` fills those three fields in when a record is
written or shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .plan import Plan
from .spec import RecordError, SourceModel, Spec, as_dict, as_float, as_int, as_list, check_finite_json, need

FORMAT_VERSION = 1
ATTR = "vitcompress_meta"


@dataclass
class ArtifactMeta:
    """Everything in ``vitcompress.json``.

    ``plan`` is None for a model nothing was removed from yet (it keeps everything); ``spec``,
    ``counts`` and ``tokens`` are derived from the model when the record is written.
    """

    source: SourceModel
    spec: Spec | None = None
    plan: Plan | None = None
    counts_source: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    tokens: dict | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def require_spec(self) -> Spec:
        """The spec (always present in a written artifact; a fresh model's record gets it from
        ``artifact.meta_of``)."""
        if self.spec is None:
            raise ValueError("this record has no spec yet; build it with artifact.meta_of(model)")
        return self.spec

    def to_dict(self) -> dict:
        if self.spec is None or self.plan is None:
            raise ValueError("an artifact record needs its spec and plan; build it with artifact.meta_of(model)")
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
        """The record in ``d`` (parsed ``vitcompress.json``), every field type- and range-checked;
        ``RecordError`` naming the first bad field. ``artifact.read_meta`` adds the checks that need
        the model family (creation options, the plan against the source model, the token schedule,
        the history steps)."""
        version = as_int(need(d, "format_version", ""), "format_version", 1)
        spec = Spec.from_dict(need(d, "spec", ""))
        plan = Plan.from_dict(need(d, "plan", ""))
        plan.check(spec)
        tokens = d.get("tokens")
        if tokens is not None:
            as_dict(tokens, "tokens")
        history = as_list(d.get("history", []), "history")
        for i, step in enumerate(history):
            check_step(as_dict(step, f"history[{i}]"), f"history[{i}]")
        return cls(
            source=SourceModel.from_dict(need(d, "source", "")),
            spec=spec,
            plan=plan,
            counts_source=check_counts(d.get("counts_source", {}), "counts_source"),
            counts=check_counts(d.get("counts", {}), "counts"),
            history=list(history),
            tokens=tokens,
            extra=_extra(d.get("extra", {})),
            format_version=version,
        )


def _extra(v) -> dict:
    """The record's ``extra`` object: any JSON, but finite numbers only (``check_finite_json``)."""
    check_finite_json(as_dict(v, "extra"), "extra")
    return dict(v)


COUNT_KEYS = ("macs", "flops", "params")


def check_counts(d: dict, where: str) -> dict:
    """A record's MACs/FLOPs/params (``counting.Counts.to_dict``): macs and params integers >= 1,
    flops (when present) an integer >= 0, nothing else."""
    as_dict(d, where)
    for key in ("macs", "params"):
        as_int(need(d, key, where), f"{where}.{key}", 1, 2**62)
    if "flops" in d:
        as_int(d["flops"], f"{where}.flops", 0, 2**63 - 1)
    extra = [k for k in d if k not in COUNT_KEYS]
    if extra:
        raise RecordError(f"{where}.{extra[0][:20]} is not a count (known: {', '.join(COUNT_KEYS)})")
    return dict(d)


def check_step(step: dict, where: str) -> None:
    """The fields of one history step that readers use (``artifact.history_record`` writes them):
    ``method`` a string; ``target`` an object with ``metric`` (macs, params or latency) and a finite
    ``reduction`` (or null for a token step); ``achieved`` an object of finite numbers; ``config``
    an object whose ``granularity`` is a list of strings and ``importance`` a string;
    ``method_options`` an object. A token step's ``schedule`` is checked by ``artifact.read_meta``."""
    method = step.get("method", "")
    if not isinstance(method, str):
        raise RecordError(f"{where}.method is not a string")
    target = step.get("target")
    if target is not None or method not in ("tokens", "quantize"):  # a quantize step removes no MACs
        metric = need(target, "metric", f"{where}.target")
        if metric not in ("macs", "params", "latency"):
            raise RecordError(f"{where}.target.metric is not macs, params or latency")
        reduction = need(target, "reduction", f"{where}.target")
        if reduction is not None or method != "tokens":
            as_float(reduction, f"{where}.target.reduction")
    for key, value in as_dict(step.get("achieved", {}), f"{where}.achieved").items():
        as_float(value, f"{where}.achieved.{key}")
    if method == "tokens":
        as_float(need(need(step, "achieved", where), "macs_reduction", f"{where}.achieved"), f"{where}.achieved")
    cfg = as_dict(step.get("config", {}), f"{where}.config")
    gran = as_list(cfg.get("granularity", []), f"{where}.config.granularity")
    if not all(isinstance(g, str) for g in gran):
        raise RecordError(f"{where}.config.granularity is not a list of strings")
    if not isinstance(cfg.get("importance", ""), str):
        raise RecordError(f"{where}.config.importance is not a string")
    as_dict(step.get("method_options", {}), f"{where}.method_options")
    if not isinstance(step.get("labels_used") or "", str):
        raise RecordError(f"{where}.labels_used is not a string")


def attached(model: nn.Module) -> ArtifactMeta | None:
    """The record ``model`` carries, or None."""
    return getattr(model, ATTR, None)


def attach(model: nn.Module, meta: ArtifactMeta) -> nn.Module:
    """Give ``model`` its record (replacing any previous one); returns ``model``."""
    setattr(model, ATTR, meta)
    return model


def source_indices(model: nn.Module, depth: int) -> list[int]:
    """Index in the unpruned model of each of the ``depth`` blocks ``model`` has (from its plan)."""
    meta = attached(model)
    if meta is not None and meta.plan is not None and len(meta.plan.blocks) == depth:
        return list(meta.plan.blocks)
    return list(range(depth))
