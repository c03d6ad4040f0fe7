"""GOHSP: the stationary head ranking, the structured ADMM projection, budget and exactness."""

import pytest
import torch
from helpers import tiny

from vitcompress.budget import Budget, select
from vitcompress.data import calibration_loader
from vitcompress.families import build_groups
from vitcompress.methods import gohsp
from vitcompress.methods.activations import block_inputs, head_outputs
from vitcompress.pruner import PruneConfig
from vitcompress.reference import mask_model
from vitcompress.scorers.magnitude import l2
from vitcompress.slicers import slice_model

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def cfg(**kw):
    c = PruneConfig(**{"flops_reduction": 0.4, "calib_images": 16, "batch_size": 8, "round_to": 4, **kw})
    c.validate()
    return c


def plant_duplicate(model, src=1, i=0, j=2):
    """Make head j of block src+1 output what head i of block src outputs: block src's update is
    shrunk (so both blocks see nearly the same input) and head i's weights are copied to head j."""
    b1, b2 = model.blocks[src], model.blocks[src + 1]
    H, hd = b1.attn.num_heads, b1.attn.head_dim
    with torch.no_grad():
        for p in (b1.attn.proj.weight, b1.attn.proj.bias, b1.mlp.fc2.weight, b1.mlp.fc2.bias):
            p.mul_(1e-3)
        b2.norm1.load_state_dict(b1.norm1.state_dict())
        for part in range(3):
            r1 = slice(part * H * hd + i * hd, part * H * hd + (i + 1) * hd)
            r2 = slice(part * H * hd + j * hd, part * H * hd + (j + 1) * hd)
            b2.attn.qkv.weight[r2] = b1.attn.qkv.weight[r1]
            b2.attn.qkv.bias[r2] = b1.attn.qkv.bias[r1]
        b2.attn.proj.weight[:, j * hd : (j + 1) * hd] = b1.attn.proj.weight[:, i * hd : (i + 1) * hd] * 1e3
    return model


def test_head_outputs_sum_to_the_attention_output():
    model = tiny("vit")
    loader = calibration_loader("digits", model, 4, 4, 0)
    attn_in, _ = next(block_inputs(model, loader))
    attn = model.blocks[2].attn
    with torch.no_grad():
        want = attn(attn_in[2])
        got = head_outputs(attn, attn_in[2]).sum(0) + attn.proj.bias
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_stationary_is_a_distribution_and_matches_degrees_without_restarts():
    adj = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 2], [0, 0, 2, 0]], dtype=torch.float64)
    pi = gohsp.stationary(adj, damping=0.999, iters=20000, tol=1e-15)
    assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0)
    deg = adj.sum(1)
    torch.testing.assert_close(pi, deg / deg.sum(), atol=2e-3, rtol=0)  # random walk on a graph
    pi_d = gohsp.stationary(adj, damping=0.5)
    assert pi_d.sum() == pytest.approx(1.0) and (pi_d - pi).abs().max() > 1e-2  # damping matters


def test_ranking_is_a_reproducible_distribution():
    model = tiny("deit_distilled")
    opts = gohsp.GOHSPOptions()
    runs = [gohsp.head_ranking(model, calibration_loader("digits", model, 16, 8, seed), opts) for seed in (3, 3, 4)]
    pi = runs[0]["pi"]
    assert pi.shape == (16,) and pi.min() > 0 and pi.sum() == pytest.approx(1.0)
    assert torch.equal(runs[0]["pi"], runs[1]["pi"])
    assert not torch.equal(runs[0]["pi"], runs[2]["pi"])  # other calibration images
    assert [s.shape for s in runs[0]["scores"]] == [(4,)] * 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_duplicate_head_ranks_lowest_in_its_block(seed):
    model = plant_duplicate(tiny("vit", seed=seed))
    r = gohsp.head_ranking(model, calibration_loader("digits", model, 16, 8, 0), gohsp.GOHSPOptions())
    assert r["similarity"][1][0, 2] > 0.95
    rel = (r["pi"] / r["pi_0"])[8:12]
    assert int(rel.argmin()) == 2
    assert int(r["scores"][2].argmin()) == 2


def test_projection_keeps_exactly_the_budgeted_structures():
    model = tiny("vit")
    groups = build_groups(model, ("heads", "qk", "v", "mlp"))
    shape, _ = select(model, groups, l2(model, groups), Budget("macs", 0.45, round_to=4))
    counts = {b: (len(lp.heads), len(lp.qk[0]), len(lp.v[0]), len(lp.mlp)) for b, lp in shape.layers.items()}
    assert len(set(counts.values())) > 1  # heterogeneous per-block budgets
    g = torch.Generator().manual_seed(5)
    params = dict(model.named_parameters())
    names = sorted({m.param for gr in groups for m in gr.members})
    t = {n: torch.randn(params[n].shape, generator=g) for n in names}
    z, plan = gohsp.project(model, t, groups, shape)
    H, hd = 4, 16
    for b, (nh, nqk, nv, nm) in counts.items():
        w = z[f"blocks.{b}.attn.qkv.weight"]
        q_alive = w[: H * hd].abs().sum(1).reshape(H, hd) > 0
        k_alive = w[H * hd : 2 * H * hd].abs().sum(1).reshape(H, hd) > 0
        v_alive = w[2 * H * hd :].abs().sum(1).reshape(H, hd) > 0
        heads = q_alive.any(1)
        assert int(heads.sum()) == nh and torch.equal(q_alive, k_alive)
        assert (q_alive.sum(1)[heads] == nqk).all() and (v_alive.sum(1)[heads] == nv).all()
        assert int((z[f"blocks.{b}.mlp.fc1.weight"].abs().sum(1) > 0).sum()) == nm
        assert sorted(torch.nonzero(heads).flatten().tolist()) == plan.layers[b].heads
        # kept values are untouched, and the kept heads are the largest in norm
        keep = plan.layers[b].heads
        torch.testing.assert_close(
            z[f"blocks.{b}.mlp.fc1.weight"][plan.layers[b].mlp], t[f"blocks.{b}.mlp.fc1.weight"][plan.layers[b].mlp]
        )
        hs = [gr for gr in groups if gr.kind == "heads" and gr.layer == b][0]
        from vitcompress.groups import reduce_group

        norms = reduce_group(hs, torch.square, t)
        drop = [h for h in range(H) if h not in keep]
        if drop:
            assert norms[keep].min() >= norms[drop].max()


def test_admm_shrinks_the_removed_structures():
    model = tiny("vit")
    c = cfg(granularity=("heads", "mlp"))
    out = gohsp.run(model, c, gohsp.GOHSPOptions(rounds=3, steps_per_round=4, lr=1e-2, rho=1.0))
    before, after = out.extra["removed_share"]
    assert after < 0.6 * before


@pytest.mark.parametrize(
    "kind,granularity", [("vit", ("heads", "mlp")), ("reg_gap", ("heads", "qk", "v", "mlp", "embed"))]
)
def test_gohsp_meets_budget_and_is_exact(kind, granularity):
    model = tiny(kind)
    out = gohsp.run(model, cfg(granularity=granularity), gohsp.GOHSPOptions(rounds=2, steps_per_round=2))
    assert abs(out.achieved - 0.4) <= 0.015
    sliced = slice_model(out.model, out.plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0)
    assert out.finish is None


def test_finetune_stage_trains_the_pruned_model():
    model = tiny("vit")
    out = gohsp.run(
        model,
        cfg(granularity=("heads", "mlp")),
        gohsp.GOHSPOptions(rounds=1, steps_per_round=1, finetune_steps=3, finetune_lr=1e-2),
    )
    sliced = slice_model(out.model, out.plan)
    before = {n: p.clone() for n, p in sliced.state_dict().items()}
    tuned = out.finish(sliced)
    assert any(not torch.equal(before[n], p) for n, p in tuned.state_dict().items())
    assert out.extra["finetune"]["train_loss"] > 0 and 0 <= out.extra["finetune"]["val"]["top1"] <= 1
    assert not tuned.training
