"""Benchmark stage: runner contract, ratio arithmetic, report files, skipped backends, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import tiny

import vitcompress
from vitcompress.benchmarks.backends import backend_names, get_runner
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.benchmarks.report import COLUMNS, efficiency, ratios, to_markdown, write_report
from vitcompress.benchmarks.timing import paired_ratio, summarize
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.exporters import TOLERANCE, relative_error, tolerance

FAST = dict(warmup=1, iters=2, rounds=2)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny dense model and a 40%-MACs-pruned copy, as Variants sharing one work dir."""
    work = tmp_path_factory.mktemp("bench")
    dense = tiny("vit", seed=1)
    pruned = vitcompress.prune(dense, flops_reduction=0.4, importance="l1", round_to=1).model
    return (
        load_variant(dense, "dense", workdir=work, max_batch=4),
        load_variant(pruned, "pruned", workdir=work, max_batch=4),
    )


ONNX = pytest.mark.export  # these backends run an exported ONNX graph: `make test-slow`


@pytest.mark.parametrize(
    "backend",
    ["torch-cpu", "torch-cuda", *(pytest.param(b, marks=ONNX) for b in ("ort-cpu", "ort-cuda", "ort-trt", "trt"))],
)
def test_runner_matches_pytorch(pair, backend):
    cls = get_runner(backend)
    reason = cls.unavailable("fp32")
    if reason:
        assert isinstance(reason, str) and reason
        pytest.skip(reason)
    for v in pair:
        x = v.example(3, seed=5)
        with torch.no_grad():
            ref = v.model(torch.from_numpy(x)).numpy()
        with cls(v, 3, "fp32", threads=1, x=x) as r:
            r.infer()
            out = r.output()
        assert out.shape == ref.shape
        # the export's scale-relative measure; an fp32 GPU result is held to TF32's tolerance
        assert relative_error(out, ref)[1] <= tolerance("fp32", r.device)


def test_torch_cpu_bf16_close(pair):
    v = pair[1]
    x = v.example(2)
    with torch.no_grad():
        ref = v.model(torch.from_numpy(x)).numpy()
    with get_runner("torch-cpu")(v, 2, "bf16", threads=1, x=x) as r:
        r.infer()
        out = r.output()
    assert relative_error(out, ref)[1] <= TOLERANCE["bf16"]


def test_ratio_arithmetic():
    assert efficiency(0.5, 0.6) == pytest.approx(0.8)
    assert efficiency(0.538, 0.538) == pytest.approx(1.0)
    assert efficiency(1.0, 0.9) is None
    r = ratios(460, 1000, 0.5)
    assert r["macs_ratio"] == pytest.approx(0.46) and r["speedup"] == pytest.approx(2.0)
    assert r["efficiency"] == pytest.approx(0.5 / 0.54)
    # paired: machine drift doubles every sample of round 2, the ratio stays 0.5
    assert paired_ratio([[1, 1, 1], [2, 2, 2], [1, 1, 1]], [[2, 2, 2], [4, 4, 4], [2, 2, 2]]) == pytest.approx(0.5)
    s = summarize([[1.0, 2.0], [3.0, 4.0]], batch=8)
    assert s["median_ms"] == pytest.approx(2.5) and s["throughput"] == pytest.approx(3200.0) and s["n"] == 4


@ONNX
def test_report_files_and_skipped_backend(pair, tmp_path):
    cfg = BenchConfig(backends=["ort-cpu", "torch-cpu", "torch-cuda", "trt"], batches=[1, 2], threads=1, **FAST)
    result = run_bench(list(pair), cfg, progress=False)
    skipped = {s["backend"]: s["reason"] for s in result["skipped"]}
    if not torch.cuda.is_available():
        assert "torch-cuda" in skipped and "CUDA" in skipped["torch-cuda"]
    assert all(reason for reason in skipped.values())
    ms = [m for m in result["measurements"] if m["backend"] in ("ort-cpu", "torch-cpu")]
    assert len(ms) == 2 * 2 * 2
    for m in ms:
        assert len(m["samples_ms"]) == 2 and all(len(r) == 2 and all(t > 0 for t in r) for r in m["samples_ms"])
        assert m["output_finite"]
        if m["variant"] == "dense":
            assert m["macs_ratio"] == 1.0 and m["latency_ratio"] == 1.0 and m["efficiency"] is None
        else:
            assert 0.5 < m["macs_ratio"] < 0.7 and m["efficiency"] is not None
    paths = write_report(result, tmp_path / "rep")
    data = json.loads(paths["json"].read_text())
    assert data["env"]["threads"] == 1 and data["measurements"][0]["samples_ms"]
    md = paths["md"].read_text()
    assert all(c in md for c in COLUMNS) and md == to_markdown(result)
    assert md.count("| ort-cpu |") == 4
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_errors():
    with pytest.raises(VitCompressError, match="unknown backend 'ort-gpu'"):
        BenchConfig(backends=["ort-gpu"]).validate()
    with pytest.raises(VitCompressError, match="batch"):
        BenchConfig(batches=[0]).validate()
    assert {"torch-cpu", "ort-cpu", "torch-cuda", "ort-cuda", "ort-trt", "trt"} <= set(backend_names())


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--backend", "onnx-cpu"], "unknown backend 'onnx-cpu'"),
        (["--batch", "0"], "batch sizes must be integers >= 1"),
        (["--batch", "x"], "--batch must be comma-separated integers"),
        (["--precision", "int8"], "unknown precision 'int8'"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, args, needle):
    rc = main(["bench", "vit_tiny_patch16_224", *args, "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


@ONNX
def test_cli_end_to_end(pair, tmp_path, capsys):
    a, b = tmp_path / "dense", tmp_path / "pruned"
    vitcompress.save(pair[0].model, a)
    vitcompress.save(pair[1].model, b)
    rc = main(
        [
            "bench",
            str(b),
            "--baseline",
            str(a),
            "--backend",
            "ort-cpu,torch-cuda",
            "--batch",
            "2",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--rounds",
            "2",
            "--threads",
            "1",
            "--report",
            str(tmp_path / "r"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "| ort-cpu | 2 | pruned |" in out
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["baseline"] == "dense" and {m["variant"] for m in data["measurements"]} == {"dense", "pruned"}


@pytest.mark.parametrize(
    "arg, needle",
    [
        ("runs/nope", "'runs/nope' does not exist; pass an artifact folder or a timm model name"),
        ("nope.safetensors", "'nope.safetensors' does not exist"),
        ("empty", "folder 'empty' is not a vitcompress artifact (no vitcompress.json)"),
        ("w.pth", "'w.pth' is a file, not a vitcompress artifact folder"),
    ],
)
def test_cli_path_that_is_not_an_artifact(tmp_path, monkeypatch, capsys, arg, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.pth").write_bytes(b"weights")
    rc = main(["bench", arg, "--backend", "torch-cpu", "--report", "r"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert "unknown model" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "w.pth"]  # no report written


@ONNX
def test_temporary_work_folders_are_deleted(tmp_path, monkeypatch):
    """ONNX exports of variants without a work folder go to a vitcompress-bench-* temp folder that is
    deleted when the run ends; a caller's explicit work folder is kept."""
    import gc
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: made.append(real_mkdtemp(*a, **k)) or made[-1])
    model = tiny("vit", seed=2)
    borrowed = load_variant(model, "borrowed", max_batch=1)
    kept = load_variant(model, "kept", workdir=tmp_path / "keep", max_batch=1)
    result = run_bench([borrowed, kept], BenchConfig(backends=["ort-cpu"], batches=[1], threads=1, **FAST))
    assert {m["variant"] for m in result["measurements"]} == {"borrowed", "kept"}  # both were exported
    work = [Path(d) for d in made if Path(d).name.startswith("vitcompress-bench-")]
    assert len(work) == 1 and work[0].parent == tmp  # one work folder was made in the temp dir
    assert any(Path(d).parent == work[0] / "borrowed" for d in made)  # and the export went there
    assert list(tmp.iterdir()) == []
    assert borrowed.workdir is None and not borrowed._files
    assert (tmp_path / "keep" / "kept" / "model-fp32.onnx").is_file()

    # a variant used outside run_bench makes its own folder, deleted with the variant
    alone = load_variant(model, "alone", max_batch=1)
    onnx = alone.onnx()
    assert onnx.is_file() and onnx.parent.parent.parent == tmp
    del alone
    gc.collect()
    assert list(tmp.iterdir()) == []
