"""compress: the joint search, the stages end to end, resume after a kill, the command and its refusals."""

import json

import onnx
import pytest
import torch
from helpers import Kill, synthetic_table, tiny
from stand_ins import use_tensorrt_stand_in

import vitcompress
from vitcompress.artifact import is_artifact, load
from vitcompress.budget import TOLERANCE
from vitcompress.cli import main
from vitcompress.data import calibration_loader
from vitcompress.errors import VitCompressError
from vitcompress.exporters.trt_build import read_sidecar
from vitcompress.latency_search.compress import CompressConfig, _settings, compress
from vitcompress.latency_search.search import SearchSpace, kl_to_teacher, search, token_blocks
from vitcompress.recipe import block_importance
from vitcompress.training import TrainConfig


@pytest.fixture
def setup(tmp_path):
    """A tiny ViT artifact (10 classes) and a latency table of it with a reducer measurement."""
    model = tiny("vit")
    art = vitcompress.save(model, tmp_path / "art")
    table = synthetic_table(model, head_ms=0.01)
    table.reducers = {
        "topk-vpa": {
            "keep": 0.7,
            "tokens": [6, 17],
            "reduce_ms": [0.01, 0.02],
            "tokens_after": [5, 13],
            "after_ms": [0.0, 0.001],
        }
    }
    return art, table.save(tmp_path / "table.json")


def config(table, **train):
    return CompressConfig(
        latency_reduction=0.35,
        latency_table=str(table),
        calib_images=16,
        search_images=32,
        token_keeps=("0.7",),
        train=TrainConfig(
            **{"data": "digits", "epochs": 2, "max_steps_per_epoch": 3, "batch_size": 16, "progress": False, **train}
        ),
    )


def test_token_blocks_sit_at_quarters_of_the_depth():
    assert token_blocks(12) == [3, 6, 9]
    assert token_blocks(6) == [2, 3, 4]
    assert token_blocks(2) == [1]


def test_search_meets_the_target_with_every_mix_and_keeps_the_closest_to_the_teacher(setup):
    art, table_path = setup
    dense = load(art)
    table = vitcompress.latency.LatencyTable.load(table_path)
    best, rows = search(
        dense, dense, table, SearchSpace(0.35, data="digits", calib_images=16, search_images=32, token_keeps=[0.7])
    )
    ok = [c for c in rows if c.status == "ok"]
    assert len(ok) >= 3 and best in ok
    for c in ok:
        assert abs(c.predicted_cut - 0.35) <= TOLERANCE + 1e-9, c
        assert c.kl is not None and c.kl >= 0 and 0 <= c.agreement <= 1
    assert best.kl == min(c.kl for c in ok) and best.model is not None
    assert all(c.model is None for c in rows if c is not best)
    assert table.model_ms(best.model) == pytest.approx(best.predicted_ms)
    assert {c.tokens for c in ok} >= {None, "0.7@1,2,3"}
    order = torch.argsort(block_importance(dense, calibration_loader("digits", dense, 16, 32, 0)), stable=True).tolist()
    for c in rows:
        assert c.blocks_removed == sorted(order[: len(c.blocks_removed)])  # least important blocks first
    assert rows[-1].status.startswith(f"{len(rows[-1].blocks_removed)} blocks alone remove")
    x = next(iter(calibration_loader("digits", dense, 8, 8, 3)))[0]
    assert kl_to_teacher(dense, dense, [x]) == (pytest.approx(0.0, abs=1e-7), 1.0)


@pytest.mark.export
def test_compress_resumes_after_a_kill_in_training_and_skips_the_finished_stages(setup, tmp_path, one_thread):
    art, table = setup
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        compress(art, config(table), cut, callbacks=[Kill(at_step=4)], progress=False)  # epoch 2 of 2
    assert (cut / "profile" / "latency_table.json").is_file() and (cut / "search" / "search.json").is_file()
    assert is_artifact(cut / "pruned") and (cut / "distilled" / "checkpoint.pt").is_file()
    assert load(cut / "distilled").vitcompress_meta.extra["training"]["epochs_done"] == 1
    assert not (cut / "export").exists() and not (cut / "report.md").exists()
    finished = [
        cut / "profile" / "latency_table.json",
        cut / "search" / "search.json",
        cut / "pruned" / "model.safetensors",
    ]
    stamps = [p.stat().st_mtime_ns for p in finished]

    resumed = compress(art, config(table), cut, resume=True, progress=False)
    assert [p.stat().st_mtime_ns for p in finished] == stamps  # not redone
    assert load(cut / "distilled").vitcompress_meta.extra["training"]["epochs_done"] == 2
    full = compress(art, config(table), tmp_path / "full", progress=False)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)

    report = json.loads((cut / "report.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["dense", "pruned", "distilled"]
    pruned = report["rows"][1]
    assert abs(pruned["predicted_cut"] - 0.35) <= TOLERANCE and pruned["measured_ms"] > 0
    assert pruned["macs"] < report["rows"][0]["macs"] and 0 <= pruned["top1"] <= 1
    lo, hi = pruned["measured_cut_ci95"]  # from the bench's latency ratio interval: 1 - its ends
    assert lo <= pruned["measured_cut"] <= hi and isinstance(pruned["flags"], list)
    assert report["rows"][0]["measured_cut_ci95"] == [0.0, 0.0]
    assert (cut / "export" / "model.onnx").is_file() and (cut / "bench" / "report.md").is_file()
    md = (cut / "report.md").read_text()
    assert "| distilled |" in md and "## Search" in md and "Chosen by the search" in md
    assert "measured cut [95% CI] | flags |" in md and f"{pruned['measured_cut']:.1%} [{lo:.1%}, {hi:.1%}]" in md

    with pytest.raises(VitCompressError, match="token_keeps differs"):
        compress(art, config(table), cut, resume=True, token_keeps=("0.8",))
    with pytest.raises(VitCompressError, match="already exists"):
        compress(art, config(table), cut)


@pytest.mark.export
def test_compress_with_trt_builds_and_checks_an_engine_and_resume_keeps_it(setup, tmp_path, monkeypatch, one_thread):
    trt = use_tensorrt_stand_in(monkeypatch, "10.16.1")
    art, table = setup
    cfg = config(table, epochs=1)
    cfg.trt = True
    out = tmp_path / "t"
    res = compress(art, cfg, out, progress=False)
    engine = out / "export" / "model.engine"
    assert engine.is_file() and read_sidecar(engine)["tensorrt_version"] == trt.__version__
    assert res.report["export"]["engine"] == str(engine)
    assert f"TensorRT engine {engine}" in (out / "report.md").read_text()
    stamp = engine.stat().st_mtime_ns
    compress(art, cfg, out, resume=True, progress=False)
    assert engine.stat().st_mtime_ns == stamp  # the export stage is complete: skipped


@pytest.mark.parametrize(
    "options, message",
    [
        ({"latency_reduction": None}, "latency_reduction must be in"),
        ({"latency_reduction": 1.2}, "latency_reduction must be in"),
        ({"granularity": ("heads", "depth")}, "chooses depth itself"),
        ({"token_method": "tome"}, "not tome"),
        ({"token_keeps": ("1.5",)}, "token_keeps must be in"),
        ({"latency_precision": "bf16"}, "fp32 or fp16"),
        ({"latency_table": "missing.json"}, "does not exist"),
    ],
)
def test_compress_refuses_bad_settings_before_writing(setup, tmp_path, options, message, monkeypatch):
    art, table = setup
    monkeypatch.chdir(tmp_path)
    cfg = config(table)
    for k, v in options.items():
        setattr(cfg, k, v)
    with pytest.raises(VitCompressError, match=message):
        compress(art, cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.export
def test_compress_command(setup, tmp_path, capsys, one_thread):
    art, table = setup
    out = tmp_path / "c"
    args = ["compress", art, "--latency-reduction", "0.35", "--latency-table", table, "--data", "digits", "--epochs", "1",
            "--max-steps-per-epoch", "2", "--batch-size", "16", "--calib-images", "16", "--search-images", "32",
            "--token-keeps", "0.7", "--quiet", "-o", out]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    stdout = capsys.readouterr().out
    assert "# compress:" in stdout and "| pruned |" in stdout and "measured cut" in stdout
    assert main([str(a) for a in args] + ["--resume"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("done, skipped") == 5  # profile, search, distil, export, bench
    code = main([str(a) for a in args])
    assert code == 2 and "--resume" in capsys.readouterr().err


class KillAtCall(Kill):
    """Interrupts at the ``at_step``-th training step of the whole run (every training stage counted)."""

    calls = 0

    def on_step(self, loss, step):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt


def int8_setup(art, tmp_path):
    """The tiny model's synthetic table as if profiled in int8 on ort-cpu."""
    table = synthetic_table(load(art), head_ms=0.01, backend="ort-cpu")
    table.precision = "int8"
    return table.save(tmp_path / "int8.json")


@pytest.mark.export
def test_compress_int8_quantizes_distils_through_the_quantizers_and_resumes_after_a_kill(setup, tmp_path, one_thread):
    art, _ = setup
    table = int8_setup(art, tmp_path)
    cfg = config(table, epochs=1)
    cfg.precision, cfg.qat_epochs, cfg.token_method = "int8", 2, "none"
    cut = tmp_path / "cut"
    # distil: 1 epoch of 3 steps; qat: 2 epochs of 3 steps; the 8th step is in the second qat epoch
    with pytest.raises(KeyboardInterrupt):
        compress(art, cfg, cut, callbacks=[KillAtCall(at_step=8)], progress=False)
    for name in ("quantized", "dense_quantized"):
        rec = load(cut / name).vitcompress_meta.extra["quantization"]
        assert rec["precision"] == "int8" and rec["calib_images"] == 16 and rec["layers"]
    assert load(cut / "qat").vitcompress_meta.extra["training"]["epochs_done"] == 1
    assert not (cut / "export").exists() and not (cut / "report.md").exists()
    finished = [cut / "pruned" / "model.safetensors", cut / "distilled" / "model.safetensors",
                cut / "quantized" / "model.safetensors", cut / "dense_quantized" / "model.safetensors"]  # fmt: skip
    stamps = [p.stat().st_mtime_ns for p in finished]

    res = compress(art, cfg, cut, resume=True, progress=False)
    assert [p.stat().st_mtime_ns for p in finished] == stamps  # not redone
    qat = load(cut / "qat")
    assert qat.vitcompress_meta.extra["training"]["epochs_done"] == 2
    assert qat.vitcompress_meta.extra["quantization"]["precision"] == "int8"
    quantized = load(cut / "quantized")
    for (k, a), b in zip(quantized.state_dict().items(), qat.state_dict().values()):
        if k.endswith("_scale"):
            torch.testing.assert_close(a, b, msg=k)  # the calibrated scales stay
    moved = [
        k for k, v in quantized.state_dict().items() if k.endswith("weight") and not torch.equal(v, qat.state_dict()[k])
    ]
    assert moved  # the weights were trained through the quantizers
    assert vitcompress.quantizers.is_quantized(res.model)

    ops = {n.op_type for n in onnx.load(str(cut / "export" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads((cut / "report.json").read_text())
    rows = {r["stage"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "dense-int8", "pruned", "distilled", "quantized", "qat"]
    assert [rows[s]["precision"] for s in rows] == ["fp32", "int8", "fp32", "fp32", "int8", "int8"]
    assert report["precision"] == "int8" and "quantize" in report["seconds"] and "qat" in report["seconds"]
    assert rows["dense-int8"]["measured_cut"] == pytest.approx(0.0) and rows["dense"]["ratio_to_dense"] == 1.0
    for s in ("quantized", "qat"):  # against the dense model quantized alike
        r = rows[s]
        assert r["measured_cut"] == pytest.approx(1 - r["ratio_to_dense"] / rows["dense-int8"]["ratio_to_dense"])
        assert abs(r["predicted_cut"] - 0.35) <= TOLERANCE and r["macs"] == rows["pruned"]["macs"]
    bench = json.loads((cut / "bench" / "report.json").read_text())
    assert {m["variant"]: m["precision"] for m in bench["measurements"]}["qat"] == "int8"
    assert "| qat | int8 |" in (cut / "report.md").read_text()

    with pytest.raises(VitCompressError, match="qat_epochs differs"):
        compress(art, cfg, cut, resume=True, qat_epochs=3)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "int8", "latency_table": None, "backend": "torch-cpu"},
         "backend torch-cpu cannot measure here \\(int8 latency is measured on ort-cpu, ort-trt, trt"),
        ({"precision": "fp8", "latency_table": None, "backend": "ort-cpu"}, "fp8 latency is measured on ort-trt, trt"),
        ({"precision": "int8"}, "latency table was measured in fp32, not int8; profile with precision=int8"),
        ({"precision": "int8", "latency_precision": "fp16"}, "leave latency_precision at fp32"),
        ({"precision": "int4"}, "precision must be one of"),
        ({"qat_epochs": -1}, "qat_epochs"),
    ],
)  # fmt: skip
def test_compress_refuses_a_precision_it_cannot_apply_before_writing(setup, tmp_path, options, message):
    art, table = setup
    cfg = config(table)
    for k, v in options.items():
        setattr(cfg, k, v)
    with pytest.raises(VitCompressError, match=message):
        compress(art, cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_compress_refuses_an_int8_table_for_a_float_run(setup, tmp_path):
    art, _ = setup
    with pytest.raises(VitCompressError, match="measured in int8, not fp32; .* pass precision=int8"):
        compress(art, config(int8_setup(art, tmp_path)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_compress_command_refuses_int8_on_a_backend_without_q_dq_kernels(setup, tmp_path, capsys):
    art, _ = setup
    code = main(["compress", str(art), "--latency-reduction", "0.3", "--precision", "int8", "--backend", "torch-cpu",
                 "--data", "digits", "-o", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --backend torch-cpu cannot measure here (int8 latency")
    assert len(err.strip().splitlines()) == 1 and "--precision" in err and not (tmp_path / "c").exists()


def test_resume_reads_a_setting_missing_from_an_older_run_as_its_default(setup, tmp_path):
    art, table = setup
    out = tmp_path / "old"
    out.mkdir()
    _settings(out, config(table), art, None, resume=False)
    old = json.loads((out / "compress.json").read_text())
    for k in ("precision", "calibration", "qat_epochs", "qat_lr"):  # a run begun before these settings
        del old[k]
    (out / "compress.json").write_text(json.dumps(old))
    _settings(out, config(table), art, None, resume=True)  # the defaults: the same run
    (out / "compress.json").write_text(json.dumps(old))
    cfg = config(table)
    cfg.precision = "int8"
    with pytest.raises(VitCompressError, match="precision differs"):
        _settings(out, cfg, art, None, resume=True)
