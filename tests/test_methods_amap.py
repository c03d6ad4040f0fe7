"""AMAP: similarity weights, even per-head masks, binary straight-through masks, the resource
penalty, the exact cost model, reweight folding, budget and exactness."""

import random

import pytest
import torch
from helpers import random_plan, tiny

from vitcompress.counting import count
from vitcompress.data import calibration_loader
from vitcompress.methods import amap
from vitcompress.methods.activations import block_inputs, qkv_heads, redundancy_weight
from vitcompress.methods.scaling import fold
from vitcompress.pruner import PruneConfig
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def cfg(**kw):
    c = PruneConfig(
        **{
            "flops_reduction": 0.4,
            "calib_images": 16,
            "batch_size": 8,
            "round_to": 4,
            "granularity": ("qk", "v", "mlp"),
            **kw,
        }
    )
    c.validate()
    return c


def test_redundancy_weight_is_low_for_duplicated_channels():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 8, generator=g, dtype=torch.float64)
    a[:, 5] = -3 * a[:, 2] + 0.01 * a[:, 5]  # channel 5 duplicates channel 2 (sign, scale)
    w = redundancy_weight(a.T @ a)
    assert w.shape == (8,) and 0 <= float(w.min()) and float(w.max()) <= 1
    rest = [0, 1, 3, 4, 6, 7]
    assert w[2] < w[rest].min() - 0.1 and w[5] < w[rest].min() - 0.1
    assert w[rest].min() > 0.9  # independent channels: nearly orthogonal


def test_similarity_weights_are_one_minus_mean_abs_correlation_within_a_head():
    model = tiny("vit")
    loader = calibration_loader("digits", model, 8, 8, 0)
    weights = amap.similarity_weights(model, loader, ("qk", "v", "mlp"))
    attn_in, mlp_in = next(block_inputs(model, loader))
    with torch.no_grad():
        _, _, v = qkv_heads(model.blocks[1].attn, attn_in[1])
        acts = model.blocks[1].mlp.act(model.blocks[1].mlp.fc1(mlp_in[1])).flatten(0, 1)
    head2 = v[:, 2].flatten(0, 1).to(torch.float64)  # [samples, 16]
    c = torch.corrcoef(head2.T).abs()
    raw = 1 - (c.sum(1) - 1) / 15
    all_raw = []
    for h in range(4):
        ch = torch.corrcoef(v[:, h].flatten(0, 1).to(torch.float64).T).abs()
        all_raw.append(1 - (ch.sum(1) - 1) / 15)
    want = raw / torch.stack(all_raw).mean()  # normalised to mean 1 per block
    torch.testing.assert_close(weights[("v", 1)][2].to(torch.float64), want, atol=1e-4, rtol=1e-4)
    assert weights[("qk", 0)].shape == (4, 16) and weights[("mlp", 1)].shape == (acts.shape[1],)


@pytest.mark.parametrize("granularity", [("qk", "v", "mlp"), ("heads", "qk", "v", "mlp")])
def test_indicator_training_reaches_target_with_even_binary_masks(granularity):
    model = tiny("vit")
    c = cfg(granularity=granularity)
    loader = calibration_loader("digits", model, 16, 8, 0)
    train, ind, log = amap.train_indicator(model, loader, c, amap.AMAPOptions(steps=30))
    assert abs(log["mask_reduction"] - 0.4) < 0.05  # the resource penalty drove it there
    assert log["penalty"][-1] < log["penalty"][0]
    for name, m in ind.hard_masks().items():
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        if name.startswith(("qk", "v")):
            per_head = m.sum(1)
            assert (per_head == per_head[0]).all() and per_head[0] >= 1
    for kind in ind.kinds:  # forward value of the ST mask is binary
        assert torch.equal(ind.mask(kind, 1).detach(), ind.hard(kind, 1))


def test_cost_model_is_exact_for_integer_counts():
    model = tiny("vit")
    plan = random_plan(model, random.Random(3), ("heads", "qk", "v", "mlp"))
    cost = amap.Cost(model, "macs")
    counts = [
        (len(lp.heads) * len(lp.qk[0]), len(lp.heads) * len(lp.v[0]), len(lp.mlp))
        for _, lp in sorted(plan.layers.items())
    ]
    assert float(cost(counts)) == pytest.approx(count(slice_model(model, plan)).macs)
    pcost = amap.Cost(model, "params")
    assert float(pcost(counts)) == pytest.approx(count(slice_model(model, plan)).params)


@pytest.mark.parametrize("kind", ["vit", "layerscale_noqkvbias"])
def test_folding_masks_and_reweights_keeps_outputs(kind):
    model = tiny(kind)
    weights = {
        (k, l): torch.rand(s, generator=torch.Generator().manual_seed(l)) + 0.5
        for l in range(len(model.blocks))
        for k, s in (("heads", (4,)), ("qk", (4, 16)), ("v", (4, 16)), ("mlp", (256,)))
    }
    ind = amap.Indicator(model, ("heads", "qk", "v", "mlp"), weights, threshold=1.0, temperature=0.1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ind.rew.values():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    import copy

    train = copy.deepcopy(model)
    ind.attach_to(train)
    with torch.no_grad():
        gated = train(X)
        fold(train)
        folded = train(X)
    torch.testing.assert_close(folded, gated, atol=1e-5, rtol=1e-5)
    masks = ind.hard_masks()
    assert 0 < float(masks["qk_0"].mean()) < 1  # some channels really were masked
    with torch.no_grad():
        assert (gated - model(X)).abs().max() > 1e-2


@pytest.mark.parametrize(
    "kind,granularity,metric",
    [("vit", ("qk", "v", "mlp"), "flops"), ("deit_distilled", ("heads", "qk", "v", "mlp"), "params")],
)
def test_amap_meets_budget_and_is_exact(kind, granularity, metric):
    model = tiny(kind)
    c = (
        cfg(granularity=granularity)
        if metric == "flops"
        else cfg(granularity=granularity, flops_reduction=None, params_reduction=0.4)
    )
    out = amap.run(model, c, amap.AMAPOptions(steps=8))
    assert abs(out.achieved - 0.4) <= 0.015
    sliced = slice_model(out.model, out.plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0)
