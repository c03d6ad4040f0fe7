"""The EVA family (timm ``Eva``: EVA-02 with rotary embeddings, q/v biases, SwiGLU; EVA; rope ViTs):
sliced == masked over random granularity combinations, exact counts, pruning to a budget, reloading
and pruning again; q/k dims (rotated in pairs) and unsupported variants are refused in one line."""

import random
import zlib

import pytest
import torch
from helpers import random_plan

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import refused_models
from vitcompress.models import create_source_model
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

TINY = dict(img_size=28, patch_size=7, embed_dim=64, depth=3, num_heads=4, num_classes=10)
VARIANTS = {
    "eva02_rope_swiglu_packed": ("eva02_tiny_patch14_224", {}),  # rope, q/v biases, GluMlp (SwiGLU packed)
    "eva02_separate_qkv": ("eva02_base_patch14_224", {}),  # separate q/k/v projections
    "eva02_norms": ("eva02_tiny_patch14_224", dict(scale_mlp=True, scale_attn_inner=True)),  # SwiGLU + norms
    "rope_reg_layer_scale": ("vit_medium_patch16_rope_reg1_gap_256", {}),  # no class token, no abs pos embed
    "eva_plain": ("eva_giant_patch14_224", dict(mlp_ratio=4.0)),  # no rope, GELU MLP
    "dinov3": ("vit_small_patch16_dinov3_qkvb", {}),  # DINOv3 rope (rope_type='dinov3'), 4 registers, layer scale
}
COMBOS = [("heads", "mlp", "embed"), ("v", "depth"), ("heads", "v", "mlp", "embed", "depth")]
X = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def variant(key: str):
    name, extra = VARIANTS[key]
    torch.manual_seed(0)
    model = create_source_model(name, **{**TINY, **extra})
    with torch.no_grad():  # random (not near-zero) biases, tokens, scales, norms and head, so that everything matters
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "gamma" in n:
                p.normal_(0, 0.2)
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5)
            elif n.endswith(("qkv.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
            elif n.startswith("head"):
                p.normal_(0, 0.3)
    return model.eval()


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_eva_counts_match_the_flop_counter_and_numel(key):
    model = variant(key)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kinds", COMBOS, ids=["+".join(c) for c in COMBOS])
@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_eva_sliced_equals_masked_reference(key, kinds):
    model = variant(key)
    plan = random_plan(model, random.Random(zlib.crc32(f"{key}{kinds}".encode())), kinds)
    sliced, ref = slice_model(model, plan), mask_model(model, plan)
    with torch.no_grad():
        out, want, orig = sliced(X), ref(X), model(X)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    c = count(sliced)
    assert c.macs == measured_macs(sliced) < count(model).macs
    assert c.params == sum(p.numel() for p in sliced.parameters()) < count(model).params


@pytest.mark.parametrize("key", ["eva02_rope_swiglu_packed", "eva02_separate_qkv"])
def test_eva_prunes_to_a_budget_reloads_and_prunes_again(key, tmp_path):
    model = variant(key)
    kinds = ("heads", "v", "mlp", "embed")
    res = vitcompress.prune(model, flops_reduction=0.4, importance="l1", granularity=kinds, output=tmp_path / "a")
    assert abs(res.achieved - 0.4) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(X), res.model(X))
        torch.testing.assert_close(loaded(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=1e-5)
    again = vitcompress.prune(loaded, flops_reduction=0.2, importance="l1", granularity=kinds)
    with torch.no_grad():  # the composed plan masks the unpruned model
        torch.testing.assert_close(again.model(X), mask_model(model, again.meta.plan)(X), atol=1e-5, rtol=1e-5)


def test_eva_q_k_dims_are_pruned_with_whole_heads_only():
    model = variant("eva02_rope_swiglu_packed")
    with pytest.raises(VitCompressError, match="rotate q/k dims in pairs.*drop qk from granularity"):
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=("heads", "qk"))


@pytest.mark.parametrize(
    "name,needle",
    [
        ("eva02_enormous_patch14_clip_224", "EvaBlockPostNorm"),
        ("vit_base_patch16_rope_mixed_224", "RotaryEmbeddingMixed"),
        ("vit_base_patch16_rope_224", "AttentionRope"),
    ],
)
def test_unsupported_eva_variants_are_refused_by_name_with_the_reason(name, needle):
    with pytest.raises(VitCompressError, match=needle) as e:
        create_source_model(name, depth=1, img_size=32)
    assert "\n" not in str(e.value)
    assert name not in vitcompress.list_models("*")


def test_dinov3_names_are_listed_and_created_at_a_fixed_size():
    names = vitcompress.list_models("*dinov3*")
    assert {"vit_small_patch16_dinov3", "vit_base_patch16_dinov3_qkvb", "vit_7b_patch16_dinov3"} <= set(names)
    assert not refused_models("*dinov3*")
    model = variant("dinov3")
    assert type(model.rope).__name__ == "RotaryEmbeddingDinoV3" and not model.dynamic_img_size
