"""The ViT variants beyond the plain block: gated MLPs (SwiGLU, GluMlp), attention pooling (SigLIP's
``map``), RMSNorm, attention-output and MLP norms, post-norm and parallel blocks, pooling without a
classifier token. Each is sliced exactly (sliced == masked over random granularity combinations),
counted exactly (analytic MACs == flop counter, analytic params == numel), and pruned to a budget
and reloaded."""

import random
import zlib

import pytest
import torch
from helpers import random_plan

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.families import family_of
from vitcompress.models import create_source_model
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=10)
# id: (timm name, extra options): tiny versions of the variants users bring
VARIANTS = {
    "swiglu": ("vit_small_patch16_224", dict(mlp_layer="swiglu", act_layer="silu", mlp_ratio=2.75)),
    "swiglu_packed": ("vit_giant_patch14_dinov2", dict(mlp_ratio=4)),  # DINOv2-giant's packed SwiGLU
    "glu_sigmoid": ("vit_small_patch16_224", dict(mlp_layer="glu", act_layer="sigmoid")),
    "aimv2": ("aimv2_large_patch14_224", {}),  # RMSNorm everywhere, SwiGLU, no biases, patch norm
    "siglip_map": ("vit_base_patch16_siglip_224", {}),  # attention pooling, no class token
    "map_with_prefix": ("test_vit3", {}),  # attention pooling over the register token too, layer scale
    "rmsnorm": ("test_vit4", {}),  # RMSNorm, register token, dynamic image size
    "beit3_norms": ("beit3_base_patch16_224", {}),  # attention-output and MLP hidden norms
    "respost": ("vit_base_patch16_rpn_224", {}),  # norms after the branches
    "parallel_rms_qknorm": ("vit_base_patch16_xp_224", {}),  # ViT-22B block: RMSNorm, qk-norm, no biases
    "parallel_bias_ls": ("vit_pwee_patch16_reg1_gap_256", {}),
    "parallel_fused_out": ("vit_pwee_patch16_reg1_gap_256", dict(block_fn="parallel_scaling_fused")),
    "no_pool": ("vit_small_patch16_224", dict(global_pool="")),  # classifier on every token
    "max_pool_no_pos": ("vit_small_patch16_224", dict(global_pool="max", class_token=False, pos_embed="none")),
    "pre_norm_gelu_tanh": ("vit_small_patch16_224", dict(pre_norm=True, act_layer="gelu_tanh", norm_eps=1e-5)),
}
COMBOS = [("heads", "mlp", "embed"), ("qk", "v", "depth"), ("heads", "qk", "v", "mlp", "embed", "depth")]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def variant(key: str, seed: int = 0, **overrides):
    name, extra = VARIANTS[key]
    torch.manual_seed(seed)
    kwargs = {**TINY, **extra, **overrides}
    if "norm_eps" in kwargs:
        kwargs["norm_layer"] = "layernorm"
    model = create_source_model(name, **kwargs)
    with torch.no_grad():  # random (not near-zero) tokens, biases, scales and norms, so that everything matters
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "gamma" in n or "latent" in n:
                p.normal_(0, 0.2)
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5)
            elif n.endswith(("qkv.weight", "in_proj.weight")):
                p.mul_(6.0)
    return model.eval()


def allowed(model, kinds):
    """The kinds of ``kinds`` the model's family prunes exactly (q/k dims stay whole with qk-norm)."""
    try:
        family_of(model).check_kinds(model, kinds)
    except vitcompress.VitCompressError:
        return tuple(k for k in kinds if k != "qk")
    return kinds


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_variant_counts_match_the_flop_counter_and_numel(key):
    model = variant(key)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kinds", COMBOS, ids=["+".join(c) for c in COMBOS])
@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_variant_sliced_equals_masked_reference(key, kinds):
    model = variant(key)
    kinds = allowed(model, kinds)
    plan = random_plan(model, random.Random(zlib.crc32(f"{key}{kinds}".encode())), kinds)
    sliced, ref = slice_model(model, plan), mask_model(model, plan)
    with torch.no_grad():
        out, want, orig = sliced(X), ref(X), model(X)
    assert out.shape == orig.shape
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    c = count(sliced)
    assert c.macs == measured_macs(sliced) < count(model).macs
    assert c.params == sum(p.numel() for p in sliced.parameters()) < count(model).params


@pytest.mark.parametrize("key", ["swiglu_packed", "siglip_map", "aimv2", "parallel_rms_qknorm", "beit3_norms"])
def test_variant_prunes_to_a_budget_and_reloads(key, tmp_path):
    model = variant(key)
    kinds = allowed(model, ("heads", "qk", "v", "mlp", "embed"))
    res = vitcompress.prune(model, flops_reduction=0.4, importance="l1", granularity=kinds, output=tmp_path / "a")
    assert abs(res.achieved - 0.4) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(X), res.model(X))
        torch.testing.assert_close(loaded(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=1e-5)
    assert count(loaded).macs == measured_macs(loaded)
