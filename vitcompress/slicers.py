"""How tensors are cut: apply a ``Plan`` to a model and get a smaller dense model.

``slice_model`` asks the model's family for the new spec (``Family.spec_after``) and the cut
tensors (``Family.slice_state``: each family's slicers know its modules' tensor layouts), builds an
empty model of that spec (so every module's metadata - heads, q/k and v widths, softmax scale,
features - comes from one place and cannot go stale) and loads the tensors into it.
"""

from __future__ import annotations

from torch import nn

from .counting import count
from .families import Family, family_of
from .families.base import take
from .meta import ArtifactMeta, attach, attached
from .models import infer_source
from .plan import Plan, compose

__all__ = ["slice_model", "take"]


def slice_model(model: nn.Module, plan: Plan, family: Family | None = None) -> nn.Module:
    """A new dense model: ``model`` with everything the plan does not keep removed.

    The original is left untouched. The result is in eval mode on the original's device/dtype, and
    carries the original's record with the plan composed into it (so each block knows its index in
    the unpruned model); a pruning step adds its history entry on top. ``family`` is the model's
    family when the caller already knows it (else ``family_of``).
    """
    plan.validate()
    fam = family or family_of(model)
    source = infer_source(model, fam)
    prev = attached(model)
    spec = fam.spec_after(fam.spec(model), plan)
    state = fam.slice_state(model, plan)
    new = fam.build(source, spec)
    new.load_state_dict(state, strict=True, assign=True)
    for attr in ("pretrained_cfg", "default_cfg"):
        if hasattr(model, attr):
            setattr(new, attr, getattr(model, attr))
    base = prev.plan if prev is not None and prev.plan is not None else fam.identity_plan(model)
    attach(
        new,
        ArtifactMeta(
            source=source,
            plan=compose(base, plan),
            counts_source=dict(prev.counts_source)
            if prev is not None and prev.counts_source
            else count(model, with_schedule=False, family=fam).to_dict(),
            history=list(prev.history) if prev is not None else [],
            extra=dict(prev.extra) if prev is not None else {},
        ),
    )
    return new.train(model.training)
