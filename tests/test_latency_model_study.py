"""The latency-model study (``benchmarks/studies/latency_model_study.py``) at a tiny scale, and its summary arithmetic."""

import json
import random

import pytest
from helpers import tiny

import vitcompress
from vitcompress.benchmarks.studies.latency_model_study import STRUCTURES, build, main, random_plan, summarize
from vitcompress.latency import LatencyTable


def test_summary_arithmetic():
    rows = [
        {"plan": "a", "structure": "aligned", "predicted_ratio": 0.50, "measured_ratio": 0.52, "ci95": [0.51, 0.53],
         "flags": []},
        {"plan": "b", "structure": "depth", "predicted_ratio": 0.70, "measured_ratio": 0.66, "ci95": [0.60, 0.72],
         "flags": ["busy"]},
        {"plan": "c", "structure": "depth", "predicted_ratio": 0.90, "measured_ratio": 0.90, "ci95": [0.89, 0.91],
         "flags": []},
    ]  # fmt: skip
    s = summarize(rows)
    assert s["mae_points"] == pytest.approx((2 + 4 + 0) / 3) and s["worst_points"] == pytest.approx(4)
    assert s["worst_plan"] == "b" and s["inside_ci"] == 2 and s["busy_rows"] == 1
    assert s["bias_points"] == pytest.approx((-2 + 4 + 0) / 3)
    # R2 = 1 - SS_res / SS_tot, measured (0.52, 0.66, 0.90; mean 0.6933) against predicted
    ss_res, mean = 0.02**2 + 0.04**2, (0.52 + 0.66 + 0.90) / 3
    ss_tot = sum((m - mean) ** 2 for m in (0.52, 0.66, 0.90))
    assert s["r2"] == pytest.approx(1 - ss_res / ss_tot)
    assert s["per_structure"] == {"aligned": {"plans": 1, "mae_points": pytest.approx(2)},
                                  "depth": {"plans": 2, "mae_points": pytest.approx(2)}}  # fmt: skip


def test_random_plans_have_their_structure():
    model = tiny("vit")
    rng = random.Random(0)
    full = vitcompress.count(model).macs
    for structure in STRUCTURES:
        plan, schedule = random_plan(model, structure, rng)
        net = build(model, plan, schedule)
        assert vitcompress.count(net).macs < full, structure
        assert (schedule is not None) == (structure in ("tokens", "mixed"))
        assert (len(plan.blocks) < len(model.blocks)) == (structure in ("depth", "mixed"))
        widths = [len(plan.embed)] + [len(lp.mlp) for lp in plan.layers.values()]
        if structure in ("aligned", "mixed"):
            assert all(w % 8 == 0 for w in widths)
        if structure == "unaligned":
            assert all(w % 2 == 1 or w == 64 or w == 256 for w in widths)


def test_study_end_to_end_at_a_tiny_scale(tmp_path, capsys, one_thread):
    art = vitcompress.save(tiny("vit"), tmp_path / "art")
    quick = {"sweep": 4, "iters": 1, "rounds": 1, "warmup": 0, "heads_points": 2, "dim_points": 2, "mlp_points": 2,
             "embed_points": 2, "token_points": 2}  # fmt: skip
    args = ["--model", art, "--backends", "torch-cpu", "--plans", "5", "--batch", "2", "--threads", "1",
            "--warmup", "0", "--iters", "1", "--rounds", "3", "--tables", tmp_path / "tables",
            "--profile-options", json.dumps(quick), "--out", tmp_path / "out"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "out" / "latency_model_study.json").read_text())
    (rec,) = res["backends"]
    assert [r["structure"] for r in rec["rows"]] == list(STRUCTURES)
    table = LatencyTable.load(tmp_path / "tables" / "torch-cpu.json")  # kept for the next run
    assert "topk-vpa" in table.reducers
    for r in rec["rows"]:
        assert r["ci95"][0] <= r["measured_ratio"] <= r["ci95"][1] and r["rounds"] == 3
        assert r["error_points"] == pytest.approx((r["predicted_ratio"] - r["measured_ratio"]) * 100)
    assert rec["summary"]["plans"] == 5 and rec["summary"]["mae_points"] == pytest.approx(
        sum(abs(r["error_points"]) for r in rec["rows"]) / 5
    )
    md = (tmp_path / "out" / "latency_model_study.md").read_text()
    assert "## torch-cpu" in md and "5 plans: mean absolute error" in md and "| tokens-3 |" in md
    assert md in capsys.readouterr().out
