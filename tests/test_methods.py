"""The method registry, option parsing, and the three methods through the API and the CLI."""

import json

import pytest
import torch
from helpers import tiny

import vitcompress
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.methods import CHOICES, METHODS, parse_option_pairs
from vitcompress.methods.gohsp import GOHSPOptions
from vitcompress.methods.ihp import IHPOptions

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
FAST = {"ihp": {"steps": 3}, "gohsp": {"rounds": 2, "steps_per_round": 2}, "amap": {"steps": 3}}


def test_registry_and_options():
    assert CHOICES == ("oneshot", "amap", "gohsp", "ihp")
    with pytest.raises(VitCompressError, match="did you mean ihp"):
        METHODS.get("ihpp")
    opts = METHODS.get("ihp").parse_options(parse_option_pairs(["steps=7", "l1=0.5", "train-weights=no"]))
    assert opts == IHPOptions(steps=7, l1=0.5, train_weights=False)
    assert opts.to_dict()["scale_lr"] == IHPOptions().scale_lr
    assert METHODS.get("gohsp").parse_options({"damping": 0.5}) == GOHSPOptions(damping=0.5)
    with pytest.raises(VitCompressError, match="valid options: .*steps"):
        METHODS.get("amap").parse_options({"stepz": "3"})
    with pytest.raises(VitCompressError, match="not a valid int"):
        METHODS.get("amap").parse_options({"steps": "many"})
    with pytest.raises(VitCompressError, match="damping must be in"):
        METHODS.get("gohsp").parse_options({"damping": "1.5"})
    with pytest.raises(VitCompressError, match="KEY=VALUE"):
        parse_option_pairs(["steps"])


@pytest.mark.parametrize(
    "method,granularity",
    [("ihp", ["heads", "qk", "v", "mlp"]), ("gohsp", ["heads", "qk", "v", "mlp"]), ("amap", ["qk", "v", "mlp"])],
)
def test_prune_api_runs_each_method_and_records_it(tmp_path, method, granularity):
    model = tiny("deit_distilled")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / method
    res = vitcompress.prune(
        model,
        flops_reduction=0.462,
        method=method,
        method_options=FAST[method],
        granularity=granularity,
        round_to=4,
        calib_images=16,
        batch_size=8,
        output=out,
    )
    assert abs(res.achieved - 0.462) <= 0.015
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    assert not any(type(m).__name__ == "Scaled" for m in model.modules())
    rec = res.meta.history[-1]
    assert rec["method"] == method
    assert rec["method_options"] == METHODS.get(method).parse_options(FAST[method]).to_dict()
    assert abs(rec["achieved"]["macs_reduction"] - 0.462) <= 0.015
    d = json.loads((out / "vitcompress.json").read_text())
    assert d["history"][-1]["method"] == method
    loaded = vitcompress.load(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), res.model(X), atol=0, rtol=0)


def test_prune_api_rejects_bad_method_use():
    model = tiny("vit")
    with pytest.raises(VitCompressError, match="cannot prune embed"):
        vitcompress.prune(model, flops_reduction=0.3, method="amap", granularity=["qk", "embed"])
    with pytest.raises(VitCompressError, match="cannot prune depth"):
        vitcompress.prune(model, flops_reduction=0.3, method="ihp", granularity=["mlp", "depth"])
    with pytest.raises(VitCompressError, match="method_options apply to method=ihp, gohsp or amap only"):
        vitcompress.prune(model, flops_reduction=0.3, method_options={"steps": 2})
    with pytest.raises(VitCompressError, match="unknown method"):
        vitcompress.prune(model, flops_reduction=0.3, method="slim")


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_method_and_options(tmp_path, capsys):
    src = tmp_path / "src"
    vitcompress.save(tiny("vit"), src)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        "prune",
        src,
        "-o",
        out,
        "--flops-reduction",
        "0.3",
        "--method",
        "gohsp",
        "--method-opt",
        "rounds=1",
        "--method-opt",
        "steps_per_round=2",
        "--granularity",
        "heads,mlp",
        "--round-to",
        "4",
        "--calib-images",
        "8",
    )
    assert code == 0, err
    rec = vitcompress.read_meta(out).history[-1]
    assert rec["method"] == "gohsp" and rec["method_options"]["rounds"] == 1
    assert rec["method_options"]["steps_per_round"] == 2 and rec["method_options"]["damping"] == 0.85
    assert abs(rec["achieved"]["macs_reduction"] - 0.3) <= 0.015
    for args, msg in [
        (["--method", "amap", "--granularity", "qk,embed"], "cannot prune embed"),
        (["--method", "ihp", "--method-opt", "steps"], "KEY=VALUE"),
        (["--method", "ihp", "--method-opt", "stepz=3"], "unknown option 'stepz'"),
        (["--method-opt", "steps=3"], "--method-opt apply to --method ihp, gohsp or amap only"),
        (["--method", "gohps"], "did you mean gohsp"),
    ]:
        bad = tmp_path / "bad"
        code, _, err = run(capsys, "prune", src, "-o", bad, "--flops-reduction", "0.3", *args)
        assert code == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1
        assert not bad.exists()


def test_criteria_study_smoke_writes_table_and_plot(tmp_path):
    from vitcompress.benchmarks.studies import criteria_study

    out = tmp_path / "study"
    assert (
        criteria_study.main(
            [
                "--smoke",
                "--out",
                str(out),
                "--reductions",
                "0.3",
                "--criteria",
                "l1,amap",
                "--granularities",
                "heads,intra",
            ]
        )
        == 0
    )
    rec = json.loads((out / "criteria_study.json").read_text())
    assert len(rec["runs"]) == 4
    for r in rec["runs"]:
        assert abs(r["achieved"] - 0.3) <= 0.015 and 0 <= r["top1_pruned"] <= 1 and 0 <= r["top1_distilled"] <= 1
    assert (out / "criteria_study.csv").read_text().splitlines()[0].startswith("criterion,granularity,target")
    md = (out / "criteria_study.md").read_text()
    assert "| amap | intra |" in md and "-30.0% MACs" in md
    assert (out / "criteria_study.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="not an artifact folder"):
        criteria_study.main(["--teacher", str(tmp_path / "none"), "--out", str(out)])


@pytest.mark.parametrize("method", ["ihp", "gohsp", "amap"])
def test_methods_on_an_already_pruned_model_with_odd_widths(method):
    import random

    from helpers import random_plan

    from vitcompress.reference import mask_model
    from vitcompress.slicers import slice_model

    pruned = slice_model(tiny("reg_gap"), random_plan(tiny("reg_gap"), random.Random(4), ("heads", "qk", "v", "mlp")))
    cfg = vitcompress.PruneConfig(
        flops_reduction=0.3, granularity=("heads", "qk", "v", "mlp"), round_to=1, calib_images=8, batch_size=8
    )
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(pruned, cfg, m.parse_options(FAST[method]))
    assert abs(out.achieved - 0.3) <= 0.015
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(out.model, out.plan)(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0
        )
