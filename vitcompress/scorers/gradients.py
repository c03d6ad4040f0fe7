"""The calibration pass behind the gradient scorers: labels, and one gradient per batch.

Targets: with ``labels='auto'`` the dataset's labels are used when the dataset has exactly as many
classes as the model's classifier (``'true'``), otherwise the unpruned model's own predictions
(argmax, ``'pseudo'``), so any model can be scored on any images. ``labels='true'`` or
``'pseudo'`` forces one of them.

``batch_gradients`` yields, for every calibration batch ``b``, the gradient ``g_b`` of that batch's
mean cross-entropy with respect to the requested parameters (model in eval mode: no dropout or
drop-path; parameters, ``requires_grad`` flags and the train/eval mode are restored afterwards).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitCompressError
from ..groups import Group
from ..logits import logits_of
from ..progress import tqdm

LABEL_MODES = ("auto", "true", "pseudo")


def label_source(model: nn.Module, loader, labels: str = "auto") -> str:
    """``'true'`` or ``'pseudo'``: which targets a gradient scorer uses for this model and data."""
    if labels not in LABEL_MODES:
        raise VitCompressError(f"labels must be auto, true or pseudo, got {labels!r}")
    if labels != "auto":
        return labels
    n_cls = getattr(getattr(loader, "dataset", None), "num_classes", None)
    return "true" if n_cls is not None and n_cls == getattr(model, "num_classes", None) else "pseudo"


def member_params(groups: Iterable[Group]) -> list[str]:
    """Names of the parameters any group reads, in first-seen order."""
    return list(dict.fromkeys(m.param for g in groups for m in g.members))


def batch_gradients(
    model: nn.Module,
    loader,
    names: Iterable[str],
    labels: str = "auto",
    progress: bool = False,
    desc: str = "scores",
) -> Iterator[dict[str, torch.Tensor]]:
    """Per calibration batch: ``{name: d(mean CE of the batch)/d(param)}`` for the named parameters.

    The yielded tensors are the parameters' ``.grad`` buffers and are overwritten by the next
    batch: use (or copy) them before asking for the next one.
    """
    if loader is None:
        raise VitCompressError("this scorer needs calibration data; pass --data digits|mnist10k|DIR")
    use_true = label_source(model, loader, labels) == "true"
    params = dict(model.named_parameters())
    wanted = {n: params[n] for n in names}
    was_training = model.training
    req = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    try:
        for n, p in params.items():
            p.requires_grad_(n in wanted)
            p.grad = None
        ref = next(iter(wanted.values())) if wanted else next(model.parameters())
        for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x = x.to(device=ref.device, dtype=ref.dtype)
            logits = logits_of(model(x))
            target = y.to(ref.device) if use_true else logits.detach().argmax(-1)
            loss = F.cross_entropy(logits, target)
            for p in wanted.values():
                p.grad = None
            loss.backward()
            yield {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in wanted.items()}
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(req[n])
        model.train(was_training)
