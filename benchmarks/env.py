"""Environment capture for benchmark reports: CPU/GPU model, library versions, threads, precision."""

from __future__ import annotations

import os
import platform
import time
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


#: cores of background work tolerated beyond the cores the bench leaves free
LOAD_SLACK = 0.5


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def governor() -> str | None:
    """The CPU frequency governor of the first usable core (``performance``, ``powersave``...), None where
    the kernel exposes none (most virtual machines)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpus[0]}/cpufreq/scaling_governor") as f:
            return f.read().strip() or None
    except OSError:
        return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _busy_seconds() -> float | None:
    """CPU seconds spent busy (not idle or waiting for I/O) on the usable cores since boot."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in rest.split()]
        busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / tick


class LoadMonitor:
    """Cores kept busy by other processes while this one measures: (busy CPU time of the usable cores
    minus this process's CPU time) / wall time, over the window since the last ``mark``.

    ``others()`` is None where ``/proc/stat`` is missing (not Linux): the load check is then skipped."""

    def __init__(self) -> None:
        self.mark()

    def mark(self) -> None:
        self._t, self._busy, self._own = time.perf_counter(), _busy_seconds(), time.process_time()

    def others(self) -> float | None:
        """Busy cores of other processes since the last ``mark`` (and marks again)."""
        t, busy, own = time.perf_counter(), _busy_seconds(), time.process_time()
        dt = t - self._t
        prev, self._t, self._busy, self._own = (self._busy, self._own), t, busy, own
        if busy is None or prev[0] is None or dt <= 0:
            return None
        return max(0.0, (busy - prev[0] - (own - prev[1])) / dt)

    def sample(self, seconds: float) -> float | None:
        """Busy cores of other processes over the next ``seconds`` (this process sleeping)."""
        self.mark()
        time.sleep(seconds)
        return self.others()


def busy(others: float | None, threads: int) -> bool:
    """True when other processes use more than the cores the bench's ``threads`` leave free."""
    return others is not None and others > max(0, usable_cores() - threads) + LOAD_SLACK


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
        "load_before": load_average(),
        "governor_before": governor(),
    }
