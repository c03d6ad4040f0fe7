"""The hybrid ViT (CNN stem + ViT): exact slicing, exact counting, artifacts, tokens, GAS, export, refusals."""

import random
from functools import partial

import pytest
import torch
from helpers import random_widths_plan
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of
from vitcompress.models import check_supported, create_source_model, list_models
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model
from vitcompress.tokens import apply_tokens, schedule_of, token_counts

# a ResNetV2 stem only (/4) and a 2x2 projection: 32 px -> 4x4 tokens; width 64, 4 heads of 16
TINY_R = ("vit_tiny_r_s16_p8_224", dict(img_size=32, patch_size=2, embed_dim=64, depth=3, num_heads=4, num_classes=10))
# a ResNet-26-D stem (BatchNorm buffers, a features-only backbone): 64 px -> 2x2 tokens
TINY_RESNETD = ("vit_small_resnet26d_224", dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=10))
KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")


def tiny_hybrid(which=TINY_R, seed=0, **overrides):
    name, kwargs = which
    torch.manual_seed(seed)
    model = create_source_model(name, **{**kwargs, **overrides})
    with torch.no_grad():  # random (not near-zero) tokens and biases so that every structure matters
        for n, p in model.named_parameters():
            if n.startswith("patch_embed.backbone."):
                continue
            if n.endswith("bias") or "token" in n:
                p.normal_(0, 0.2)
            elif n.endswith("qkv.weight"):
                p.mul_(6.0)
    return model.eval()


def random_plan(model, rng: random.Random, kinds):
    return random_widths_plan(model, rng, kinds, min_embed=20, max_mlp=200)


def test_hybrid_names_are_listed_and_recognised():
    assert {"vit_small_r26_s32_224", "vit_tiny_r_s16_p8_224"} <= set(list_models("vit_*_r*"))
    assert "vit_base_mci_224" not in list_models("vit_base_*")  # refused: its stem has no projection
    model = tiny_hybrid()
    assert family_of(model).name == "hybrid" and family_of(tiny_hybrid_plain()).name == "vit"
    assert family_of(model).input_size(model) == (3, 32, 32) and family_of(model).image_stride(model) == 8


def tiny_hybrid_plain():
    return create_source_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4)


@pytest.mark.parametrize("seed", range(8))
def test_sliced_equals_masked_reference_for_random_combinations(seed):
    rng = random.Random(seed)
    model = tiny_hybrid()
    kinds = tuple(k for k in KINDS if rng.random() < 0.5) or ("embed",)
    plan = random_plan(model, rng, kinds)
    sliced = slice_model(model, plan)
    ref = mask_model(model, plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, want, orig = sliced(x), ref(x), model(x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    # the stem is kept whole; its projection's output channels follow the embedding
    stem = {k: v for k, v in sliced.state_dict().items() if k.startswith("patch_embed.backbone.")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stem.items()) and stem
    assert sliced.patch_embed.proj.out_channels == len(plan.embed)
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


@pytest.mark.parametrize("which", [TINY_R, TINY_RESNETD], ids=["resnetv2-stem", "resnet26d"])
def test_counts_equal_the_flop_counter_and_numel(which):
    model = tiny_hybrid(which)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())
    # at another image size too (the stem's MACs scale with the image)
    fam = family_of(model)
    info = fam.arch_info(model, (2 * model.patch_embed.img_size[0],) * 2)
    assert fam.macs(fam.spec(model), info) > c.macs


@pytest.mark.slow
def test_r26_hybrid_prunes_exactly_and_keeps_batchnorm_free_stem():
    model = tiny_hybrid(
        ("vit_small_r26_s32_224", dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=10))
    )
    assert count(model).macs == measured_macs(model)
    plan = random_plan(model, random.Random(3), ("heads", "qk", "v", "mlp", "embed"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(slice_model(model, plan)(x), mask_model(model, plan)(x), atol=1e-5, rtol=0)


def test_resnet_d_stem_buffers_travel_with_the_artifact(tmp_path):
    model = tiny_hybrid(TINY_RESNETD)
    stats = {n: b for n, b in model.named_buffers() if "running_" in n}
    for b in stats.values():
        b.uniform_(0.5, 1.5)  # not the defaults, so that losing them would show
    plan = random_plan(model, random.Random(5), ("heads", "mlp", "embed"))
    vitcompress.save(slice_model(model, plan), tmp_path / "a")
    loaded = vitcompress.load(tmp_path / "a")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mask_model(model, plan)(x), atol=1e-5, rtol=0)
    got = dict(loaded.named_buffers())
    assert len(stats) > 40 and all(torch.equal(got[n], b) for n, b in stats.items())
    assert count(loaded).macs == measured_macs(loaded)


@pytest.mark.parametrize("granularity", [("heads", "qk", "v", "mlp"), ("mlp", "embed", "depth")])
def test_prune_reaches_the_budget_and_reloads(tmp_path, granularity):
    model = tiny_hybrid()
    res = vitcompress.prune(
        model,
        flops_reduction=0.3,
        importance="taylor",
        granularity=granularity,
        round_to=4,
        calib_images=16,
        batch_size=8,
        output=tmp_path / "a",
    )
    assert abs(res.achieved - 0.3) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
        torch.testing.assert_close(loaded(x), mask_model(model, res.meta.plan)(x), atol=1e-5, rtol=0)
    assert count(loaded).macs == res.meta.counts["macs"] == measured_macs(loaded)


@pytest.mark.parametrize(
    "method,schedule", [("topk-vpa", "0.5@1"), ("evit", "0.6@0,1"), ("tome", "merge=3"), ("etps", "0.5@1")]
)
def test_token_reducers_run_and_are_counted_on_a_hybrid(method, schedule):
    model = tiny_hybrid()
    plain = count(model).macs
    apply_tokens(model, schedule, method=method)
    assert token_counts(model)[-1] < 17  # 16 patches + class token at the start
    c = count(model)
    assert c.macs == measured_macs(model) < plain
    # and a token-reduced hybrid prunes like the plain model, keeping its schedule
    res = vitcompress.prune(model, flops_reduction=0.2, importance="l1", round_to=4)
    assert token_counts(res.model) == token_counts(model)


@pytest.mark.usefixtures("one_thread")
def test_gas_trains_a_hybrid(tmp_path):
    from vitcompress.callbacks import GASConfig, GASController
    from vitcompress.training import TrainConfig, fit

    model = apply_tokens(tiny_hybrid(in_chans=1), "rate=0.05@0", method="topk-vpa")
    gas = GASController(model, GASConfig(target=0.3, interval=2, start=0.0, min_step=0.02))
    cfg = TrainConfig(
        data="digits", epochs=1, batch_size=32, lr=1e-3, warmup_epochs=0.0, progress=False, max_steps_per_epoch=6
    )
    fit(model, cfg, tmp_path / "g", callbacks=[gas])
    assert len(gas.trajectory) == 1 + 6 // 2 and gas.rate != 0.05  # the controller moved the rate
    loaded = vitcompress.load(tmp_path / "g")  # the artifact records the rate it settled on
    assert schedule_of(loaded).rate == pytest.approx(gas.rate, abs=1e-6)
    assert family_of(loaded).name == "hybrid" and count(loaded).macs == measured_macs(loaded)


@pytest.mark.export
def test_onnx_export_with_dynamic_batch_and_size_matches_pytorch(tmp_path):
    from vitcompress.exporters import export_onnx

    model = tiny_hybrid(depth=1)
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=KINDS[:5], round_to=4)
    out = export_onnx(res.model, tmp_path / "h.onnx", batch="1:2:4", dynamic_size=True, img_size="16:32:48")
    assert out.parity.ok and out.parity.max_rel < 1e-4
    # image sides are multiples of the stem's stride times the projection's patch (4 x 2)
    assert {(c.batch, c.img_size) for c in out.parity.cases} == {(1, 32), (2, 32), (4, 32), (1, 16)}


def _projectionless_hybrid():
    backbone = torch.nn.Conv2d(3, 32, 4, 4)
    embed = partial(HybridEmbed, backbone=backbone, proj=False)
    return VisionTransformer(img_size=32, patch_size=1, embed_dim=32, depth=1, num_heads=2, embed_layer=embed)


@pytest.mark.parametrize(
    "build,needle",
    [
        (_projectionless_hybrid, r"has no projection \(proj=False\)"),
        (lambda: tiny_hybrid(depth=1, attn_layer="diff"), "DiffAttention"),
    ],
)
def test_unsupported_hybrid_variants_are_one_line_refusals(build, needle):
    with pytest.raises(VitCompressError, match=needle) as e:
        check_supported(build())
    assert "\n" not in str(e.value) and "supported: timm VisionTransformer" in str(e.value)


def test_cli_prunes_a_hybrid_by_name(tmp_path, capsys):
    from vitcompress.cli import main

    args = ["prune", "vit_tiny_r_s16_p8_224", "--img-size", "32", "--num-classes", "10", "--flops-reduction", "0.2"]
    assert main([*args, "--importance", "l1", "-o", str(tmp_path / "a")]) == 0
    meta = vitcompress.read_meta(tmp_path / "a")
    assert meta.source.name == "vit_tiny_r_s16_p8_224"
    assert abs(meta.history[-1]["achieved"]["macs_reduction"] - 0.2) <= 0.015
    assert family_of(vitcompress.load(tmp_path / "a")).name == "hybrid"


@pytest.mark.parametrize(
    "method,options,granularity",
    [
        ("ihp", {"steps": 3}, ("heads", "qk", "v", "mlp", "embed")),
        ("gohsp", {"rounds": 2, "steps_per_round": 2}, ("heads", "qk", "v", "mlp")),
        ("amap", {"steps": 3}, ("heads", "qk", "v", "mlp")),
    ],
)
def test_seed_methods_run_on_a_hybrid(method, options, granularity):
    from vitcompress.methods import METHODS
    from vitcompress.pruner import PruneConfig

    model = tiny_hybrid()
    cfg = PruneConfig(flops_reduction=0.3, granularity=granularity, round_to=4, calib_images=8, batch_size=8)
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(model, cfg, m.parse_options(options))
    assert abs(out.achieved - 0.3) <= 0.015
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(out.model, out.plan)(x), mask_model(out.model, out.plan)(x), atol=1e-5, rtol=0
        )
