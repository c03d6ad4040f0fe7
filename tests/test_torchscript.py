"""Pruned models pass ``torch.jit.script`` as the dense timm models do (timm's own TorchScript test),
with outputs equal to eager mode; FLatten models build with ``features_only=True``; EVA-02 models
prune with the default granularity (the family's kinds, said in a warning)."""

import random
import warnings

import pytest
import timm
import torch
from helpers import random_plan
from test_swin import random_plan as swin_plan

import vitcompress
import vitcompress.families.flatten.model  # noqa: F401 - registers the FLatten models with timm
from vitcompress.models import create_source_model
from vitcompress.slicers import slice_model

VIT = dict(embed_dim=64, depth=2, num_heads=4, num_classes=10)
# family: (timm name, creation options, image side, channels); CCT is not here: it is not a timm model
# and its (dense) tokenizer calls einops, which TorchScript cannot compile
FAMILIES = {
    "vit": ("vit_small_patch16_224", dict(img_size=32, patch_size=8, **VIT), 32, 3),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, **VIT), 32, 3),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(
            in_chans=1,
            num_classes=10,
            embed_dim=16,
            num_heads=(2, 4),
            img_size=32,
            patch_size=2,
            window_size=4,
            depths=(2, 2),
        ),
        32,
        1,
    ),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, **VIT), 28, 3),
    "flatten": ("flatten_deit_tiny_patch16_224", dict(img_size=32, patch_size=8, **VIT), 32, 3),
    "hybrid": ("vit_tiny_r_s16_p8_224", dict(img_size=32, patch_size=2, **VIT), 32, 3),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_models_script_like_dense_timm_models(family):
    name, kwargs, side, chans = FAMILIES[family]
    torch.manual_seed(0)
    model = create_source_model(name, **kwargs).eval()
    kinds = ("heads", "v", "mlp", "embed") if family == "eva02" else ("heads", "qk", "v", "mlp", "embed")
    if family == "swin":
        pruned = slice_model(model, swin_plan(model, random.Random(0), kinds)).eval()
    else:
        pruned = slice_model(model, random_plan(model, random.Random(0), kinds)).eval()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    scripted = torch.jit.script(pruned)
    x = torch.randn(2, chans, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), pruned(x), atol=1e-5, rtol=1e-5)


def test_flatten_models_build_features_only_like_timm_vits():
    kwargs = {**FAMILIES["flatten"][1], "depth": 4}
    torch.manual_seed(0)
    net = timm.create_model(FAMILIES["flatten"][0], **kwargs, features_only=True).eval()
    feats = net(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(2, 64, 4, 4)] * 3  # timm's ViT default: the last 3 blocks
    assert net.feature_info.channels() == [64, 64, 64]
    torch.manual_seed(0)  # the same weights
    ref = timm.create_model(FAMILIES["flatten"][0], **kwargs).eval()
    with torch.no_grad():  # the getter's features are the blocks' outputs
        x = torch.randn(2, 3, 32, 32)
        want = ref.forward_intermediates(x, indices=3, intermediates_only=True)
        for f, w in zip(net(x), want):
            torch.testing.assert_close(f, w)


def test_eva02_prunes_with_the_default_granularity_and_says_what_it_drops():
    name, kwargs, side, _ = FAMILIES["eva02"]
    torch.manual_seed(0)
    model = create_source_model(name, **kwargs).eval()
    with pytest.warns(UserWarning, match=r"default granularity prunes heads,v,mlp on this eva model, not qk \(EVA"):
        res = vitcompress.prune(model, flops_reduction=0.3, importance="l1")
    assert res.meta.history[-1]["config"]["granularity"] == ["heads", "v", "mlp"]
    assert abs(res.achieved - 0.3) <= 0.02
    # asked for explicitly, qk is still a one-line refusal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(vitcompress.VitCompressError, match="drop qk from granularity"):
            vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=("heads", "qk"))
