"""Importing vitcompress stays light: no heavy optional backend, no CUDA initialisation."""

import os
import subprocess
import sys
from pathlib import Path


def test_import_does_not_load_backends_or_cuda():
    code = (
        "import sys, vitcompress, vitcompress.cli\n"
        "import torch\n"
        "heavy = [m for m in ('onnxruntime', 'tensorrt', 'onnx_graphsurgeon', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def _run_in_checkout(code: str, safe_path: bool) -> subprocess.CompletedProcess:
    """Run ``code`` from the checkout root, with the root first on sys.path (as ``python -c`` does),
    or with nothing added (``python -P``)."""
    root = str(Path(__file__).resolve().parents[1])
    args = [sys.executable] + (["-P"] if safe_path else []) + ["-c", code]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, capture_output=True, text=True, cwd=root, env=env)


def test_each_file_has_one_module_name():
    # from the checkout root the source folders come first on sys.path; the linked folders must
    # still resolve to vitcompress.* and refuse their folder names
    code = (
        "import vitcompress.exporters as e, vitcompress.benchmarks.suite as s, vitcompress.data as d\n"
        "import vitcompress.exporters.onnx_export as o\n"
        "assert e.ExportResult is o.ExportResult\n"
        "for name in ('exporters', 'benchmarks', 'cli'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError as err:\n"
        "        assert 'vitcompress.' in str(err), err\n"
        "    else:\n"
        "        raise AssertionError(name + ' imported under its folder name')\n"
        "print(d.__name__, s.__name__)\n"
    )
    out = _run_in_checkout(code, safe_path=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["vitcompress.data", "vitcompress.benchmarks.suite"]


def test_benchmarks_run_from_the_checkout_root_without_install():
    # what a GPU machine does: `python -m vitcompress.benchmarks...` from the root, nothing installed
    out = _run_in_checkout("import runpy; runpy.run_module('vitcompress.benchmarks.timing')", safe_path=False)
    assert out.returncode == 0, out.stderr
