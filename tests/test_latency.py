"""The latency model: step detection, interpolation, the additive predictor, tables as files, and
the latency budget (cost, allowed widths at the steps, importance-per-latency ranking)."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import attn_work, synthetic_table, tiny

import vitcompress
from vitcompress.budget import Budget, select
from vitcompress.errors import VitCompressError
from vitcompress.families import build_groups, family_of
from vitcompress.latency import (
    LatencyTable,
    detect_step,
    interpolate,
    isotonic,
    latency_budget,
    monotone,
    snap,
    stair_widths,
    token_roles,
)
from vitcompress.reference import mask_model
from vitcompress.report import format_prune_summary
from vitcompress.scorers import SCORERS
from vitcompress.tokens.apply import apply_tokens, schedule_of
from vitcompress.tokens.counting import block_tokens

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("step", [1, 4, 8, 16])
def test_detect_step_recovers_the_staircase(step):
    rng = np.random.default_rng(step)
    w = np.arange(65, 129)
    ms = 2.0 + 0.03 * np.ceil(w / step) * step + rng.normal(0, 0.02, w.size)  # noise below one stair
    found, rss = detect_step(w, ms)
    assert found == step
    assert rss[found] == min(rss.values())
    assert max(rss) <= w.size // 2  # a candidate needs two whole stairs in the window


@pytest.mark.parametrize("seed", range(8))
def test_detect_step_keeps_step_one_on_a_line_plus_noise(seed):
    """Some step always fits noise a little better than the line; it must not be taken for a staircase."""
    rng = np.random.default_rng(seed)
    w = np.arange(321, 385)
    ms = 180 + 0.3 * w + rng.normal(0, 15, w.size)  # noise larger than the trend over a stair
    found, rss = detect_step(w, ms)
    assert found == 1
    assert min(rss.values()) > 0.8 * rss[1]  # the candidates' fits differ by noise only


def test_interpolate_is_exact_on_multilinear_functions_and_extrapolates_linearly():
    axes = [np.array([1.0, 3.0, 7.0]), np.array([2.0, 4.0])]
    f = lambda a, b: 1.5 + 2 * a - b + 0.25 * a * b  # noqa: E731
    values = np.array([[f(a, b) for b in axes[1]] for a in axes[0]])
    for point in [(2.0, 3.0), (5.5, 2.5), (7.0, 4.0), (0.0, 3.0), (9.0, 5.0)]:
        assert interpolate(values, axes, point) == pytest.approx(f(*point))


def test_monotone_removes_noise_that_makes_a_sublayer_faster_as_it_grows():
    np.testing.assert_allclose(isotonic([1, 5, 2, 3, 7]), [1, 10 / 3, 10 / 3, 10 / 3, 7])
    rng = np.random.default_rng(0)
    clean = np.cumsum(rng.uniform(0.1, 1, (3, 4, 5)), 0).cumsum(1).cumsum(2)
    np.testing.assert_array_equal(monotone(clean), clean)  # nothing to do
    noisy = clean.copy()
    noisy[1, 2, 3] += 50.0
    noisy[0, 1, 1] -= 5.0
    fixed = monotone(noisy)
    for axis in range(3):
        assert (np.diff(fixed, axis=axis) >= -1e-9).all()
    assert np.abs(fixed - clean).max() < np.abs(noisy - clean).max()


def test_snap_and_stair_widths():
    assert [snap(w, 8, 64) for w in (1, 8, 9, 63, 64)] == [8, 8, 16, 64, 64]
    assert snap(13, 1, 64) == 13
    assert snap(70, 16, 64) == 70  # above the table's width: left alone (refused by check)
    assert stair_widths(64, 8, 3) == [8, 40, 64]  # linspace 8, 36, 64 read at the stair tops
    assert stair_widths(100, 16, 4, low=40) == [48, 64, 80, 100]
    assert all(w % 16 == 0 or w == 100 for w in stair_widths(100, 16, 6))


def _random_spec(model, rng, step=4):
    spec = family_of(model).spec(model).copy()
    for b in spec.blocks:
        b.num_heads = int(rng.integers(1, b.num_heads + 1))
        b.qk_dim = int(rng.integers(1, b.qk_dim // step + 1)) * step
        b.v_dim = int(rng.integers(1, b.v_dim // step + 1)) * step
        b.mlp_hidden = int(rng.integers(1, b.mlp_hidden // step + 1)) * step
    return spec


def test_prediction_is_additive_over_sublayers_and_reads_widths_at_stair_tops():
    model = tiny("vit")
    table = synthetic_table(model, head_ms=0.01, steps={"qk": 4, "v": 4, "mlp": 4})
    scale = 4 * 1e-6  # batch x ns per MAC
    rng = np.random.default_rng(0)
    d, t = 64, 17
    for _ in range(5):
        spec = _random_spec(model, rng)
        expect = 0.05 + sum(
            scale * attn_work(d, t, b.num_heads, b.qk_dim, b.v_dim)
            + 0.01 * b.num_heads
            + scale * 2 * t * d * b.mlp_hidden
            for b in spec.blocks
        )
        assert table.predict(spec) == pytest.approx(expect, rel=1e-9)
    spec = family_of(model).spec(model).copy()
    odd = spec.copy()
    odd.blocks[0].qk_dim, odd.blocks[0].mlp_hidden = 13, 129
    spec.blocks[0].qk_dim, spec.blocks[0].mlp_hidden = 16, 132  # the tops of their stairs
    assert table.predict(odd) == pytest.approx(table.predict(spec))


def test_token_schedule_enters_the_prediction():
    model = tiny("vit")
    table = synthetic_table(model)
    plain = table.model_ms(model)
    reduced = apply_tokens(tiny("vit"), "0.5@1,2", method="topk-vpa")
    fam = family_of(reduced)
    spec = fam.spec(reduced)
    per_block = block_tokens(spec, fam.token_layout(fam.arch_info(reduced)), None)
    assert table.predict(spec, per_block) == pytest.approx(plain)
    ms = table.model_ms(reduced)
    counts = block_tokens(spec, fam.token_layout(fam.arch_info(reduced)), vitcompress.tokens.schedule_of(reduced))
    assert [(bt.t_in, bt.t_out) for bt in counts][:3] == [(17, 17), (17, 9), (9, 5)]
    expect = table.rest(64) + sum(table.attn(64, bt.t_in, 4, 16, 16) + table.mlp(64, bt.t_out, 256) for bt in counts)
    assert ms == pytest.approx(expect)
    assert ms < plain


def test_reducer_time_is_added_where_the_schedule_reduces_and_biases():
    model = tiny("vit")
    plain = synthetic_table(model)
    table = LatencyTable.from_dict(plain.to_dict())
    table.reducers = {
        "topk-vpa": {
            "keep": 0.7,
            "tokens": [6, 17],
            "reduce_ms": [0.1, 0.2],
            "tokens_after": [5, 13],
            "after_ms": [0.01, 0.03],
        }
    }
    vpa = apply_tokens(tiny("vit"), "0.5@1,2", method="topk-vpa")
    topk = apply_tokens(tiny("vit"), "0.5@1,2", method="topk")
    assert token_roles(schedule_of(vpa), 4, 1) == ["", "reduce", "reduce+after", "after"]
    assert token_roles(schedule_of(topk), 4, 1) == ["", "reduce", "reduce", ""]
    # tokens entering the blocks: 17, 17, 9, 5
    reduce = 0.2 + (0.1 + (9 - 6) / (17 - 6) * 0.1)
    after = (0.01 + (9 - 5) / (13 - 5) * 0.02) + 0.01
    assert table.model_ms(vpa) - plain.model_ms(vpa) == pytest.approx(reduce + after)
    assert table.model_ms(topk) == pytest.approx(plain.model_ms(topk))  # topk was not profiled
    assert table.model_ms(model) == pytest.approx(plain.model_ms(model))


def test_table_file_round_trip_and_refusals(tmp_path):
    model = tiny("vit")
    table = synthetic_table(model, steps={"mlp": 8})
    table.dense = {"measured_ms": 2.0, "predicted_ms": 1.0}
    path = table.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    spec = family_of(model).spec(model)
    assert back.to_dict() == table.to_dict()
    assert back.predict(spec) == pytest.approx(2 * back.unscaled(spec))  # scaled to the measured dense model
    cases = {
        "missing": (tmp_path / "nope.json", "does not exist"),
        "foreign": (tmp_path / "f.json", "not a latency table"),
        "newer": (tmp_path / "n.json", "newer than this vitcompress"),
        "inconsistent": (tmp_path / "i.json", "inconsistent"),
        "not json": (tmp_path / "x.json", "not valid JSON"),
    }
    d = table.to_dict()
    (tmp_path / "f.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "n.json").write_text(json.dumps({**d, "version": 99}))
    (tmp_path / "i.json").write_text(json.dumps({**d, "mlp_ms": d["mlp_ms"][:1]}))
    (tmp_path / "x.json").write_text("{")
    for path, message in cases.values():
        with pytest.raises(VitCompressError, match=message) as e:
            LatencyTable.load(path)
        assert "\n" not in str(e.value)


def test_table_refuses_a_model_it_was_not_measured_for():
    table = synthetic_table(tiny("vit"))
    with pytest.raises(VitCompressError, match="measured for vit_small_patch16_224.*vitcompress profile"):
        table.cost(tiny("deit_distilled"))
    with pytest.raises(VitCompressError, match="measured for"):
        table.cost(tiny("vit", img_size=48))  # more tokens: another source
    narrow = synthetic_table(vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1").model)
    with pytest.raises(VitCompressError, match="above the latency table"):
        narrow.cost(tiny("vit"))


def test_latency_prune_meets_the_predicted_target_on_the_steps_and_stays_exact():
    model = tiny("vit")
    table = synthetic_table(model, steps={"qk": 4, "v": 8, "mlp": 32})
    res = vitcompress.prune(model, latency_reduction=0.35, table=table, importance="l1")
    assert abs(res.achieved - 0.35) <= 0.015
    pruned = family_of(res.model).spec(res.model)
    assert table.predict(pruned) == pytest.approx(0.65 * table.model_ms(model), abs=0.015 * table.model_ms(model))
    for b in pruned.blocks:
        assert b.qk_dim % 4 == 0 and b.v_dim % 8 == 0 and (b.mlp_hidden % 32 == 0 or b.mlp_hidden == 256)
    with torch.no_grad():
        torch.testing.assert_close(res.model(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=0)
    step = res.meta.history[-1]
    assert step["target"] == {"metric": "latency", "reduction": 0.35}
    lat = step["latency"]
    assert lat["backend"] == "torch-cpu" and lat["steps"]["mlp"] == 32
    assert lat["predicted_reduction"] == pytest.approx(res.achieved)
    text = format_prune_summary(res.meta)
    assert "of predicted latency on torch-cpu" in text and "ms per batch" in text


def test_latency_ranking_removes_what_is_slow_for_its_macs_first():
    """Heads that cost time beyond their MACs (a per-head overhead) go first: at the same predicted
    latency cut the plan keeps more MACs than the same budget ranked by importance alone."""
    model = tiny("vit")
    table = synthetic_table(model, head_ms=0.02)
    kinds = ["heads", "qk", "v", "mlp"]
    groups = build_groups(model, kinds)
    scores = SCORERS.get("l1")(model, groups)
    ranked = latency_budget(model, table, 0.4, kinds=kinds)
    plain = Budget("latency", 0.4, cost=ranked.cost, allowed=ranked.allowed)
    macs = family_of(model).cost(model, "macs")
    kept = {}
    for name, budget in (("per latency", ranked), ("importance", plain)):
        plan, achieved = select(model, groups, scores, budget)
        assert abs(achieved - 0.4) <= 0.015
        spec = family_of(model).spec_after(family_of(model).spec(model), plan)
        kept[name] = (macs(spec), sum(b.num_heads for b in spec.blocks))
    assert kept["per latency"][1] < kept["importance"][1]  # more heads removed
    assert kept["per latency"][0] > kept["importance"][0]  # more MACs kept


def test_an_order_equal_to_the_importance_changes_nothing():
    model = tiny("deit_distilled")
    kinds = ["heads", "qk", "v", "mlp"]
    groups = build_groups(model, kinds)
    scores = SCORERS.get("l2")(model, groups)
    for uniform in (False, True):
        a, ra = select(model, groups, scores, Budget("macs", 0.4, uniform=uniform))
        b, rb = select(model, groups, scores, Budget("macs", 0.4, uniform=uniform, order=lambda imp, s, c: imp))
        assert a.to_dict() == b.to_dict() and ra == rb


@pytest.mark.parametrize(
    "options, message",
    [
        ({"latency_reduction": 0.3}, "needs a latency table"),
        ({"latency_reduction": 0.3, "flops_reduction": 0.3}, "exactly one budget"),
        ({"flops_reduction": 0.3, "latency_table": "t.json"}, "latency_reduction only"),
        ({"latency_reduction": 0.3, "latency_table": "missing.json"}, "does not exist"),
        ({"latency_reduction": 0.3, "latency_table": "t.json", "method": "ihp"}, "one-shot method"),
    ],
)
def test_latency_budget_refusals_come_first_and_write_nothing(tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    synthetic_table(tiny("vit")).save("t.json")
    with pytest.raises(VitCompressError, match=message) as e:
        vitcompress.prune(tiny("vit"), importance="l1", output="out", **options)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_latency_prune_from_a_table_file_records_its_path(tmp_path):
    model = tiny("vit")
    path = synthetic_table(model).save(tmp_path / "t.json")
    res = vitcompress.prune(
        model, latency_reduction=0.3, latency_table=str(path), importance="l1", output=tmp_path / "a"
    )
    meta = vitcompress.artifact.read_meta(tmp_path / "a")
    assert meta.history[-1]["latency"]["table"] == str(path)
    assert meta.history[-1]["config"]["latency_reduction"] == 0.3
    assert math.isclose(res.achieved, meta.history[-1]["latency"]["predicted_reduction"])
