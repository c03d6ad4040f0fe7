"""The GPU latency tables script (``benchmarks/gpu_tables.py``) run the way a GPU machine runs it: from
the checkout root, nothing installed, without click, tqdm, scikit-learn, matplotlib and
onnx-graphsurgeon; here at a tiny scale on the CPU. Plus the report's target logic on a GPU-shaped
result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitcompress.benchmarks import gpu_report, gpu_tables

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("click", "tqdm", "sklearn", "matplotlib", "onnx_graphsurgeon")

SITECUSTOMIZE = f"""
import sys
for name in {ABSENT!r}:
    sys.modules[name] = None  # `import name` raises ImportError, find_spec gives None: as if not installed
# nothing installed: drop the editable install's finder, so vitcompress comes from the checkout root
sys.meta_path[:] = [f for f in sys.meta_path if not (getattr(f, "__module__", "") or "").startswith("__editable__")]
"""


def _run(tmp_path, *args):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # a subprocess that imports the whole stack: `make test-slow`
def test_tiny_run_from_the_checkout_root_without_optional_packages(tmp_path):
    probe = _run(
        tmp_path,
        "-c",
        "import vitcompress, sys; print(vitcompress.__file__); "
        f"print([m for m in {ABSENT!r} if __import__('importlib').util.find_spec(m) is not None])",
    )
    assert probe.returncode == 0, probe.stderr
    where, found = probe.stdout.split("\n")[:2]
    assert Path(where) == ROOT / "vitcompress" / "__init__.py" and found == "[]"

    out = tmp_path / "out"
    proc = _run(
        tmp_path,
        *["-m", "vitcompress.benchmarks.gpu_tables", "--scale", "tiny", "--device", "cpu"],
        *["--out", str(out), "--profile", "tiny/p46", "--time-limit", "600"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout
    assert "plan: 1 model(s) x 1 mode(s) x 1 batch(es)" in log and "estimated" in log
    assert "no PNG: matplotlib is missing" in log
    folder = out / "cpu"
    assert sorted(p.name for p in folder.iterdir()) == ["gpu_tables.json", "gpu_tables.md", "profile.txt"]
    result = json.loads((folder / "gpu_tables.json").read_text())
    measured = {r["variant"]: r for r in gpu_report.rows(result)}
    assert set(measured) == {"dense", "p46", "p46-r1", "vpa70", "tome-m70", "vpa-r6"}
    assert all(len(r["samples_ms"]) == 2 and all(len(s) == 2 for s in r["samples_ms"]) for r in measured.values())
    assert 0.5 < measured["p46"]["macs_ratio"] < 0.56 and measured["dense"]["macs_ratio"] == 1.0
    assert measured["vpa70"]["macs_ratio"] < 1 and measured["tome-m70"]["macs_ratio"] < 1
    md = (folder / "gpu_tables.md").read_text()
    assert md == gpu_report.to_markdown(result) and "## tiny, eager" in md and "| p46-r1 | 1 |" in md
    profile = (folder / "profile.txt").read_text()
    assert "## tiny p46 batch 1" in profile and "## tiny dense batch 1" in profile and "aten::" in profile
    # the PNG later, where matplotlib is
    pytest.importorskip("matplotlib")
    assert gpu_tables.main(["--replot", str(folder)]) == 0
    assert (folder / "gpu_tables.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_limit_skips_groups_and_says_so(tmp_path, capsys, one_thread):
    rc = gpu_tables.main(["--scale", "tiny", "--device", "cpu", "--out", str(tmp_path), "--time-limit", "0"])
    assert rc == 0
    result = json.loads((tmp_path / "cpu" / "gpu_tables.json").read_text())
    assert result["groups"] == [] and result["skipped"] == ["tiny, eager, batch 1: estimated to cross the time limit"]
    assert "## Not measured" in (tmp_path / "cpu" / "gpu_tables.md").read_text()


def _row(variant, batch, macs_ratio, latency_ratio, mode="graph"):
    eff = None if macs_ratio >= 1 else (1 - latency_ratio) / (1 - macs_ratio)
    return {
        "variant": variant,
        "batch": batch,
        "macs": int(4e9 * macs_ratio),
        "macs_ratio": macs_ratio,
        "latency_ratio": latency_ratio,
        "median_ms": 10 * latency_ratio,
        "p90_ms": 11 * latency_ratio,
        "throughput": batch * 100 / latency_ratio,
        "efficiency": eff,
    }


def test_targets_and_report_of_a_gpu_shaped_result(tmp_path):
    groups = [
        {
            "model": "ViT-L",
            "mode": "graph",
            "batch": 64,
            "bench": {
                "measurements": [
                    _row("dense", 64, 1.0, 1.0),
                    _row("p46", 64, 0.538, 0.60),
                    _row("p46-r1", 64, 0.538, 0.70),
                    _row("vpa-r6", 64, 0.50, 0.52),
                ]
            },
        },  # fmt: skip
        {
            "model": "ViT-L",
            "mode": "graph",
            "batch": 256,
            "bench": {
                "measurements": [
                    _row("dense", 256, 1.0, 1.0),
                    _row("p46", 256, 0.538, 0.57),
                    _row("vpa-r6", 256, 0.50, 0.55),
                ]
            },
        },  # fmt: skip
        {
            "model": "ViT-L",
            "mode": "eager",
            "batch": 1,
            "bench": {"measurements": [_row("p46", 1, 0.538, 0.9, "eager")]},
        },
        {"model": "ViT-L", "mode": "graph", "batch": 1, "bench": {"measurements": [_row("p46", 1, 0.538, 0.7)]}},
    ]
    result = {"groups": groups}
    found = {(t["variant"], t["batch"]): (round(t["value"], 3), t["met"]) for t in gpu_report.targets(result)}
    # p46 at 64: (1 - 0.60) / (1 - 0.538) = 0.866 < 0.90; at 256: 0.93; vpa-r6 cuts 48% (met) and 45% (missed)
    assert found == {
        ("p46", 64): (0.866, False),
        ("p46", 256): (0.931, True),
        ("vpa-r6", 64): (0.48, True),
        ("vpa-r6", 256): (0.45, False),
    }
    result.update(
        targets=gpu_report.targets(result),
        env={
            "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0", "cuda": "13.0"},
            "cpu": "x",
            "versions": {"torch": "2.11.0", "timm": "1.0"},
        },  # fmt: skip
        device_name="NVIDIA H200",
        command="python -m vitcompress.benchmarks.gpu_tables",
        scale={"precision": "fp16", "rounds": 6, "iters": 10, "warmup": 5},
        plan={"cells": 7, "estimate_s": 60.0},
        build_s=30.0,
        seconds=100.0,
        skipped=[],
    )
    md = gpu_report.to_markdown(result)
    assert "ViT-L batch 64: 0.866 MISSED" in md and "ViT-L batch 256: 0.931 met" in md
    assert "- ViT-L, graph, batch 64: aligned 0.600, unaligned 0.700" in md
    assert "- ViT-L p46: eager 9.000, graph 7.000 (0.78x)" in md
    assert "CUDA events on each runner's own stream (launch overhead included, host copies excluded)" in md
    assert gpu_tables.profiles_wanted(result, "auto") == [("ViT-L", "p46", 64), ("ViT-L", "vpa-r6", 256)]
    assert gpu_tables.profiles_wanted(result, "ViT-L/vpa-r6") == [("ViT-L", "vpa-r6", 256)]
    assert gpu_report.slug("NVIDIA H200") == "nvidia-h200"
    pytest.importorskip("matplotlib")
    gpu_report.plot(result, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
