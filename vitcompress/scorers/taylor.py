"""First-order Taylor importance: the loss change predicted for removing an element.

Removing an element sets its parameters w to zero; to first order the loss changes by
``-sum(w * dL/dw)`` over the element's slices. The score is ``|sum(w * g)|`` where ``g`` is the
gradient of the mean cross-entropy accumulated over all calibration batches.

Labels: with ``labels='auto'`` the dataset's labels are used when the dataset has exactly as many
classes as the model's classifier, otherwise the unpruned model's own predictions (argmax) serve as
pseudo-labels, so any model can be scored on any images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import VitCompressError
from ..groups import Group, reduce_group
from ..logits import logits_of


def accumulate_grads(model: nn.Module, loader, labels: str = "auto", progress: bool = False) -> dict[str, torch.Tensor]:
    """Sum over batches of d(mean CE)/dw for every parameter (model left unchanged, eval mode)."""
    if loader is None:
        raise VitCompressError("the taylor scorer needs calibration data; pass --data digits|mnist10k|DIR")
    n_cls = getattr(loader.dataset, "num_classes", None)
    use_true = labels == "true" or (labels == "auto" and n_cls == model.num_classes)
    was_training = model.training
    model.eval()
    params = dict(model.named_parameters())
    req = {n: p.requires_grad for n, p in params.items()}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        ref = next(model.parameters())
        device = ref.device
        for x, y in tqdm(loader, desc="taylor scores", disable=not progress, leave=False):
            x = x.to(device=device, dtype=ref.dtype)
            logits = logits_of(model(x))
            target = y.to(device) if use_true else logits.detach().argmax(-1)
            loss = F.cross_entropy(logits, target)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(req[n])
        model.train(was_training)
    return grads


def taylor(
    model: nn.Module, groups: list[Group], *, loader=None, labels: str = "auto", progress: bool = False, **_
) -> list[torch.Tensor]:
    """|sum of w * dL/dw| over each element's slices."""
    grads = accumulate_grads(model, loader, labels, progress)
    params = dict(model.named_parameters())
    return [reduce_group(g, torch.mul, params, grads).abs() for g in groups]


taylor.needs_data = True
