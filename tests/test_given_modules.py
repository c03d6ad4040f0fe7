"""Edges of the pruning core: a module given to ``prune`` is rebuilt from its own options or refused in
one line; headless models keep their output width unless asked; the masked reference with qk-norm
as wide as the embedding; images smaller than a patch."""

from functools import partial

import pytest
import timm
import torch
from helpers import tiny

import vitcompress
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of, identity_plan
from vitcompress.models import create_source_model, infer_source
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
# constructor options a user's own timm model may carry; each changes the forward
OPTIONS = {
    "avg_pool_no_fc_norm": dict(global_pool="avg", fc_norm=False),
    "relu": dict(act_layer="relu"),
    "scale_mlp_norm": dict(scale_mlp_norm=True),
    "scale_attn_norm": dict(scale_attn_norm=True),
    "no_class_token": dict(class_token=False, global_pool="avg"),
    "reg_tokens": dict(reg_tokens=3),
    "no_embed_class": dict(no_embed_class=True, reg_tokens=1),
    "pre_norm_no_final_norm": dict(pre_norm=True, final_norm=False),
    "rmsnorm_eps": dict(norm_layer="rmsnorm"),
    "layer_scale": dict(init_values=0.1),
    "qk_norm": dict(qk_norm=True),
    "no_qkv_bias": dict(qkv_bias=False),
    "swiglu": dict(mlp_layer=timm.layers.SwiGLU, act_layer="silu"),
    "dynamic_img_size": dict(dynamic_img_size=True),
    "no_pos_embed": dict(pos_embed="none"),
    "map_pool": dict(global_pool="map", class_token=False),
    "eps_1e5": dict(norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)),
}


def _randomised(model):
    """Random (not near-zero) biases, tokens, scales and norm weights, so that every option matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "gamma" in n or "latent" in n:
                p.normal_(0, 0.2)
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def _timm(name="vit_small_patch16_224", **options):
    """A model built by timm directly (vitcompress never saw its options)."""
    torch.manual_seed(0)
    return _randomised(timm.create_model(name, **{**TINY, **options}))


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_a_given_module_is_rebuilt_with_its_own_options(key):
    """The source read off the module rebuilds it exactly (same output from the same weights), and
    pruning it one shot gives the masked module itself."""
    model = _timm(**OPTIONS[key])
    src = infer_source(model)
    assert set(src.kwargs) <= set(family_of(model).source_keys)  # the keys the family declares it writes
    rebuilt = family_of(model).create(src.name, **src.kwargs).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(X), model(X), atol=1e-6, rtol=0)
    kinds = ("heads", "mlp", "embed") if "qk_norm" in OPTIONS[key] else ("heads", "qk", "v", "mlp", "embed")
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=kinds)
    with torch.no_grad():
        torch.testing.assert_close(res.model(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "build,needle",
    [
        (lambda: _timm("vit_dwee_patch16_reg1_gap_256"), "DiffAttention"),
        (lambda: _timm(act_layer=torch.nn.PReLU), "activation PReLU"),
        (lambda: timm.create_model("convnext_atto", num_classes=10), "ConvNeXt"),
        (lambda: _widened_mlp(_timm()), "blocks.1.mlp.fc1 is Linear"),
        (lambda: _timm(norm_layer=partial(torch.nn.LayerNorm, elementwise_affine=False)), "affine"),
    ],
    ids=["diff_attention", "prelu", "other_architecture", "edited_module", "norm_without_affine"],
)
def test_a_module_that_cannot_be_rebuilt_is_refused_in_one_line(build, needle, tmp_path):
    model = build()
    with pytest.raises(VitCompressError, match=needle) as e:
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", output=tmp_path / "a")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "a").exists()


def _widened_mlp(model):
    """A block edited by hand: its MLP is wider than the configuration says."""
    blk = model.blocks[1]
    blk.mlp = timm.layers.Mlp(64, 300)
    return model


def test_a_headless_model_keeps_its_feature_width_unless_asked(tmp_path):
    model = tiny("vit", num_classes=0)
    with pytest.raises(VitCompressError, match="no classifier.*narrows its output features.*change_features=True"):
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=("heads", "mlp", "embed"))
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=("heads", "mlp"))
    assert res.model(X).shape[-1] == model.embed_dim
    res = vitcompress.prune(model, flops_reduction=0.25, importance="l1", granularity=("embed",), change_features=True)
    out = res.meta.history[-1]["output_features"]
    assert out["before"] == model.embed_dim and out["after"] == res.model.embed_dim < model.embed_dim


def test_mask_model_with_qk_norm_as_wide_as_the_embedding():
    """One head of the embedding's width: the q/k norms have the embedding's width but are not norms
    over the residual stream, so the masked reference keeps them as they are."""
    torch.manual_seed(0)
    model = _randomised(create_source_model("vit_small_patch16_224", **{**TINY, "num_heads": 1, "qk_norm": True}))
    plan = identity_plan(model)
    plan.embed = plan.embed[::2]
    plan.layers[0].mlp = plan.layers[0].mlp[:100]
    with torch.no_grad():
        torch.testing.assert_close(slice_model(model, plan)(X), mask_model(model, plan)(X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("img", [4, 7])
def test_an_image_smaller_than_the_patch_is_refused(img):
    with pytest.raises(VitCompressError, match=r"smaller than the patch \(8 px\).*img_size of at least 8"):
        create_source_model("vit_small_patch16_224", **{**TINY, "img_size": img})


def test_cli_refuses_an_image_smaller_than_the_patch(tmp_path, capsys):
    argv = ["prune", "vit_tiny_patch16_224", "--img-size", "8", "--flops-reduction", "0.3", "-o", str(tmp_path / "a")]
    assert main(argv) == 2
    assert "smaller than the patch (16 px)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
