"""Importing vitcompress stays light: no heavy optional backend, no CUDA initialisation."""
import subprocess
import sys


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
