"""Environment capture for benchmark reports: CPU/GPU model, library versions, threads, precision."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch


def _version(pkg: str):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture(threads: int, precision: str) -> dict:
    """A JSON-serialisable description of the machine and software the numbers were measured on."""
    gpu = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {
            "name": p.name,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "compute_capability": f"{p.major}.{p.minor}",
            "driver_visible_devices": torch.cuda.device_count(),
        }
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except Exception:
        providers = []
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "precision": precision,
        "gpu": gpu,
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
        "versions": {
            p: _version(p)
            for p in ("torch", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "vitcompress")
        },
        "ort_providers": providers,
    }
