"""The latency study script end to end at a tiny scale: both parts, their figures, JSON and plot."""

import json

import pytest
from helpers import synthetic_table, tiny

import vitcompress
from vitcompress.benchmarks.studies.latency_study import main
from vitcompress.budget import TOLERANCE


@pytest.mark.export
def test_both_parts_record_their_plans_and_the_plot(tmp_path, capsys, one_thread):
    model = tiny("vit")
    teacher = vitcompress.save(model, tmp_path / "teacher")
    table = synthetic_table(model, head_ms=0.01)
    table.reducers = {
        "topk-vpa": {"keep": 0.7, "tokens": [6, 17], "reduce_ms": [0.01, 0.02], "tokens_after": [5, 13],
                     "after_ms": [0.0, 0.001]}
    }  # fmt: skip
    path = table.save(tmp_path / "table.json")
    out = tmp_path / "study"
    common = ["--out", out, "--backend", "torch-cpu", "--batch", "4", "--threads", "1", "--table", path,
              "--warmup", "0", "--iters", "1", "--rounds", "1", "--calib-images", "16"]  # fmt: skip

    assert main([str(a) for a in ["deit", "--model", teacher, "--macs-reduction", "0.3", "--latency-reduction", "0.3", *common]]) == 0  # fmt: skip
    stdout = capsys.readouterr().out
    assert "| latency-targeted |" in stdout and "latency-targeted keeps" in stdout
    rec = json.loads((out / "latency_study.json").read_text())["deit"]
    rows = {r["plan"]: r for r in rec["rows"]}
    assert list(rows) == ["dense", "macs-targeted", "latency-targeted"]
    assert rows["dense"]["macs_cut"] == 0 and rows["dense"]["measured_cut"] == 0
    assert abs(rows["macs-targeted"]["macs_cut"] - 0.3) <= TOLERANCE
    assert abs(rows["latency-targeted"]["predicted_cut"] - 0.3) <= TOLERANCE
    assert all(r["measured_ms"] >= r["min_ms"] > 0 for r in rec["rows"]) and rec["env"]["threads"] == 1
    assert rows["dense"]["measured_cut_min"] == 0

    args = ["mnist", "--teacher", teacher, "--data", "digits", "--reductions", "0.35", "--epochs", "1",
            "--bisect", "5", "--token-keeps", "0.7", *common]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    stdout = capsys.readouterr().out
    assert "35% latency cut: compress" in stdout
    results = json.loads((out / "latency_study.json").read_text())
    assert set(results) == {"deit", "mnist"}  # the second part adds to the first
    rows = {r["plan"]: r for r in results["mnist"]["rows"]}
    assert list(rows) == ["dense", "compress r35", "macs-targeted r35"]
    assert abs(rows["compress r35"]["predicted_cut"] - 0.35) <= TOLERANCE
    assert abs(rows["macs-targeted r35"]["predicted_cut"] - 0.35) <= 0.05  # bisected on the MACs cut
    assert 0 < rows["macs-targeted r35"]["flops_reduction"] < 1
    assert all(0 <= r["top1"] <= 1 for r in rows.values())
    assert (out / "compress_r35" / "report.md").is_file() and (out / "latency_study.png").stat().st_size > 0
