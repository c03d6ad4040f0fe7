"""The benchmark's GPU-facing behaviour, checked on CPU: CUDA events on the runner's own stream,
``torch.compile`` variants each on one static graph, ``trt`` and ``ort-trt`` built like for like,
``--mode``/``--batch`` reaching the suites."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from helpers import tiny
from stand_ins import use_tensorrt_stand_in

import vitcompress
from vitcompress.benchmarks import suite, timing, tokens_bench
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.benchmarks.runner_ort import OrtTRT
from vitcompress.benchmarks.runner_torch import TorchRunner
from vitcompress.benchmarks.runners import TIMING_CACHE, TRT_OPT_LEVEL, TRT_WORKSPACE_GIB
from vitcompress.exporters import relative_error
from vitcompress.exporters.trt_build import read_sidecar

FAST = dict(warmup=1, iters=2, rounds=2, threads=1)


def test_cuda_timing_records_its_events_on_the_runner_stream(monkeypatch):
    recorded = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 1.5

    class Runner:
        timer, device, stream = "cuda", "cuda", object()

        def infer(self):
            recorded.append("infer")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    r = Runner()
    assert timing.time_pass(r) == 1.5
    assert recorded == [r.stream, "infer", r.stream]  # not the current (legacy default) stream


def _variants(n: int = 3):
    dense = tiny("vit", seed=3)
    models = [dense] + [
        vitcompress.prune(dense, flops_reduction=r, importance="l1", round_to=1).model for r in (0.2, 0.4)[: n - 1]
    ]
    return [load_variant(m, f"v{i}", max_batch=2) for i, m in enumerate(models)]


class Recorder:
    """A torch.compile backend that records every graph Dynamo hands over (static or not) and counts
    the calls of each compiled graph."""

    def __init__(self):
        self.graphs, self.calls = [], []

    def __call__(self, gm, example_inputs):
        symbolic = any(isinstance(a, torch.SymInt) for a in example_inputs) or any(
            isinstance(d, torch.SymInt) for a in example_inputs if isinstance(a, torch.Tensor) for d in a.shape
        )
        index = len(self.graphs)
        self.graphs.append(symbolic)
        self.calls.append(0)

        def run(*args):
            self.calls[index] += 1
            return gm.forward(*args)

        return run


def test_compiled_variants_each_run_one_static_graph(monkeypatch, one_thread):
    # control: compiling the models directly shares VisionTransformer.forward's code object; the second
    # batch size is compiled with dynamic shapes and past 8 entries the calls run eagerly
    control = Recorder()
    models = [v.model for v in _variants()] * 3
    with torch.inference_mode():
        for batch in (1, 2):
            compiled = [torch.compile(copy.deepcopy(m), backend=control) for m in models]
            for c in compiled:
                c(torch.randn(batch, 3, 32, 32))
    assert any(control.graphs) and len(control.graphs) < 2 * len(models)

    # the runner: every variant and batch its own static graph, every timed pass through it
    rec = Recorder()
    monkeypatch.setattr(TorchRunner, "compile_backend", rec)
    passes = []
    real_infer = TorchRunner.infer

    def counted_infer(self):
        before = sum(rec.calls)
        real_infer(self)
        passes.append(sum(rec.calls) - before)

    monkeypatch.setattr(TorchRunner, "infer", counted_infer)
    variants = _variants() * 1
    variants += [load_variant(copy.deepcopy(v.model), v.name + "-again", max_batch=2) for v in variants]
    cfg = BenchConfig(backends=["torch-cpu"], batches=[1, 2], mode="compile", **FAST)
    result = run_bench(variants, cfg)
    assert not result["skipped"] and len(result["measurements"]) == 2 * len(variants)
    assert len(rec.graphs) == 2 * len(variants) and not any(rec.graphs)  # one static graph per runner
    assert passes and set(passes) == {1}  # each pass (activation, warm-up, timed) ran exactly one compiled graph


@pytest.mark.slow
def test_compile_mode_with_inductor_matches_eager(one_thread):
    """The runner's default backend (inductor, on CPU here) on two tiny variants."""
    variants = _variants(2)
    result = run_bench(variants, BenchConfig(backends=["torch-cpu"], batches=[2], mode="compile", **FAST))
    assert not result["skipped"] and all(m["output_finite"] for m in result["measurements"])
    from vitcompress.benchmarks.backends import get_runner

    x = variants[1].example(2, seed=3)
    with torch.inference_mode():
        ref = variants[1].model(torch.from_numpy(x)).numpy()
    with get_runner("torch-cpu")(variants[1], 2, "fp32", threads=1, mode="compile", x=x) as r:
        r.infer()
        assert relative_error(r.output(), ref)[1] < 1e-4


@pytest.mark.export
def test_trt_and_ort_trt_are_built_like_for_like(monkeypatch, tmp_path, one_thread):
    trt = use_tensorrt_stand_in(monkeypatch)
    work = tmp_path / "work"
    variants = [load_variant(v.model, v.name, workdir=work, max_batch=4) for v in _variants(2)]
    cfg = BenchConfig(backends=["trt"], batches=[1, 4], **FAST)
    result = run_bench(variants, cfg)
    assert not result["skipped"], result["skipped"]
    assert {(m["variant"], m["batch"]) for m in result["measurements"]} == {
        (v, b) for v in ("v0", "v1") for b in (1, 4)
    }
    # one engine per measured batch, OPT = MAX = that batch, all sharing the run's one timing cache
    for v in variants:
        for b in (1, 4):
            side = read_sidecar(work / v.name / f"model-fp32-b{b}.engine")
            assert side["profile"]["opt"][0] == side["profile"]["max"][0] == b and side["profile"]["min"][0] == 1
            assert side["build"]["workspace_gib"] == TRT_WORKSPACE_GIB and side["build"]["opt_level"] == TRT_OPT_LEVEL
            assert side["build"]["timing_cache"] == str(work / TIMING_CACHE)
    cache = (work / TIMING_CACHE).read_bytes()
    assert len(json.loads(cache.split(b"\n", 1)[1])["entries"]) == 4  # every build read and extended the same cache
    creates = [args[0] for name, args in trt.CALLS if name == "IBuilderConfig.create_timing_cache"]
    assert creates[0] == 0 and all(n > 0 for n in creates[1:])
    # the TensorRT execution provider of ONNX Runtime gets the same profile and settings
    runner = OrtTRT(variants[0], 4, "fp32", threads=1)
    runner.onnx_path = variants[0].onnx("fp32")
    trt_ep, cuda_ep = runner._provider_list()
    opts = trt_ep[1]
    assert trt_ep[0] == "TensorrtExecutionProvider" and cuda_ep == "CUDAExecutionProvider"
    assert opts["trt_profile_min_shapes"] == "pixel_values:1x3x32x32"
    assert opts["trt_profile_opt_shapes"] == opts["trt_profile_max_shapes"] == "pixel_values:4x3x32x32"
    assert opts["trt_max_workspace_size"] == int(TRT_WORKSPACE_GIB * (1 << 30))
    assert opts["trt_builder_optimization_level"] == TRT_OPT_LEVEL
    assert opts["trt_timing_cache_enable"] and opts["trt_timing_cache_path"] == str(work)


@pytest.mark.export
def test_trt_runner_matches_pytorch_through_the_stand_in(monkeypatch, one_thread):
    use_tensorrt_stand_in(monkeypatch, "11.1.0")
    from vitcompress.benchmarks.backends import get_runner
    from vitcompress.exporters import tolerance

    v = _variants(2)[1]
    x = v.example(3, seed=5)
    with torch.no_grad():
        ref = v.model(torch.from_numpy(x)).numpy()
    with get_runner("trt")(v, 3, "fp32", threads=1, x=x) as r:
        assert r.timer == "wall" and r.device == "cpu" and r.stream is r.engine.stream  # host memory: no CUDA
        r.infer()
        out = r.output()
    assert relative_error(out, ref)[1] <= tolerance("fp32", "cpu")


def test_suite_mode_reaches_the_config(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(suite, "build_variants", lambda names, *a, **k: _variants(2))
    rc = suite.main(["--backend", "torch-cpu", "--batch", "1", "--mode", "graph", "--report", str(tmp_path / "r")])
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rc == 0 and data["config"]["mode"] == "graph" and data["suite"]["mode"] == "graph"
    assert data["skipped"] == [{"backend": "torch-cpu", "reason": "CUDA-graph replay needs a CUDA device"}]


def test_tokens_bench_takes_mode_and_batch(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(variants, cfg, progress=False):
        seen.update(batches=cfg.batches, mode=cfg.mode, backends=cfg.backends, max_batch=variants[0].max_batch)
        return run_bench(variants, BenchConfig(backends=["torch-cpu"], batches=[1], **FAST))

    monkeypatch.setattr(
        tokens_bench, "gpu_variants", lambda max_batch: [load_variant(tiny("vit"), "v", max_batch=max_batch)]
    )
    monkeypatch.setattr(tokens_bench, "run_bench", fake_run)
    rc = tokens_bench.main(["--gpu", "--batch", "1,256", "--mode", "graph", "--report", str(tmp_path)])
    assert rc == 0 and seen == {
        "batches": [1, 256],
        "mode": "graph",
        "backends": ["torch-cuda", "ort-cuda"],
        "max_batch": 256,
    }
    assert (tmp_path / "vitl_gpu" / "report.json").is_file()
    assert (
        tokens_bench.main(["--gpu", "--batch", "x"]) == 2
        and "--batch must be comma-separated" in capsys.readouterr().err
    )
    assert np.isfinite(json.loads((tmp_path / "vitl_gpu" / "report.json").read_text())["measurements"][0]["median_ms"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["eager", "graph", "compile"])
def test_torch_cuda_runner_enqueues_on_its_own_stream(mode):
    from vitcompress.benchmarks.backends import get_runner
    from vitcompress.exporters import tolerance

    v = _variants(2)[1]
    x = v.example(2, seed=1)
    with torch.no_grad():
        ref = v.model(torch.from_numpy(x)).numpy()
    with get_runner("torch-cuda")(v, 2, "fp32", mode=mode, x=x) as r:
        assert r.stream is not None and r.stream.cuda_stream not in (0, torch.cuda.current_stream().cuda_stream)
        timing.time_pass(r)
        assert relative_error(r.output(), ref)[1] <= tolerance("fp32", "cuda")
