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
from .spec import SourceModel, Spec

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
        return cls(
            source=SourceModel.from_dict(d["source"]),
            spec=Spec.from_dict(d["spec"]),
            plan=Plan.from_dict(d["plan"]),
            counts_source=d.get("counts_source", {}),
            counts=d.get("counts", {}),
            history=list(d.get("history", [])),
            tokens=d.get("tokens"),
            extra=dict(d.get("extra", {})),
            format_version=int(d["format_version"]),
        )


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
