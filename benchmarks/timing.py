"""The timing method: warm-up, many timed iterations, variants interleaved in rounds.

For one backend and batch size, every variant's runner is activated first (input already on the
device). Each variant then gets ``warmup`` untimed passes. Timing runs in ``rounds``; in each
round the variants take turns (A, B, C, A, B, C, ...), each running ``iters`` timed passes, so all
variants see the same machine state and ratios come from paired rounds.

One timed pass: CUDA runners record a CUDA event before and after ``infer`` on the runner's own
stream and wait for the end event. The start event is enqueued before ``infer`` launches anything,
so the time between the two events includes the host's launch work whenever the device waits for it
(kernel launch overhead, Python dispatch of an eager model), and excludes host-device copies (the
input is already on the device, the output stays there). CPU and synchronous runners read
``time.perf_counter_ns`` (monotonic) around ``infer``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def time_pass(runner) -> float:
    """Milliseconds of one forward pass of an activated runner."""
    if runner.timer == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(runner.stream)
        runner.infer()
        end.record(runner.stream)
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter_ns()
    runner.infer()
    if runner.device == "cuda":
        runner.synchronize()
    return (time.perf_counter_ns() - t0) / 1e6


def measure(
    runners: dict,
    warmup: int = 5,
    iters: int = 10,
    rounds: int = 5,
    tick: Callable[[], None] | None = None,
    stop: Callable[[], bool] | None = None,
    into: dict | None = None,
) -> dict:
    """Interleaved measurement of activated runners (name -> runner).

    Returns name -> list of ``rounds`` lists of ``iters`` samples in milliseconds. ``tick`` is
    called after every variant-round (progress bars). ``stop`` is asked before every round: True
    ends the measurement early. Rounds are appended to ``into`` (name -> list) when given, so a
    caller keeps the rounds finished before an interruption; a round is appended only once every
    variant has run it.
    """
    for r in runners.values():
        for _ in range(warmup):
            r.infer()
        r.synchronize()
    samples = into if into is not None else {}
    for name in runners:
        samples.setdefault(name, [])
    for _ in range(rounds):
        if stop is not None and stop():
            break
        rnd = {}
        for name, r in runners.items():
            rnd[name] = [time_pass(r) for _ in range(iters)]
            if tick:
                tick()
        for name, s in rnd.items():
            samples[name].append(s)
    return samples


def summarize(rounds_ms: list, batch: int) -> dict:
    """Median / p90 / p99 / mean / min latency (ms) over all samples, and throughput (images/s)."""
    flat = np.asarray([s for r in rounds_ms for s in r], dtype=np.float64)
    med = float(np.median(flat))
    return {
        "median_ms": med,
        "p90_ms": float(np.percentile(flat, 90)),
        "p99_ms": float(np.percentile(flat, 99)),
        "mean_ms": float(flat.mean()),
        "min_ms": float(flat.min()),
        "n": int(flat.size),
        "throughput": batch * 1000.0 / med,
    }


def paired_ratio(rounds_ms: list, base_rounds_ms: list) -> float:
    """Latency ratio from paired rounds: the median over rounds of (round median / baseline round median)."""
    return float(
        statistics.median(float(np.median(a)) / float(np.median(b)) for a, b in zip(rounds_ms, base_rounds_ms))
    )
