"""The benchmark backends: every runner module imported (each registers itself in ``RUNNERS``), and
the look-ups the benchmark uses."""

from __future__ import annotations

from . import runner_ort, runner_torch, runner_trt  # noqa: F401  (register the backends)
from .runners import RUNNERS


def backend_names() -> list[str]:
    """Registered backend names."""
    return RUNNERS.list()


def get_runner(name: str):
    """The runner class for a backend name; unknown names raise a one-line ``VitCompressError``."""
    return RUNNERS.get(name)
