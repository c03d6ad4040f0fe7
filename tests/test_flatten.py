"""The FLatten family (focused linear attention in a timm ViT): the attention against its quadratic
definition, exact slicing, linear-attention counting, artifacts, export, refusals and AMAP's
linear-attention initialisation."""

import random

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import random_plan

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of, identity_plan
from vitcompress.families.flatten import FocusedLinearAttention
from vitcompress.models import create_source_model, list_models
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model
from vitcompress.tokens import apply_tokens

NAME = "flatten_deit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10)
KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny_flatten(seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_source_model(NAME, **{**TINY, **overrides})
    with torch.no_grad():  # random (not near-zero) biases, tokens and focusing scales so that everything matters
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "focus_scale" in n:
                p.normal_(0, 0.3)
            elif n.endswith("qkv.weight"):
                p.mul_(6.0)
    return model.eval()


def quadratic_reference(attn: FocusedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention written out from the paper's definitions, with the N x N matrix formed."""
    B, N, _ = x.shape
    h, qk, v = attn.num_heads, attn.qk_dim, attn.v_dim
    q, k, vv = attn.qkv(x).split([h * qk, h * qk, h * v], -1)
    q, k = (t.reshape(B, N, h, qk).transpose(1, 2) for t in (q, k))
    vv = vv.reshape(B, N, h, v).transpose(1, 2)
    s = F.softplus(attn.focus_scale).reshape(h, 1, qk)

    def phi(t):
        r = F.relu(t) / s
        p = r**attn.focusing_factor
        return r.norm(dim=-1, keepdim=True) * p / p.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    sim = phi(q) @ phi(k).transpose(-2, -1)  # [B, H, N, N], non-negative
    out = (sim / sim.sum(-1, keepdim=True)) @ vv
    gh, gw = attn.grid_size
    pre = attn.num_prefix_tokens
    patches = vv[:, :, pre:].transpose(-2, -1).reshape(B, h * v, gh, gw)
    conv = F.conv2d(patches, attn.dwc.weight, attn.dwc.bias, padding=attn.kernel_size // 2, groups=h * v)
    out[:, :, pre:] += conv.reshape(B, h, v, gh * gw).transpose(-2, -1)
    return attn.proj(out.transpose(1, 2).reshape(B, N, h * v))


def test_flatten_models_are_registered_with_timm_and_listed():
    assert {NAME, "flatten_deit_small_patch16_224", "flatten_deit_base_patch16_224"} <= set(list_models("flatten*"))
    net = timm.create_model(NAME, **TINY)
    assert all(isinstance(b.attn, FocusedLinearAttention) for b in net.blocks)
    assert family_of(net).name == "flatten" and net.pretrained_cfg["architecture"] == NAME
    a = net.blocks[0].attn
    assert (a.focusing_factor, a.kernel_size, a.grid_size, a.num_prefix_tokens) == (3.0, 5, (4, 4), 1)
    # the depthwise convolution has one kernel per head and value channel, the focusing scale one per q/k channel
    assert a.dwc.weight.shape == (64, 1, 5, 5) and a.focus_scale.shape == (64,)


@pytest.mark.parametrize("focusing_factor", [3.0, 1.0, 2.5])
def test_focused_linear_attention_equals_its_quadratic_definition(focusing_factor):
    model = tiny_flatten(focusing_factor=focusing_factor)
    attn = model.blocks[1].attn
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), quadratic_reference(attn, x), atol=1e-5, rtol=1e-4)
    # phi keeps the length of ReLU(x)/softplus(s) and, for p = 1, is that vector itself
    q = torch.randn(2, 4, 17, 16)
    with torch.no_grad():
        r = F.relu(q) / F.softplus(attn.focus_scale).reshape(4, 1, 16)
        torch.testing.assert_close(attn.focus(q).norm(dim=-1), r.norm(dim=-1), atol=1e-5, rtol=1e-4)
        if focusing_factor == 1.0:
            torch.testing.assert_close(attn.focus(q), r, atol=1e-6, rtol=1e-5)


def test_the_focusing_factor_sharpens_attention():
    """A larger power concentrates each query's attention on fewer keys (lower entropy)."""
    x = torch.randn(1, 17, 64, generator=torch.Generator().manual_seed(1))
    entropies = []
    for p in (1.0, 3.0, 6.0):
        attn = tiny_flatten(focusing_factor=p).blocks[0].attn
        with torch.no_grad():
            q, k, _ = attn.features(x)
            sim = q @ k.transpose(-2, -1)
            a = sim / sim.sum(-1, keepdim=True)
            entropies.append(float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean()))
    assert entropies[0] > entropies[1] > entropies[2]


@pytest.mark.parametrize("seed", range(8))
def test_sliced_equals_masked_reference_for_random_combinations(seed):
    rng = random.Random(seed)
    model = tiny_flatten(seed)
    kinds = tuple(k for k in KINDS if rng.random() < 0.5) or ("qk",)
    plan = random_plan(model, rng, kinds)
    sliced = slice_model(model, plan)
    ref = mask_model(model, plan)
    with torch.no_grad():
        out, want, orig = sliced(X), ref(X), model(X)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    # the focusing scales and the depthwise convolution follow their channels
    lp = plan.layers[plan.blocks[0]]
    a0, b0 = model.blocks[plan.blocks[0]].attn, sliced.blocks[0].attn
    q_ch = [h * 16 + d for h, ds in zip(lp.heads, lp.qk) for d in ds]
    v_ch = [h * 16 + d for h, ds in zip(lp.heads, lp.v) for d in ds]
    assert torch.equal(b0.focus_scale, a0.focus_scale[q_ch]) and torch.equal(b0.dwc.weight, a0.dwc.weight[v_ch])
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


@pytest.mark.parametrize(
    "overrides", [{}, {"kernel_size": 3, "global_pool": "avg"}, {"class_token": False, "global_pool": "avg"}]
)
def test_counts_equal_the_flop_counter_and_numel(overrides):
    model = tiny_flatten(**overrides)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())


def test_attention_cost_is_linear_in_tokens():
    """Per-block MACs at 4, 16 and 64 patches (measured and analytic agree at each): the second
    difference in the token count is zero, where softmax attention's N^2 term would show."""
    per_block = []
    for side in (16, 32, 64):
        model = tiny_flatten(img_size=side, depth=1)
        fam = family_of(model)
        assert count(model).macs == measured_macs(model)
        per_block.append(fam.block_macs(fam.spec(model), fam.arch_info(model))[0])
    tokens = [5, 17, 65]
    slopes = [(per_block[i + 1] - per_block[i]) / (tokens[i + 1] - tokens[i]) for i in range(2)]
    assert slopes[0] == pytest.approx(slopes[1], rel=1e-3)  # linear: constant MACs per token (+ patch conv)


@pytest.mark.parametrize("granularity", [("heads", "qk", "v", "mlp"), ("mlp", "embed", "depth")])
def test_prune_reaches_the_budget_and_reloads(tmp_path, granularity):
    model = tiny_flatten()
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
    assert family_of(loaded).name == "flatten"
    with torch.no_grad():
        assert torch.equal(loaded(X), res.model(X))
        torch.testing.assert_close(loaded(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=0)
    assert count(loaded).macs == res.meta.counts["macs"] == measured_macs(loaded)


def test_info_says_attention_is_linear_in_tokens(tmp_path, capsys):
    from vitcompress.cli import main

    args = ["prune", NAME, "--img-size", "32", "--num-classes", "10", "--flops-reduction", "0.2"]
    assert main([*args, "--importance", "l1", "-o", str(tmp_path / "a")]) == 0
    assert main(["info", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "linear in tokens" in out and vitcompress.read_meta(tmp_path / "a").source.name == NAME
    assert main(["models", "flatten*"]) == 0
    assert "# flatten: FLatten Transformer" in capsys.readouterr().out


@pytest.mark.export
def test_onnx_export_matches_pytorch_and_refuses_dynamic_size(tmp_path):
    from vitcompress.exporters import export_onnx

    model = tiny_flatten(depth=2)
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=KINDS[:5], round_to=4)
    out = export_onnx(res.model, tmp_path / "f.onnx", batch="1:2:4")
    assert out.parity.ok and out.parity.max_rel < 1e-4
    assert {c.batch for c in out.parity.cases} == {1, 2, 4}
    with pytest.raises(VitCompressError, match="cannot take other image sizes") as e:
        export_onnx(res.model, tmp_path / "g.onnx", batch="1:2:4", dynamic_size=True, img_size="16:32:48")
    assert "\n" not in str(e.value)


def test_unsupported_uses_are_one_line_refusals():
    with pytest.raises(VitCompressError, match="token reduction does not apply to the flatten family") as e:
        apply_tokens(tiny_flatten(depth=1), "0.5@0", method="topk")
    assert "\n" not in str(e.value)
    with pytest.raises(VitCompressError, match="one image size") as e:
        create_source_model(NAME, **TINY, dynamic_img_size=True)
    assert "\n" not in str(e.value)
    model = tiny_flatten(depth=2)
    model.blocks[1].attn = timm.layers.Attention(64, num_heads=4, qkv_bias=True)
    with pytest.raises(VitCompressError, match="block 1 attention is Attention") as e:
        family_of(model)
    assert "\n" not in str(e.value)


def test_qk_removal_effect_is_the_change_of_removing_the_channel():
    """Entry (h, d) equals the change of head h's output when dim d is sliced away (from every head:
    heads are independent, so head h changes by its own dim only)."""
    model = tiny_flatten(depth=1)
    attn = model.blocks[0].attn
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        effect = attn.qk_removal_effect(x)
        full = attn.linear_attention(*attn.features(x))
        for d in (3, 11):
            plan = identity_plan(model)
            plan.layers[0].qk = [[j for j in range(16) if j != d] for _ in range(4)]
            cut = slice_model(model, plan).blocks[0].attn
            o = cut.linear_attention(*cut.features(x))
            want = (o - full).square().sum(dim=(-2, -1)).sqrt().sum(0)  # per head
            torch.testing.assert_close(effect[:, d].float(), want, atol=1e-6, rtol=1e-4)
    assert (effect > 0).all()


def test_amap_starts_linear_attention_indicators_from_the_attention_difference():
    from vitcompress.methods import METHODS
    from vitcompress.methods.activations import block_inputs
    from vitcompress.methods.amap import calibration_statistics
    from vitcompress.pruner import PruneConfig

    model = tiny_flatten(in_chans=1)
    cfg = PruneConfig(flops_reduction=0.3, granularity=("heads", "qk", "v", "mlp"), round_to=4, calib_images=8)
    cfg.validate()
    loader = [(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))]
    weights, init = calibration_statistics(model, loader, cfg.granularity)
    assert sorted(init) == [("qk", l) for l in range(4)] and set(weights) >= {("qk", 0), ("v", 0)}
    fam = family_of(model)
    # the effect on block 0's attention input, normalised to mean 1, capped at 2
    ((attn_in, _),) = list(block_inputs(model, loader))
    effect = fam.attention_difference(model.blocks[0].attn, attn_in[0]).float()
    torch.testing.assert_close(init[("qk", 0)], (effect / effect.mean()).clamp(max=2.0), atol=1e-5, rtol=1e-4)
    m = METHODS.get("amap")
    out = m.run(model, cfg, m.parse_options({"steps": 3}))
    assert abs(out.achieved - 0.3) <= 0.015 and out.extra["difference_init_blocks"] == [0, 1, 2, 3]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(out.model, out.plan)(x), mask_model(out.model, out.plan)(x), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize(
    "method,options,granularity",
    [
        ("ihp", {"steps": 3}, ("heads", "qk", "v", "mlp", "embed")),
        ("gohsp", {"rounds": 1, "steps_per_round": 2}, ("heads", "mlp")),
    ],
)
def test_other_seed_methods_run_on_flatten(method, options, granularity):
    from vitcompress.methods import METHODS
    from vitcompress.pruner import PruneConfig

    model = tiny_flatten()
    cfg = PruneConfig(flops_reduction=0.3, granularity=granularity, round_to=4, calib_images=8, batch_size=8)
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(model, cfg, m.parse_options(options))
    assert abs(out.achieved - 0.3) <= 0.015
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(out.model, out.plan)(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0
        )
