"""`vitcompress export`: a real export from an artifact, and every bad input as one line, exit 2,
no file left behind."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from helpers import tiny

import vitcompress
from vitcompress.cli import main
from vitcompress.exporters import tensorrt_available

pytestmark = pytest.mark.export  # ONNX export: `make test-slow`


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return vitcompress.save(tiny("deit_distilled"), tmp_path_factory.mktemp("a") / "art")


@pytest.mark.skipif(tensorrt_available(), reason="checks the message shown where TensorRT is missing")
def test_export_dynamic_then_trt_missing(artifact, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code, stdout, stderr = run(
        capsys, "export", artifact, "-o", out, "--batch", "1:3:8", "--dynamic-size", "--img-size", "16:32:48", "--trt"
    )
    # the ONNX file is complete and checked, then TensorRT's absence is one line with exit code 2
    assert code == 2
    assert out.is_file() and onnx.load(str(out)).graph.node
    assert "batch   1  image   32" in stdout and "batch   8  image   32" in stdout and "image   16" in stdout
    assert "passed" in stdout and "after clean-up" in stdout and "TensorRT check" in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed")
    assert "pip install 'vitcompress[gpu]'" in lines[0]
    assert not list(tmp_path.glob("*.engine"))


def test_export_static_no_check(artifact, tmp_path, capsys):
    out = tmp_path / "s.onnx"
    code, stdout, _ = run(capsys, "export", artifact, "-o", out, "--no-check", "--opset", "18")
    assert code == 0 and "parity" not in stdout
    m = onnx.load(str(out))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [18]
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["vitcompress.export"])["batch"] == {"min": 1, "opt": 8, "max": 32}


BAD = {
    "missing": (["export", "{tmp}/nope", "-o", "{tmp}/o.onnx"], "does not exist"),
    "missing-newdir": (["export", "{tmp}/nope", "-o", "{tmp}/new/o.onnx"], "does not exist"),
    "corrupt": (["export", "{tmp}/corrupt", "-o", "{tmp}/o.onnx"], "corrupt"),
    "min>opt": (["export", "{art}", "-o", "{tmp}/o.onnx", "--batch", "8:2:16"], "impossible"),
    "not-int": (["export", "{art}", "-o", "{tmp}/o.onnx", "--batch", "a:b"], "MIN:OPT:MAX"),
    "patch": (
        ["export", "{art}", "-o", "{tmp}/o.onnx", "--dynamic-size", "--img-size", "20:32:48"],
        "not a multiple of the patch size 8",
    ),
    "size-no-dyn": (["export", "{art}", "-o", "{tmp}/o.onnx", "--img-size", "16:32:48"], "--dynamic-size"),
    "unwritable": (["export", "{art}", "-o", "{tmp}/file/o.onnx"], "cannot create output folder"),
    "out-is-dir": (["export", "{art}", "-o", "{tmp}"], "is a folder"),
    "opset": (["export", "{art}", "-o", "{tmp}/o.onnx", "--opset", "9"], "outside"),
    "workspace": (["export", "{art}", "-o", "{tmp}/o.onnx", "--trt", "--workspace", "0"], "workspace"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(case, artifact, tmp_path, capsys):
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "vitcompress.json").write_text("{not json")
    (tmp_path / "file").write_text("x")
    args, needle = BAD[case]
    args = [a.format(tmp=tmp_path, art=artifact) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, stderr = run(capsys, *args)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_exceeded_tolerance_exit_2_no_file(artifact, tmp_path, capsys):
    code, _, stderr = run(
        capsys, "export", artifact, "-o", tmp_path / "t.onnx", "--batch", "2:2:2", "--tolerance", "1e-12"
    )
    assert code == 2 and "parity check failed" in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_failed_export_removes_only_the_folders_it_created(artifact, tmp_path, capsys):
    (tmp_path / "keep").mkdir()  # exists before: stays, even though the export leaves it empty
    out = tmp_path / "keep" / "newdir" / "sub" / "m.onnx"
    code, _, stderr = run(capsys, "export", artifact, "-o", out, "--batch", "2:2:2", "--tolerance", "1e-12")
    assert code == 2 and "parity check failed" in stderr and len(stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep"] and not list((tmp_path / "keep").iterdir())


def test_created_folders_are_removed_only_while_empty(tmp_path):
    from vitcompress.exporters.outputs import created_dirs, make_dirs, remove_empty

    made = make_dirs(tmp_path / "a" / "b" / "c")
    assert made == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a" / "b") == []  # nothing new
    (tmp_path / "a" / "note.txt").write_text("x")  # something else was put into a/
    remove_empty(made)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["note.txt"]
    with pytest.raises(KeyError):
        with created_dirs(tmp_path / "x" / "y"):
            raise KeyError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_trt_refuses_a_graph_the_check_rejects(artifact, tmp_path, capsys, monkeypatch):
    from onnx import helper

    from vitcompress.exporters import trt_build, trt_check

    real_check, built = trt_check.check_tensorrt, []

    def check_with_planted_node(path, *args, **kwargs):  # the real check, on the graph plus one Unique node
        model = onnx.load(str(path))
        model.graph.node.append(helper.make_node("Unique", [model.graph.output[0].name], ["u"], name="planted_unique"))
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(trt_check, "check_tensorrt", check_with_planted_node)
    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: built.append("require_tensorrt"))
    monkeypatch.setattr(trt_build, "build_engine", lambda *a, **k: built.append("build_engine"))
    out = tmp_path / "m.onnx"
    code, stdout, stderr = run(capsys, "export", artifact, "-o", out, "--batch", "1:2:4", "--trt")
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the graph cannot build in TensorRT"), stderr
    assert "'planted_unique' (Unique)" in lines[0] and "not supported" in lines[0]
    assert "no engine was built" in lines[0] and "is kept" in lines[0] and "change the model" in lines[0]
    assert "1 errors" in stdout and "planted_unique" in stdout
    # refused before TensorRT is even imported: no engine, no sidecar; the (valid) ONNX file stays
    assert built == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(str(out))
    assert "Unique" not in {n.op_type for n in onnx.load(str(out)).graph.node}


@pytest.mark.parametrize("passes", [False, True])
def test_engine_is_moved_into_place_only_after_its_parity_passed(passes, artifact, tmp_path, capsys, monkeypatch):
    """Engine build and engine parity faked (no TensorRT here): what reaches the target paths."""
    import torch

    from vitcompress.exporters import trt_build, trt_runner
    from vitcompress.exporters.parity import ParityCase, ParityReport
    from vitcompress.exporters.trt_build import profile_shapes, sidecar, sidecar_path

    def fake_build(onnx_path, engine_path, cfg, source=None):
        side = sidecar(
            engine_path,
            onnx_path,
            cfg,
            trt_version="10.99",
            gpu="fake",
            input_name="pixel_values",
            shapes=profile_shapes([None, 3, 32, 32], cfg),
            source=source,
        )
        Path(engine_path).write_bytes(b"new engine")
        sidecar_path(engine_path).write_text(json.dumps(side))
        # CUDA "present" from here on only (the ONNX exporter behaves differently where CUDA is present)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        return side

    checked = []

    def fake_parity(engine_path, onnx_path, sizes, precision="fp32", keeps=None):
        engine_path = Path(engine_path)
        checked.append((engine_path, engine_path.read_bytes(), sidecar_path(engine_path).is_file(), sizes))
        rep = ParityReport("TensorRT fp32 vs ONNX Runtime", 1e-3)
        rep.cases.append(ParityCase(1, 32, 1e-6 if passes else 0.5, 1e-6 if passes else 0.5, passes))
        return rep

    monkeypatch.setattr(trt_build, "require_tensorrt", lambda: None)
    monkeypatch.setattr(trt_build, "build_engine", fake_build)
    monkeypatch.setattr(trt_runner, "engine_parity", fake_parity)
    out = tmp_path / "m.onnx"
    if passes:  # replaces an earlier engine and its sidecar
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"old engine")
        sidecar_path(engine).write_text("{}")
        args = ["--force"]  # an existing engine is replaced only with --force
    else:  # into folders that do not exist yet
        engine = tmp_path / "eng" / "sub" / "m.engine"
        args = ["--engine", engine]
    code, stdout, stderr = run(capsys, "export", artifact, "-o", out, "--batch", "1:2:4", "--no-check", "--trt", *args)
    # the parity ran on the built engine (with its sidecar) in a temporary place next to the target,
    # at three batch sizes of the engine's profile
    assert len(checked) == 1, stderr
    [(where, content, had_sidecar, sizes)] = checked
    assert where.name == "m.engine" and where.parent.parent == engine.parent and where != engine
    assert content == b"new engine" and had_sidecar and sizes == [(1, 32), (2, 32), (4, 32)]
    if passes:
        assert code == 0 and f"wrote {engine}" in stdout
        assert engine.read_bytes() == b"new engine"
        side = json.loads(sidecar_path(engine).read_text())
        assert side["engine"] == "m.engine" and side["profile"]["max"] == [4, 3, 32, 32]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx"]
    else:
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "differs from ONNX Runtime" in lines[0], stderr
        assert "no engine was written" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no engine, sidecar or folder
