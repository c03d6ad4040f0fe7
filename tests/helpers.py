"""Shared test helpers: tiny randomly initialised ViTs, a random pruning plan, a crashing callback,
latency tables with known entries.

Imported by the tests as ``from helpers import tiny`` (pytest puts ``tests/`` on ``sys.path``);
``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from vitcompress.callbacks import Callback
from vitcompress.families import family_of, identity_plan
from vitcompress.latency import ATTN_AXES, MLP_AXES, LatencyTable, full_widths, source_of, stair_widths
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


def random_widths_plan(model, rng: random.Random, kinds, *, min_embed: int, max_mlp: int):
    """Remove a random share of each requested kind: random, odd widths (heads of 16 dims)."""
    plan = identity_plan(model)
    if "embed" in kinds:
        plan.embed = sorted(rng.sample(plan.embed, rng.randint(min_embed, 60)))
    if "depth" in kinds:
        plan.blocks = sorted(rng.sample(plan.blocks, rng.randint(1, len(plan.blocks) - 1)))
    for b in plan.blocks:
        lp = plan.layers[b]
        if "heads" in kinds:
            keep = sorted(rng.sample(range(len(lp.heads)), rng.randint(1, 3)))
            lp.heads, lp.qk, lp.v = [lp.heads[i] for i in keep], [lp.qk[i] for i in keep], [lp.v[i] for i in keep]
        if "qk" in kinds:
            n = rng.randint(1, 15)
            lp.qk = [sorted(rng.sample(range(16), n)) for _ in lp.heads]
        if "v" in kinds:
            n = rng.randint(1, 15)
            lp.v = [sorted(rng.sample(range(16), n)) for _ in lp.heads]
        if "mlp" in kinds:
            lp.mlp = sorted(rng.sample(lp.mlp, rng.randint(1, max_mlp)))
    return plan


class Kill(Callback):
    """A training callback that simulates a crash in the middle of an epoch."""

    def __init__(self, at_step):
        self.at = at_step

    def on_step(self, loss, step):
        if step == self.at:
            raise KeyboardInterrupt


def attn_work(d, t, h, qk, v):
    """Multiply-accumulates of one attention sublayer (the synthetic tables' cost model)."""
    return t * d * h * (2 * qk + v) + h * t * t * (qk + v) + t * h * v * d


def synthetic_table(model, *, head_ms=0.0, steps=None, ns_per_mac=1.0, rest_ms=0.05, batch=4, backend="torch-cpu"):
    """A ``LatencyTable`` of ``model`` whose entries are known: ``ns_per_mac`` x batch x the sublayer's
    MACs, plus ``head_ms`` per attention head; ``steps`` (kind -> step) place the grid points."""
    full = full_widths(model)
    steps = {"qk": 1, "v": 1, "mlp": 1, "embed": 1, "heads": 1, **(steps or {})}
    grid = {
        "embed": stair_widths(full["embed"], steps["embed"], 2, low=full["embed"] // 2),
        "tokens": sorted({max(full["prefix"] + 1, full["tokens"] // 3), (2 * full["tokens"]) // 3, full["tokens"]}),
        "heads": [1, full["heads"]],
        "qk": stair_widths(full["qk"], steps["qk"], 3),
        "v": stair_widths(full["v"], steps["v"], 3),
        "mlp": stair_widths(full["mlp"], steps["mlp"], 3),
    }
    scale = ns_per_mac * batch * 1e-6
    attn = np.zeros([len(grid[a]) for a in ATTN_AXES])
    for idx in np.ndindex(attn.shape):
        d, t, h, qk, v = (grid[a][i] for a, i in zip(ATTN_AXES, idx))
        attn[idx] = scale * attn_work(d, t, h, qk, v) + head_ms * h
    mlp = np.zeros([len(grid[a]) for a in MLP_AXES])
    for idx in np.ndindex(mlp.shape):
        d, t, m = (grid[a][i] for a, i in zip(MLP_AXES, idx))
        mlp[idx] = scale * 2 * t * d * m
    return LatencyTable(
        backend=backend,
        batch=batch,
        precision="fp32",
        mode="eager",
        threads=1,
        source=source_of(model).to_dict(),
        family=family_of(model).name,
        full=full,
        steps=steps,
        grid=grid,
        attn_ms=attn.tolist(),
        mlp_ms=mlp.tolist(),
        rest_ms=[rest_ms] * len(grid["embed"]),
    )
