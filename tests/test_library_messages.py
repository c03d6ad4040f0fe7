"""Library errors name Python parameters (``pass force=True``) and list them in ``params``; the
command line shows them as its flags (``pass --force``). The library logs (the ``vitcompress``
logger) and does not print; the command line prints its INFO lines."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest
from helpers import tiny

import vitcompress
from vitcompress.cli import _flags, main
from vitcompress.exporters.export import export

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _library_files() -> list[Path]:
    """The library's modules: the exporters, the core and the benchmark modules that are not
    scripts. The command line (``vitcompress/commands``, ``cli.py``), the scripts' ``main()`` and
    a module run as a script (``python -m vitcompress.families.coverage`` prints a table) speak in
    flags and print."""
    files = sorted((ROOT / "exporters").glob("*.py"))
    for f in sorted((ROOT / "vitcompress").rglob("*.py")):
        rel = f.relative_to(ROOT / "vitcompress").parts
        if f.is_symlink() or rel[0] in ("commands", "benchmarks", "exporters", "cli.py"):
            continue
        if '__name__ == "__main__"' in f.read_text():
            continue
        files.append(f)
    for f in sorted((ROOT / "benchmarks").glob("*.py")):
        text = f.read_text()
        if "argparse" not in text and "def main(" not in text:
            files.append(f)
    return files


def _raises(path: Path):
    """``(line, message text, params keyword or None)`` of every ``VitCompressError(...)`` call; the
    message text is the literal parts of the first argument (f-string values left out)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if name != "VitCompressError" or not node.args:
            continue
        text = "".join(
            n.value for n in ast.walk(node.args[0]) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        )
        params = next((k.value for k in node.keywords if k.arg == "params"), None)
        yield node.lineno, text, params


def test_the_library_scan_covers_the_exporters_core_and_benchmark_modules():
    names = {f.relative_to(ROOT).as_posix() for f in _library_files()}
    assert {"exporters/export.py", "exporters/trt_build.py", "vitcompress/artifact.py", "benchmarks/bench.py"} <= names
    assert {"vitcompress/pruner.py", "vitcompress/families/base.py", "vitcompress/families/vit/family.py"} <= names
    assert not any(n.startswith("vitcompress/commands/") for n in names)
    assert "benchmarks/gpu_tables.py" not in names  # a script (its own flags)
    assert sum(1 for f in _library_files() for _ in _raises(f)) > 150


def test_no_library_error_message_writes_a_flag():
    found = [
        f"{f.relative_to(ROOT)}:{line}: {text[:80]}"
        for f in _library_files()
        for line, text, _ in _raises(f)
        if FLAG.search(text)
    ]
    assert not found, "\n".join(found)


def test_every_exporter_error_lists_the_parameters_it_names():
    missing, unnamed = [], []
    for f in sorted((ROOT / "exporters").glob("*.py")):
        for line, text, params in _raises(f):
            where = f"{f.relative_to(ROOT)}:{line}"
            if params is None:
                missing.append(where)
            elif isinstance(params, ast.List):
                for p in params.elts:
                    if isinstance(p, ast.Constant) and not re.search(rf"(?<![\w'-]){p.value}(?!\w)", text):
                        unnamed.append(f"{where}: {p.value}")
    assert not missing, "VitCompressError without params=: " + ", ".join(missing)
    assert not unnamed, "params not in the message: " + ", ".join(unnamed)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return vitcompress.save(tiny("vit"), tmp_path_factory.mktemp("a") / "art")


@pytest.mark.parametrize(
    "args,kw,library,shown",
    [
        (
            ["--opset", "30"],
            {"opset": 30},
            "opset=30 is outside 17..23; use the default opset=",
            "--opset 30 is outside",
        ),
        (
            ["--img-size", "16:32:48"],
            {"img_size": "16:32:48"},
            "an img_size range needs dynamic_size=True",
            "an --img-size range needs --dynamic-size",
        ),
        (
            ["--img-size", "16"],
            {"img_size": "16"},
            "; pass dynamic_size=True",
            "--img-size 16:16:16 differs from the model's input size 32",
        ),
        (
            ["--batch", "x"],
            {"batch": "x"},
            "batch 'x' is not MIN:OPT:MAX",
            "--batch 'x' is not MIN:OPT:MAX of integers",
        ),
        (
            ["--runtime-keep"],
            {"runtime_keep": True},
            "without runtime_keep",
            "--runtime-keep needs a token-reduced model",
        ),
        (
            ["--trt", "--workspace", "0"],
            {"trt": True, "workspace_gib": 0.0},
            "workspace_gib=0.0 must",
            "--workspace 0.0 must",
        ),
        (
            ["--trt", "--opt-level", "9"],
            {"trt": True, "opt_level": 9},
            "opt_level=9 (the builder",
            "--opt-level 9 (the builder",
        ),
        (
            ["--trt", "--runtime-keep", "--keep-permille", "1:5:2000"],
            {"trt": True, "runtime_keep": True, "keep_permille": "1:5:2000"},
            "keep_permille=1:5:2000 goes above 1000",
            "--keep-permille 1:5:2000 goes above 1000",
        ),
    ],
    ids=["opset", "img-range", "img-size", "batch", "runtime-keep", "workspace", "opt-level", "keep-permille"],
)
def test_exporter_errors_name_parameters_in_python_and_flags_on_the_command_line(
    artifact, tmp_path, capsys, args, kw, library, shown
):
    out = tmp_path / "m.onnx"
    with pytest.raises(vitcompress.VitCompressError) as e:
        export(artifact, out, **{"batch": "2:2:2", **kw})
    assert library in str(e.value) and "--" not in str(e.value) and e.value.params
    code = main(["export", str(artifact), "-o", str(out), "--batch", "2:2:2", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {shown}") and err.count("\n") == 1, err
    assert not out.exists()


def test_a_parameter_of_another_command_shows_as_its_flag():
    # an engine error while benchmarking says how to rebuild the engine: export's --trt
    assert _flags(["bench"], ("trt", "backends", "batches")) == {
        **_flags(["bench"]),
        "trt": "--trt",
    }
    assert _flags(["bench"])["backends"] == "--backend" and _flags(["bench"])["batches"] == "--batch"
    assert _flags(["export"])["workspace_gib"] == "--workspace"
    err = vitcompress.VitCompressError("rebuild the engine here (export with trt=True)", params=["trt"])
    assert err.with_flags(_flags(["bench"], err.params)) == "rebuild the engine here (export with --trt)"


def test_bench_errors_show_the_bench_flags(artifact, capsys):
    code = main(["bench", str(artifact), "--backend", "torch-cpu", "--batch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "batch sizes must be integers >= 1" in err and "pass e.g. --batch 1,8,32" in err, err


def _prints(path: Path) -> list[int]:
    """Lines of ``print(...)`` calls and of ``print`` passed as a value (``echo=print``)."""
    tree = ast.parse(path.read_text())
    return sorted(
        n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "print" and isinstance(n.ctx, ast.Load)
    )


def test_the_library_does_not_print():
    found = [f"{f.relative_to(ROOT)}:{line}" for f in _library_files() for line in _prints(f)]
    assert not found, "print in library code: " + ", ".join(found)


@pytest.mark.export
def test_export_logs_what_it_wrote_and_prints_nothing(artifact, tmp_path, capsys, caplog):
    out = tmp_path / "m.onnx"
    with caplog.at_level(logging.INFO, logger="vitcompress"):
        export(artifact, out, batch="2:2:2", check=False)
    assert capsys.readouterr().out == ""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("vitcompress.")]
    assert any(m.startswith("nodes: ") and "after clean-up" in m for m in lines), lines
    assert any(m.startswith(f"wrote {out} (") for m in lines), lines
    # the command line prints the same lines on stdout
    code = main(["export", str(artifact), "-o", str(out), "--batch", "2:2:2", "--no-check", "--force"])
    stdout = capsys.readouterr().out
    assert code == 0 and "after clean-up" in stdout and f"wrote {out} (" in stdout


@pytest.mark.parametrize(
    "source,kw,args,library,shown",
    [
        (
            "headless",
            {"granularity": ("embed",)},
            ["--granularity", "embed"],
            "pass change_features=True to prune them anyway, or drop them from granularity",
            "pass --change-features to prune them anyway, or drop them from --granularity",
        ),
        (
            "qk_norm",
            {"granularity": ("heads", "qk")},
            ["--granularity", "heads,qk"],
            "cannot be pruned exactly; drop qk from granularity",
            "cannot be pruned exactly; drop qk from --granularity",
        ),
        (
            "vit_tiny_patch16_224",
            {"img_size": 8, "num_classes": 3},
            ["--img-size", "8", "--num-classes", "3"],
            "so the model sees no patch; pass an img_size of at least 16 (a multiple of 16)",
            "so the model sees no patch; pass an --img-size of at least 16 (a multiple of 16)",
        ),
        (
            "plain",
            {"method_options": {"steps": 3}},
            ["--method-opt", "steps=3"],
            "method_options apply to method=ihp, gohsp or amap only",
            "--method-opt apply to --method ihp, gohsp or amap only",
        ),
    ],
    ids=["change-features", "granularity", "img-size", "method-options"],
)
def test_prune_errors_name_parameters_in_python_and_flags_on_the_command_line(
    tmp_path, capsys, source, kw, args, library, shown
):
    models = {"headless": {"num_classes": 0}, "qk_norm": {"qk_norm": True}, "plain": {}}
    model = vitcompress.save(tiny("vit", **models[source]), tmp_path / source) if source in models else source
    out = tmp_path / "pruned"
    with pytest.raises(vitcompress.VitCompressError) as e:
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", output=out, **kw)
    assert library in str(e.value) and "--" not in str(e.value) and e.value.params
    code = main(["prune", str(model), "-o", str(out), "--flops-reduction", "0.3", "--importance", "l1", *args])
    err = capsys.readouterr().err
    assert code == 2 and shown in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
