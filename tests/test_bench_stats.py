"""The bench's uncertainty: CI arithmetic against known cases, busy-machine warnings (a spinning
subprocess), ``until_stable``, and partial reports (time limit, Ctrl-C)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import numpy as np
import pytest
from helpers import tiny

import vitcompress
from vitcompress.benchmarks import bench as benchmod
from vitcompress.benchmarks import env as envmod
from vitcompress.benchmarks import gpu_report, report, stats, timing
from vitcompress.benchmarks.bench import BenchConfig, BenchInterrupted, load_variant, run_bench
from vitcompress.benchmarks.report import ratios, to_markdown, with_cis, write_report
from vitcompress.cli import main
from vitcompress.errors import VitCompressError


def _exact_bootstrap_median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap's limit (infinitely many resamples) for the median of an odd number of
    distinct values: the median of a resample of n is its ((n+1)/2)-th order statistic, so
    P(median <= x_(k)) = P(Binomial(n, k/n) >= (n+1)/2)."""
    x, n = sorted(values), len(values)
    half = (n + 1) // 2

    def cdf(k: int) -> float:
        p = k / n
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(half, n + 1))

    a = (1 - level) / 2
    lo = next(x[k - 1] for k in range(1, n + 1) if cdf(k) >= a)
    hi = next(x[k - 1] for k in range(1, n + 1) if cdf(k) >= 1 - a)
    return lo, hi


def test_ci_arithmetic_known_cases():
    # every round gives the same ratio: no uncertainty
    assert stats.bootstrap_ci([0.7] * 5) == (0.7, 0.7)
    # 5 distinct rounds: the exact bootstrap interval is their minimum and maximum
    five = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert _exact_bootstrap_median_ci(five) == (0.5, 0.9)
    assert stats.bootstrap_ci(five) == pytest.approx((0.5, 0.9))
    # 7 rounds: P(median <= x1) = 0.010 < 0.025 < P(median <= x2) = 0.108 and
    # P(median <= x5) = 0.892 < 0.975 < P(median <= x6) = 0.990: the interval is [x2, x6]
    seven = [0.1 * k for k in range(1, 8)]
    assert _exact_bootstrap_median_ci(seven) == pytest.approx((0.2, 0.6))
    assert stats.bootstrap_ci(seven) == pytest.approx((0.2, 0.6))
    # 11 rounds: P(median <= x2) = 0.007, P(<= x3) = 0.051, P(<= x8) = 0.949, P(<= x9) = 0.993: [x3, x9]
    eleven = [0.1 * k for k in range(1, 12)]
    assert _exact_bootstrap_median_ci(eleven) == pytest.approx((0.3, 0.9))
    assert stats.bootstrap_ci(eleven) == pytest.approx((0.3, 0.9))
    # fixed seed: the same samples give the same interval
    rng = np.random.default_rng(3)
    vals = rng.normal(1, 0.05, 12).tolist()
    assert stats.bootstrap_ci(vals) == stats.bootstrap_ci(vals)
    # paired: a machine slowing down in round 2 (every time doubled) changes nothing
    a, b = [[1.0, 1.0], [2.0, 2.0], [1.1, 1.1]], [[2.0, 2.0], [4.0, 4.0], [2.0, 2.0]]
    assert stats.round_ratios(a, b).tolist() == pytest.approx([0.5, 0.5, 0.55])
    assert stats.ratio_ci(a, b) == pytest.approx((0.5, 0.55))
    # speedup and efficiency: the ratio's ends mapped (and swapped where the function decreases)
    r = ratios(460, 1000, 0.5, (0.45, 0.55))
    assert r["latency_ratio_ci95"] == [0.45, 0.55]
    assert r["speedup_ci95"] == pytest.approx([1 / 0.55, 1 / 0.45])
    assert r["efficiency_ci95"] == pytest.approx([0.45 / 0.54, 0.55 / 0.54])
    assert ratios(1000, 1000, 1.0, (1.0, 1.0))["efficiency_ci95"] is None
    assert stats.relative_width(0.5, (0.45, 0.52)) == pytest.approx(0.1)
    assert stats.fmt_ci(0.5, (0.45, 0.55)) == "0.500 [0.450, 0.550]"


def test_busy_arithmetic(monkeypatch):
    monkeypatch.setattr(envmod, "usable_cores", lambda: 4)
    assert not envmod.busy(None, 4)  # nothing known: no claim
    assert not envmod.busy(0.4, 4) and envmod.busy(0.6, 4)  # all 4 cores needed, 0.5 core of slack
    assert not envmod.busy(2.4, 2) and envmod.busy(2.6, 2)  # 2 cores free


def _fake_passes(monkeypatch, times: dict, clock: list | None = None):
    """``timing.time_pass`` returning ``times[variant](round)`` ms (round counted per variant) and,
    with ``clock``, advancing that fake clock by 1 s per pass."""
    count: dict = {}

    def fake(runner):
        name = runner.variant.name
        count[name] = count.get(name, 0) + 1
        if clock is not None:
            clock[0] += 1.0
        return times[name]((count[name] - 1) // ITERS)

    monkeypatch.setattr(timing, "time_pass", fake)
    if clock is not None:
        monkeypatch.setattr(benchmod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))


ITERS = 2


@pytest.fixture(scope="module")
def pair():
    dense = tiny("vit", seed=1)
    pruned = vitcompress.prune(dense, flops_reduction=0.4, importance="l1", round_to=1).model
    return load_variant(dense, "dense", max_batch=2), load_variant(pruned, "pruned", max_batch=2)


def _cfg(**kw):
    base = dict(backends=["torch-cpu"], batches=[1], warmup=0, iters=ITERS, rounds=3, threads=1, check=False)
    return BenchConfig(**{**base, **kw})


def test_rows_carry_cis_flags_and_load(pair, monkeypatch):
    # round ratios 0.6, 0.4, 0.5: a CI of [0.4, 0.6], far wider than +-5%
    _fake_passes(monkeypatch, {"dense": lambda r: 10.0, "pruned": lambda r: [6.0, 4.0, 5.0][r]})
    result = run_bench(list(pair), _cfg())
    dense, pruned = result["measurements"]
    assert dense["latency_ratio_ci95"] == [1.0, 1.0] and dense["efficiency_ci95"] is None
    assert pruned["latency_ratio"] == pytest.approx(0.5)
    assert pruned["latency_ratio_ci95"] == pytest.approx([0.4, 0.6])
    assert pruned["speedup_ci95"] == pytest.approx([1 / 0.6, 1 / 0.4])
    assert "wide-ci" in pruned["flags"] and "wide-ci" not in dense["flags"]
    assert any("pruned: latency ratio 0.500 [0.400, 0.600]" in w and "--until-stable" in w for w in result["warnings"])
    env = result["env"]
    assert {"load_before", "load_after", "governor_before", "governor_after"} <= set(env)
    md = to_markdown(result)
    assert "| 0.500 [0.400, 0.600] |" in md and "wide-ci |" in md and "- warning: torch-cpu batch 1 pruned" in md
    # a report written before the intervals existed gets them from its raw rounds
    old = json.loads(json.dumps(result))
    for m in old["measurements"]:
        for k in ("latency_ratio_ci95", "speedup_ci95", "efficiency_ci95"):
            del m[k]
    assert with_cis(old)["measurements"][1]["latency_ratio_ci95"] == pytest.approx([0.4, 0.6])


def test_until_stable_adds_rounds_or_says_time_is_up(pair, monkeypatch):
    clock = [0.0]
    # two noisy rounds, then steady 0.5: rounds are added until the interval is within +-2%
    _fake_passes(monkeypatch, {"dense": lambda r: 10.0, "pruned": lambda r: {0: 6.0, 1: 4.0}.get(r, 5.0)}, clock=clock)
    result = run_bench(list(pair), _cfg(until_stable=True, max_time=1000))
    (g,) = result["stability"]["groups"]
    assert g["stable"] and g["rounds"] > 3
    pruned = result["measurements"][1]
    assert stats.relative_width(0.5, pruned["latency_ratio_ci95"]) <= stats.STABLE and pruned["rounds"] == g["rounds"]
    assert "every ratio reached it" in to_markdown(result)
    # never steady: the time is up, and the report and a warning say so
    clock[0] = 0.0
    _fake_passes(monkeypatch, {"dense": lambda r: 10.0, "pruned": lambda r: [6.0, 4.0][r % 2]}, clock=clock)
    result = run_bench(list(pair), _cfg(until_stable=True, max_time=40))
    (g,) = result["stability"]["groups"]
    assert not g["stable"] and g["unstable"] == ["pruned"] and g["rounds"] == 10  # 4 passes a round, 40 s
    assert any("time is up after 10 rounds" in w and "--max-time" in w for w in result["warnings"])
    assert "time was up before every ratio reached it" in to_markdown(result)
    with pytest.raises(VitCompressError, match="max_time only bounds until_stable"):
        _cfg(max_time=10).validate()


def test_time_limit_writes_a_partial_report(pair, monkeypatch, tmp_path):
    clock = [0.0]
    _fake_passes(monkeypatch, {"dense": lambda r: 10.0, "pruned": lambda r: 5.0}, clock=clock)
    # 4 passes (4 fake seconds) a round: by 6 s two of batch 1's 3 rounds are done; batch 2 never starts
    result = run_bench(list(pair), _cfg(batches=[1, 2], time_limit=6))
    p = result["partial"]
    assert p["reason"] == "time limit of 6 s reached" and p["measured"] == 1 and p["planned"] == 2
    assert p["missing"] == ["torch-cpu b2"] and p["cut_short"] == ["torch-cpu b1 (2 of 3 rounds)"]
    assert [m["rounds"] for m in result["measurements"]] == [2, 2]
    paths = write_report(result, tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["partial"]["missing"] == ["torch-cpu b2"]
    assert "**Partial report**: time limit of 6 s reached; measured 1 of 2" in paths["md"].read_text()
    # a run that ends in time is not partial
    clock[0] = 0.0
    assert run_bench(list(pair), _cfg(time_limit=100))["partial"] is None


def test_ctrl_c_keeps_what_was_measured(pair, monkeypatch, tmp_path, capsys):
    calls = [0]
    real = timing.time_pass

    def interrupt_in_batch_2(runner):
        calls[0] += 1
        if runner.batch == 2:
            raise KeyboardInterrupt
        return real(runner)

    monkeypatch.setattr(timing, "time_pass", interrupt_in_batch_2)
    with pytest.raises(BenchInterrupted) as e:
        run_bench(list(pair), _cfg(batches=[1, 2]))
    p = e.value.result["partial"]
    assert p["reason"] == "interrupted (Ctrl-C)" and p["missing"] == ["torch-cpu b2"]
    assert [m["batch"] for m in e.value.result["measurements"]] == [1, 1]
    # the command line writes the partial report, then exits 130
    a, b = tmp_path / "dense", tmp_path / "pruned"
    vitcompress.save(pair[0].model, a)
    vitcompress.save(pair[1].model, b)
    argv = ["bench", str(a), str(b), "--backend", "torch-cpu", "--batch", "1,2", "--warmup", "0", "--iters", "2"]
    rc = main([*argv, "--rounds", "2", "--threads", "1", "--report", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 130 and err.strip().splitlines()[-1] == "error: interrupted"
    assert "report (partial): " in out
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["partial"]["reason"] == "interrupted (Ctrl-C)" and len(data["measurements"]) == 2
    assert "**Partial report**: interrupted (Ctrl-C)" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.skipif(envmod._busy_seconds() is None, reason="no /proc/stat: the load check is skipped here")
def test_spinning_processes_make_the_bench_warn(pair, tmp_path, capsys):
    """Other processes spinning on every core: the bench prints `warning:` lines and marks its rows."""
    cores = envmod.usable_cores()
    spin = "import sys\nprint('ready', flush=True)\nwhile True:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True) for _ in range(cores)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        a, b = tmp_path / "dense", tmp_path / "pruned"
        vitcompress.save(pair[0].model, a)
        vitcompress.save(pair[1].model, b)
        rc = main(
            [
                *["bench", str(a), str(b), "--backend", "torch-cpu", "--batch", "1", "--warmup", "1"],
                *["--iters", "3", "--rounds", "3", "--threads", str(cores), "--report", str(tmp_path / "r")],
            ]
        )
    finally:
        for p in procs:
            p.kill()
            p.wait()
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert rc == 0 and any("the machine is busy" in w and "rerun on a quiet machine" in w for w in warnings)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["env"]["others_busy_before"] > cores - 0.5
    assert all("busy" in m["flags"] for m in data["measurements"])
    assert "- warning: the machine is busy" in (tmp_path / "r" / "report.md").read_text()


def test_cli_time_limit_and_refusals(pair, monkeypatch, tmp_path, capsys):
    a, b = tmp_path / "dense", tmp_path / "pruned"
    vitcompress.save(pair[0].model, a)
    vitcompress.save(pair[1].model, b)
    argv = ["bench", str(a), str(b), "--backend", "torch-cpu", "--batch", "1,2", "--warmup", "0", "--iters", "2"]
    for extra, needle in (
        (["--max-time", "5"], "error: --max-time only bounds --until-stable; pass --until-stable or drop --max-time"),
        (["--time-limit", "0"], "error: --time-limit must be in (0, 604800] seconds, got 0.0"),
    ):
        assert main([*argv, *extra, "--report", str(tmp_path / "bad")]) == 2
        assert capsys.readouterr().err.strip() == needle and not (tmp_path / "bad").exists()
    clock = [0.0]
    _fake_passes(monkeypatch, {"dense": lambda r: 10.0, "pruned": lambda r: 5.0}, clock=clock)
    rc = main([*argv, "--rounds", "3", "--time-limit", "6", "--threads", "1", "--report", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: partial report: time limit of 6 s reached; not measured: torch-cpu b2, " in out
    assert "report (partial): " in out
    assert json.loads((tmp_path / "r" / "report.json").read_text())["partial"]["cut_short"] == [
        "torch-cpu b1 (2 of 3 rounds)"
    ]


def test_one_writer_makes_the_report_trio_of_bench_and_gpu_tables(tmp_path, monkeypatch):
    drawn = []
    result = {"measurements": [], "note": "x"}
    for available in (False, True):
        monkeypatch.setattr(report, "matplotlib_available", lambda available=available: available)
        out = tmp_path / f"trio{available}"
        paths = report.write_files(result, out, "r", lambda r: f"md {r['note']}\n", lambda r, p: drawn.append(p))
        assert json.loads((out / "r.json").read_text()) == result and (out / "r.md").read_text() == "md x\n"
        assert paths == {"md": out / "r.md", "json": out / "r.json", "png": out / "r.png" if available else None}
    assert drawn == [tmp_path / "trioTrue" / "r.png"]
    # the benchmark report and the GPU tables are that writer with their own names, markdown and plot
    calls = []
    monkeypatch.setattr(report, "write_files", lambda *a: calls.append(a))
    monkeypatch.setattr(gpu_report, "write_files", lambda *a: calls.append(a))
    report.write_report(result, tmp_path / "a")
    gpu_report.write(result, tmp_path / "b")
    assert [c[2:] for c in calls] == [
        ("report", report.to_markdown, report.plot),
        ("gpu_tables", gpu_report.to_markdown, gpu_report.plot),
    ]
