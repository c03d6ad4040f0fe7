"""IHP: the relationship table, scale attachment and exact folding, scale-driven group scores."""

import pytest
import torch
from helpers import tiny

from vitcompress.budget import Budget, select
from vitcompress.data import calibration_loader
from vitcompress.families import build_groups
from vitcompress.methods import ihp
from vitcompress.methods.scaling import Scaled, fold
from vitcompress.pruner import PruneConfig
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def cfg(**kw):
    c = PruneConfig(**{"flops_reduction": 0.4, "calib_images": 16, "batch_size": 8, "round_to": 4, **kw})
    c.validate()
    return c


def test_relationship_table_couples_q_with_k_and_v_with_proj():
    model = tiny("vit")
    table = {(r["kind"], r["layer"]): r for r in ihp.relationship_table(model, ("heads", "qk", "v", "mlp", "embed"))}
    H, qk = 4, 16
    qkrow = table[("qk", 1)]
    assert qkrow["shape"] == [H, qk]
    qkv = [m for m in qkrow["members"] if m["param"] == "blocks.1.attn.qkv.weight"][0]
    for h, d in [(0, 0), (2, 5), (3, 15)]:
        e = h * qk + d
        assert qkv["index"][e] == [h * qk + d, H * qk + h * qk + d]  # q row and k row together
        assert qkv["scaled"] and qkv["dim"] == 0
    vrow = table[("v", 2)]
    by = {m["param"]: m for m in vrow["members"]}
    e = 2 * 16 + 7
    assert by["blocks.2.attn.qkv.weight"]["index"][e] == [2 * H * qk + e]
    assert by["blocks.2.attn.proj.weight"]["dim"] == 1 and by["blocks.2.attn.proj.weight"]["index"][e] == [e]
    assert not by["blocks.2.attn.proj.weight"]["scaled"]
    mlp = {m["param"]: m for m in table[("mlp", 0)]["members"]}
    assert mlp["blocks.0.mlp.fc1.weight"]["index"][9] == [9] and mlp["blocks.0.mlp.fc2.weight"]["dim"] == 1
    emb = {m["param"]: m for m in table[("embed", None)]["members"]}
    for name in ("patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.3.mlp.fc2.weight", "head.weight"):
        assert name in emb
    assert emb["blocks.0.norm1.weight"]["scaled"] and not emb["pos_embed"]["scaled"]
    text = ihp.format_relationship_table(ihp.relationship_table(model, ("qk",)))
    assert "blocks.0.attn.qkv.weight[dim 0 [0, 64]]  (scaled)" in text


@pytest.mark.parametrize("kind", ["vit", "reg_gap", "layerscale_noqkvbias"])
def test_folded_model_equals_scaled_model(kind):
    model = tiny(kind)
    train = tiny(kind)
    scales = ihp.attach_scales(train, ("heads", "qk", "v", "mlp", "embed"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in {id(s): s for s in scales.values()}.values():
            s.copy_(torch.rand(s.shape, generator=g) * 1.5)
    assert any(isinstance(m, Scaled) for m in train.modules())
    with torch.no_grad():
        scaled_out = train(X)
        fold(train)
        folded_out = train(X)
        orig_out = model(X)
    assert not any(isinstance(m, Scaled) for m in train.modules())
    assert sorted(n for n, _ in train.named_parameters()) == sorted(n for n, _ in model.named_parameters())
    torch.testing.assert_close(folded_out, scaled_out, atol=1e-5, rtol=1e-5)
    assert (scaled_out - orig_out).abs().max() > 1e-2  # the scales matter


def test_group_scores_are_mean_abs_scale_of_the_coupled_rows():
    model = tiny("vit")
    train = tiny("vit")
    scales = ihp.attach_scales(train, ("qk", "v", "mlp"))
    s = scales["blocks.1.attn.qkv.weight"]
    with torch.no_grad():
        s[1 * 16 + 3] = 0.2  # q row of head 1, dim 3
        s[64 + 1 * 16 + 3] = -0.4  # its k row
        s[128 + 2 * 16 + 5] = 0.05  # v dim 5 of head 2
        scales["blocks.0.mlp.fc1.weight"][7] = 0.0
    groups = build_groups(model, ("qk", "v", "mlp"))
    sc = {(g.kind, g.layer): x for g, x in zip(groups, ihp.group_scores(groups, scales))}
    assert sc[("qk", 1)][1, 3] == pytest.approx(0.3)
    assert sc[("qk", 1)][0, 3] == pytest.approx(1.0)
    assert sc[("v", 1)][2, 5] == pytest.approx(0.05)
    assert sc[("mlp", 0)][7] == 0 and sc[("mlp", 0)][8] == pytest.approx(1.0)
    plan, _ = select(model, groups, list(sc.values()), Budget("macs", 0.05, round_to=1))
    assert 3 not in plan.layers[1].qk[1] or 7 not in plan.layers[0].mlp


def test_sparse_training_shrinks_scales():
    model = tiny("vit")
    loader = calibration_loader("digits", model, 16, 8, 0)
    means = {}
    for l1 in (0.0, 1e-3):
        opts = ihp.IHPOptions(steps=15, l1=l1, train_weights=False)
        _, scales, log = ihp.sparse_train(model, loader, ("qk", "v"), opts)
        s = scales["blocks.0.attn.qkv.weight"].detach()
        means[l1] = float(s.abs().mean())
        assert s.std() > 1e-2  # the task loss makes rows differ
        assert log["task_loss"][0] > 0
    assert means[1e-3] < means[0.0] - 0.05  # the L1 term pulls the scales down


@pytest.mark.parametrize(
    "kind,granularity", [("vit", ("qk", "v", "mlp")), ("deit_distilled", ("heads", "qk", "v", "mlp", "embed"))]
)
def test_ihp_meets_budget_and_is_exact(kind, granularity):
    model = tiny(kind)
    c = cfg(granularity=granularity)
    out = ihp.run(model, c, ihp.IHPOptions(steps=4))
    assert abs(out.achieved - 0.4) <= 0.015
    sliced = slice_model(out.model, out.plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0)
    assert all(len(set(map(len, lp.qk))) == 1 for lp in out.plan.layers.values())
