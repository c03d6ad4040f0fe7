"""`vitcompress export`: a real export from an artifact, and every bad input as one line, exit 2,
no file left behind."""
from __future__ import annotations

import json

import onnx
import pytest

import vitcompress
from conftest import tiny
from vitcompress.cli import main
from vitcompress.exporters import tensorrt_available


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
    code, stdout, stderr = run(capsys, "export", artifact, "-o", out, "--batch", "1:3:8", "--dynamic-size",
                               "--img-size", "16:32:48", "--trt")
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
    "patch": (["export", "{art}", "-o", "{tmp}/o.onnx", "--dynamic-size", "--img-size", "20:32:48"],
              "not a multiple of the patch size 8"),
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
    code, _, stderr = run(capsys, "export", artifact, "-o", tmp_path / "t.onnx", "--batch", "2:2:2",
                          "--tolerance", "1e-12")
    assert code == 2 and "parity check failed" in stderr and len(stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
