"""Importance from a gate on each element's output: Taylor on activations, and Fisher.

Put a scalar gate ``m`` on the output of an element (an MLP neuron's activation, a head's
attention output, a value dim), 1 in the model. Removing the element is ``m = 0``; to first order
the loss of batch ``b`` changes by ``-dL_b/dm``, and ``dL_b/dm = sum a * dL_b/da`` over the
element's output values ``a`` (all images of the batch, all tokens).

Where the output is read: for a linear layer ``y = W x``, ``sum_j W[:, j] * dL/dW[:, j]`` equals
``sum x_j * dL/dx_j`` over every position, so the gate gradient is read off the parameter
gradients of the element's *consumer* slices: the group members that are input columns (dim 1) of
a linear or convolution weight (``proj`` columns for heads and value dims, ``fc2`` columns for MLP
neurons, the ``qkv``/``fc1``/classifier input columns for embedding channels). No hook is needed,
and any group built from linear layers is covered. Elements without such a consumer slice (q/k
dims, whose q and k rows produce the removed ``q.k`` term; whole blocks) gate every member slice:
scaling all of them to zero is exactly the removal.

- ``taylor-act``: ``sum_b |dL_b/dm|`` (Molchanov et al. 2017, per batch).
- ``fisher``: ``sum_b (dL_b/dm)^2``: the empirical Fisher information of the gate, per batch
  (Theis et al. 2018; Kwon et al. 2022 use the same mask Fisher for transformers).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..groups import Group, Member, reduce_group
from .gradients import batch_gradients, member_params

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_input_columns(modules: dict[str, nn.Module], m: Member) -> bool:
    owner, _, leaf = m.param.rpartition(".")
    mod = modules.get(owner)
    return (
        leaf == "weight"
        and m.dim == 1
        and isinstance(mod, _LAYERS)
        and getattr(mod, "groups", 1) == 1  # grouped convs: dim 1 is not the input channel
    )


def output_gate(model: nn.Module, group: Group) -> Group:
    """The group restricted to the slices whose ``sum w * dL/dw`` is the gradient of the element's
    output gate: its consumer input columns, or all its slices when it has none."""
    modules = dict(model.named_modules())
    consumers = [m for m in group.members if _is_input_columns(modules, m)]
    return dataclasses.replace(group, members=consumers or list(group.members))


def gate_gradients(
    model: nn.Module,
    groups: list[Group],
    *,
    loader,
    labels: str = "auto",
    progress: bool = False,
    desc="gate",
    max_memory: float | None = None,
    micro_batch: int | None = None,
):
    """Per batch: the list of ``dL_b/dm`` tensors (``group.shape``, float64), one per group."""
    gates = [output_gate(model, g) for g in groups]
    params = dict(model.named_parameters())
    for grads in batch_gradients(model, loader, member_params(gates), labels, progress, desc, max_memory, micro_batch):
        with torch.no_grad():
            yield [reduce_group(g, torch.mul, params, grads) for g in gates]


def _sum_over_batches(model, groups, loader, labels, progress, fn, desc, **mem) -> list[torch.Tensor]:
    total: list[torch.Tensor] | None = None
    for per_group in gate_gradients(model, groups, loader=loader, labels=labels, progress=progress, desc=desc, **mem):
        if total is None:
            total = [fn(t) for t in per_group]
        else:  # accumulated per group in place
            for a, t in zip(total, per_group):
                a += fn(t)
    return total if total is not None else [torch.zeros(g.shape, dtype=torch.float64) for g in groups]


def taylor_act(
    model: nn.Module,
    groups: list[Group],
    *,
    loader=None,
    labels: str = "auto",
    progress: bool = False,
    max_memory: float | None = None,
    micro_batch: int | None = None,
    **_,
) -> list[torch.Tensor]:
    """sum over batches of |sum a * dL_b/da| over the element's output a (its output gate's gradient)."""
    return _sum_over_batches(
        model,
        groups,
        loader,
        labels,
        progress,
        torch.abs,
        "taylor-act scores",
        max_memory=max_memory,
        micro_batch=micro_batch,
    )


def fisher(
    model: nn.Module,
    groups: list[Group],
    *,
    loader=None,
    labels: str = "auto",
    progress: bool = False,
    max_memory: float | None = None,
    micro_batch: int | None = None,
    **_,
) -> list[torch.Tensor]:
    """sum over batches of (dL_b/dm)^2, m the gate on the element's output."""
    return _sum_over_batches(
        model,
        groups,
        loader,
        labels,
        progress,
        torch.square,
        "fisher scores",
        max_memory=max_memory,
        micro_batch=micro_batch,
    )


for _f in (taylor_act, fisher):
    _f.needs_data = True
