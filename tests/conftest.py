"""Shared fixtures: tiny, randomly initialised ViTs that build in milliseconds."""

from __future__ import annotations

import pytest
import torch

from vitcompress.models import create_source_model
from vitcompress.training import Callback

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


@pytest.fixture(params=sorted(TINY))
def tiny_kind(request):
    return request.param


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models train faster without thread hand-offs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Kill(Callback):
    """A training callback that simulates a crash in the middle of an epoch."""

    def __init__(self, at_step):
        self.at = at_step

    def on_step(self, loss, step):
        if step == self.at:
            raise KeyboardInterrupt
