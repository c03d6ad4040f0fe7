"""MACs and parameter counts of any supported model, and a ``torch.utils.flop_counter`` check.

Convention: one MAC is one multiply-accumulate of a matrix product or convolution (what pruning
papers call "FLOPs", DeiT-S = 4.6 G); FLOPs = 2 x MACs. Normalisation, softmax, activations,
bias additions and residual additions are not counted, matching ``torch.utils.flop_counter``.
The formulas are the model family's (``Family.macs`` / ``Family.params``, analytic in the spec);
a model carrying a token schedule is counted with the schedule's per-block token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .families import BlockTokens, Family, family_of
from .tokens.apply import schedule_of
from .tokens.counting import block_tokens


@dataclass
class Counts:
    """Per-image multiply-accumulates and parameter count."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {"macs": self.macs, "flops": self.flops, "params": self.params}


def count(
    model: nn.Module, tokens: Sequence[int] | None = None, with_schedule: bool = True, family: Family | None = None
) -> Counts:
    """Analytic MACs and params of a (pruned) model of a supported family.

    ``tokens[i]`` is the token count entering block i. By default a model carrying a token
    schedule is counted with the schedule's per-block counts and the reducers' own products
    (``with_schedule=False``: every token in every block). ``family`` is the model's family when
    the caller already knows it (else ``family_of``)."""
    fam = family or family_of(model)
    spec = fam.spec(model)
    info = fam.arch_info(model)
    per_block = None
    if tokens is not None:
        per_block = [BlockTokens(int(t), int(t)) for t in tokens]
    elif with_schedule:
        sched = schedule_of(model)
        if sched is not None:
            per_block = block_tokens(spec, fam.token_layout(info), sched)
    return Counts(fam.macs(spec, info, per_block), fam.params(spec, info))


def measured_macs(model: nn.Module, img_size: Sequence[int] | None = None, batch: int = 1) -> int:
    """MACs per image measured by ``torch.utils.flop_counter`` on a real forward pass.

    Attention runs on its explicit-matmul path and under the math SDPA kernel: the fused kernels
    used on CPU are not registered with the flop counter, the math path computes the same products
    and is counted."""
    c, h, w = family_of(model).input_size(model)
    if img_size is not None:
        h, w = img_size
    p = next(model.parameters())
    x = torch.randn(batch, c, h, w, device=p.device, dtype=p.dtype)
    fused = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    grads = [(q, q.requires_grad) for q in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for m, _ in fused:
            m.fused_attn = False
        for q, _ in grads:  # a view of a parameter made under no_grad (a pool's latent query) trips the counter
            q.requires_grad_(False)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for m, flag in fused:
            m.fused_attn = flag
        for q, flag in grads:
            q.requires_grad_(flag)
        model.train(was_training)
    return fc.get_total_flops() // (2 * batch)
