"""Stand-ins for libraries the test machines lack (``tensorrt``), put on ``sys.path`` only by the tests
that use them (``use_tensorrt_stand_in``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

FOLDER = str(Path(__file__).resolve().parent)
TRT_VERSIONS = ("10.16.1", "11.1.0")


def use_tensorrt_stand_in(monkeypatch, version: str = TRT_VERSIONS[0]):
    """Make ``import tensorrt`` give the stand-in of TensorRT ``version`` for the rest of the test."""
    monkeypatch.setenv("VITCOMPRESS_TRT_STAND_IN", version)
    monkeypatch.syspath_prepend(FOLDER)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # undone after the test: back to absent (or as it was)
    del sys.modules["tensorrt"]
    trt = importlib.import_module("tensorrt")
    assert Path(trt.__file__).resolve().parent.parent == Path(FOLDER) and trt.__version__ == version
    return trt
