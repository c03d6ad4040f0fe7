"""Shared test helpers: tiny randomly initialised ViTs, a random pruning plan, a crashing callback.

Imported by the tests as ``from helpers import tiny`` (pytest puts ``tests/`` on ``sys.path``);
``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import random

import torch

from vitcompress.callbacks import Callback
from vitcompress.families import identity_plan
from vitcompress.models import create_source_model

# name, kwargs: small variants of each supported family (width 64, 4 blocks, 32 px, patch 8)
TINY = {
    "vit": (
        "vit_small_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10),
    ),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10),
    ),
    "reg_gap": (
        "vit_base_patch16_reg4_gap_256",
        dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10),
    ),
    "layerscale_noqkvbias": (
        "vit_small_patch16_224",
        dict(
            img_size=32,
            patch_size=8,
            embed_dim=64,
            depth=3,
            num_heads=4,
            num_classes=10,
            init_values=0.1,
            qkv_bias=False,
        ),
    ),
}


def tiny(kind: str = "vit", seed: int = 0, **overrides):
    """A tiny randomly initialised ViT of one of the supported families, in eval mode."""
    name, kwargs = TINY[kind]
    torch.manual_seed(seed)
    model = create_source_model(name, **{**kwargs, **overrides})
    # random (not near-zero) prefix tokens and biases so that every structure matters
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "gamma" in n:
                p.normal_(0, 0.2)
            elif n.endswith("qkv.weight"):
                p.mul_(6.0)  # sharper attention, so that every q/k dim visibly matters
    return model.eval()


def random_plan(model, rng: random.Random, kinds):
    """Remove a random subset of each requested kind (odd widths on purpose)."""
    plan = identity_plan(model)
    if "embed" in kinds:
        plan.embed = sorted(rng.sample(plan.embed, 37))
    if "depth" in kinds:
        plan.blocks = sorted(rng.sample(plan.blocks, len(plan.blocks) - 2))
    for b in plan.blocks:
        lp = plan.layers[b]
        if "heads" in kinds:
            keep = sorted(rng.sample(range(len(lp.heads)), 2 + b % 2))  # heads differ per layer
            lp.heads, lp.qk, lp.v = [lp.heads[i] for i in keep], [lp.qk[i] for i in keep], [lp.v[i] for i in keep]
        if "qk" in kinds:
            lp.qk = [sorted(rng.sample(range(16), 5)) for _ in lp.heads]
        if "v" in kinds:
            lp.v = [sorted(rng.sample(range(16), 7)) for _ in lp.heads]
        if "mlp" in kinds:
            lp.mlp = sorted(rng.sample(lp.mlp, 37))
    return plan


class Kill(Callback):
    """A training callback that simulates a crash in the middle of an epoch."""

    def __init__(self, at_step):
        self.at = at_step

    def on_step(self, loss, step):
        if step == self.at:
            raise KeyboardInterrupt
