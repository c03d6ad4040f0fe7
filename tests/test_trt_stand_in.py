"""TensorRT paths run end to end through the scripted stand-in for TensorRT 10 and 11
(``tests/stand_ins/tensorrt``): engine building (network flags, parser errors, optimisation profiles
with shape inputs, memory pool, timing cache, serialisation), loading (version and GPU checks,
deserialisation), running (tensor addresses, ``set_input_shape``, ``execute_async_v3`` on the
runner's own stream) and the engine parity check, with real numbers from ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny
from onnx import TensorProto, helper, numpy_helper
from stand_ins import TRT_VERSIONS, use_tensorrt_stand_in

from vitcompress.errors import VitCompressError
from vitcompress.exporters import BuildConfig, TrtEngine, build_engine, check_tensorrt, export_onnx, trt_runner
from vitcompress.exporters.export import export
from vitcompress.exporters.runtime_keep import KEEP_INPUT
from vitcompress.exporters.trt_build import read_sidecar, sidecar_path
from vitcompress.tokens import apply_tokens

pytestmark = pytest.mark.export  # every case exports or builds from an ONNX file: `make test-slow`


@pytest.fixture(params=TRT_VERSIONS)
def trt(request, monkeypatch):
    return use_tensorrt_stand_in(monkeypatch, request.param)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A dynamic-batch, dynamic-size fp32 export (position embeddings resampled with MatMuls)."""
    d = tmp_path_factory.mktemp("onnx")
    return export_onnx(tiny("vit"), d / "m.onnx", batch=(1, 2, 4), dynamic_size=True, img_size=(16, 32, 48)).path


def _names(trt, prefix=""):
    return [name for name, _ in trt.CALLS if name.startswith(prefix)]


def test_build_calls_the_documented_api_in_order(trt, onnx_file, tmp_path):
    cache = tmp_path / "timing.cache"
    side = build_engine(onnx_file, tmp_path / "m.engine", BuildConfig.make("1:2:4", "16:32:48", timing_cache=cache))
    build = _names(trt)[: _names(trt).index("ITimingCache.serialize") + 1]
    assert build == [
        "Logger",
        "Builder",
        "Builder.create_network",
        "OnnxParser",
        "OnnxParser.parse_from_file",
        "Builder.create_builder_config",
        "IBuilderConfig.set_memory_pool_limit",
        "IBuilderConfig.builder_optimization_level",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache",
        "Builder.create_optimization_profile",
        "IOptimizationProfile.set_shape",
        "IBuilderConfig.add_optimization_profile",
        "Builder.build_serialized_network",
        "IBuilderConfig.get_timing_cache",
        "ITimingCache.serialize",
    ]
    calls = dict(trt.CALLS)
    assert calls["Builder.create_network"] == (0,)  # no EXPLICIT_BATCH (10: ignored, 11: gone), no deprecated flag
    assert calls["IBuilderConfig.set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 4 << 30)
    assert calls["IOptimizationProfile.set_shape"] == ("pixel_values", (1, 3, 16, 16), (2, 3, 32, 32), (4, 3, 48, 48))
    assert calls["IBuilderConfig.set_timing_cache"][1] is False
    # the timing cache is written, and read again by the next build (one cache for many builds)
    first = cache.read_bytes()
    build_engine(onnx_file, tmp_path / "n.engine", BuildConfig.make("1:4:4", "32", timing_cache=cache))
    assert calls["IBuilderConfig.create_timing_cache"] == (0,)
    assert dict(trt.CALLS[-20:])["IBuilderConfig.create_timing_cache"] == (len(first),)
    assert len(json.loads(cache.read_bytes().split(b"\n", 1)[1])) == 2
    # the sidecar says what loading needs
    assert side == read_sidecar(tmp_path / "m.engine")
    assert side["tensorrt_version"] == trt.__version__ and side["strongly_typed"] is (trt.MAJOR >= 11)
    assert side["compute_capability"] is None  # built without CUDA
    assert side["profile"]["max"] == [4, 3, 48, 48]


def test_fp16_builder_flag_on_10_and_strong_typing_on_11(trt, onnx_file, tmp_path):
    if trt.MAJOR == 10:
        build_engine(onnx_file, tmp_path / "h.engine", BuildConfig.make("1:2:4", "16:32:48", "fp16"))
        assert ("IBuilderConfig.set_flag", (trt.BuilderFlag.FP16,)) in trt.CALLS
    else:
        assert not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 removed the precision flags
        with pytest.raises(VitCompressError, match="strongly typed networks: an fp16 engine needs an fp16 ONNX"):
            build_engine(onnx_file, tmp_path / "h.engine", BuildConfig.make("1:2:4", "16:32:48", "fp16"))
        assert not (tmp_path / "h.engine").exists()
    assert not [c for c in trt.CALLS if c[0] == "IBuilderConfig.set_flag" and trt.MAJOR >= 11]


@pytest.mark.parametrize("version, precision", [("10.16.1", "fp32"), ("11.1.0", "fp16")])
def test_export_trt_end_to_end(version, precision, tmp_path, monkeypatch):
    trt = use_tensorrt_stand_in(monkeypatch, version)
    run = export(
        tiny("vit"),
        tmp_path / "m.onnx",
        batch="1:4:8",
        dynamic_size=True,
        img_size="16:32:48",
        precision=precision,
        trt=True,
        timing_cache=str(tmp_path / "cache"),
    )
    assert run.engine.is_file() and sidecar_path(run.engine).is_file() and (tmp_path / "cache").is_file()
    assert run.sidecar["tensorrt_version"] == trt.__version__ and run.sidecar["precision"] == precision
    assert run.sidecar["strongly_typed"] is (trt.MAJOR >= 11)
    assert run.compat.ok and not run.compat.issues
    # the graph TensorRT parsed resamples as timm does, with MatMuls (no Resize: cubic and antialias
    # are not in onnx-tensorrt's operators.md)
    assert not [n for n in onnx.load(str(run.onnx.path)).graph.node if n.op_type == "Resize"]
    assert run.onnx.metadata["export"]["pos_embed_resampling"] == "bicubic, antialias (separable MatMul)"
    assert run.engine_parity.ok and {(c.batch, c.img_size) for c in run.engine_parity.cases} == {
        (1, 32),
        (4, 32),
        (8, 32),
        (1, 16),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.engine", "m.engine.json", "m.onnx"]


def test_parser_refuses_antialiasing_as_the_check_does(trt, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="aa", mode="cubic", antialias=1)
    path = tmp_path / "aa.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y], [scales])), path)
    rep = check_tensorrt(path, {"x": [4, 3, 8, 8]})
    assert ("Resize", "error") in [(i.op, i.severity) for i in rep.issues] and "antialias=1" in rep.errors[0].message
    with pytest.raises(VitCompressError, match="Antialiasing is not supported currently") as e:
        build_engine(path, tmp_path / "aa.engine", BuildConfig.make("1:2:4"))
    assert len(str(e.value).splitlines()) == 1 and "node 'aa' (Resize)" in str(e.value)
    assert not (tmp_path / "aa.engine").exists()


def _keep_graph(float_keep: bool):
    """TopK over x [b, 50] with K = ceil(keep * 50): from a float keep rate, or from an int64 per-mille."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 50])
    keep = helper.make_tensor_value_info("keep", TensorProto.FLOAT if float_keep else TensorProto.INT64, [1])
    c = lambda name, v, t=np.int64: numpy_helper.from_array(np.array(v, dtype=t), name)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "one"], ["n"])]
    if float_keep:
        nodes += [
            helper.make_node("Mul", ["keep", "thousand_f"], ["a_f"]),
            helper.make_node("Cast", ["a_f"], ["a"], to=TensorProto.INT64),
        ]
    else:
        nodes += [helper.make_node("Identity", ["keep"], ["a"])]
    nodes += [
        helper.make_node("Mul", ["a", "n"], ["an"]),
        helper.make_node("Add", ["an", "c999"], ["an9"]),
        helper.make_node("Div", ["an9", "thousand"], ["k"]),
        helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk_keep", axis=1),
    ]
    inits = [c("one", [1]), c("c999", [999]), c("thousand", [1000]), c("thousand_f", [1000.0], np.float32)]
    g = helper.make_graph(nodes, "g", [x, keep], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_topk_k_driven_by_a_float_is_a_lint_warning_not_a_parse_error(trt, tmp_path):
    """TensorRT's parser has no rule against a K computed from a float: the stand-in parses it, the
    lint warns (K then hangs on float rounding). Only the integer input is a shape-tensor input."""
    for float_keep in (True, False):
        model = _keep_graph(float_keep)
        rep = check_tensorrt(model, {"x": [4, 50]}, {"keep": [1.0 if float_keep else 1000]})
        path = tmp_path / f"k{int(float_keep)}.onnx"
        onnx.save(model, path)
        network = trt.Builder(trt.Logger()).create_network(0)
        parser = trt.OnnxParser(network, trt.Logger())
        assert parser.parse_from_file(str(path)) and parser.num_errors == 0
        assert [t.is_shape_tensor for t in network.inputs] == [False, not float_keep]
        if float_keep:
            assert rep.ok and [(i.node, i.severity) for i in rep.issues] == [("topk_keep", "warning")]
            assert "floating-point tensor 'a_f'" in rep.issues[0].message
        else:
            assert rep.ok and not rep.issues


@pytest.fixture(scope="module")
def runtime_keep_onnx(tmp_path_factory):
    model = apply_tokens(tiny("vit", depth=3), "0.7@1,2", method="topk-vpa")
    d = tmp_path_factory.mktemp("rk")
    res = export_onnx(model, d / "rk.onnx", batch=(1, 2, 4), runtime_keep=True)
    return model, res


def test_runtime_keep_engine_takes_the_rate_as_a_host_shape_input(trt, runtime_keep_onnx, tmp_path):
    model, res = runtime_keep_onnx
    side = build_engine(res.path, tmp_path / "rk.engine", BuildConfig.make("1:2:4"))
    assert ("IOptimizationProfile.set_shape_input", (KEEP_INPUT, [1], [700], [1000])) in trt.CALLS
    assert side["profile"][KEEP_INPUT] == {"min": 1, "opt": 700, "max": 1000}
    rep = trt_runner.engine_parity(tmp_path / "rk.engine", res.path, [(1, 32), (4, 32)], keeps=[0.7, 0.3])
    assert rep.ok and {(c.batch, c.keep) for c in rep.cases} == {(1, 0.7), (1, 0.3), (4, 0.7), (4, 0.3)}
    engine = TrtEngine(tmp_path / "rk.engine")
    assert engine.host_inputs == {KEEP_INPUT}
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    low, high = engine(x, {KEEP_INPUT: np.array([300])}), engine(x, {KEEP_INPUT: np.array([1000])})
    assert np.abs(low - high).max() > 1e-3  # the input drives the engine
    with pytest.raises(VitCompressError, match="needs a value for its input 'keep_permille'"):
        engine(x)
    # a narrower keep profile at build time: a rate outside it is one line naming the profile
    build_engine(res.path, tmp_path / "n.engine", BuildConfig.make("1:2:4", keep_permille="500:700:800"))
    narrow = TrtEngine(tmp_path / "n.engine")
    with pytest.raises(
        VitCompressError, match=r"'keep_permille' = \[900\] is outside optimisation profile 0.*500..800"
    ):
        narrow(x, {KEEP_INPUT: np.array([900])})


def test_input_outside_the_profile_names_profile_and_shape(trt, onnx_file, tmp_path):
    build_engine(onnx_file, tmp_path / "m.engine", BuildConfig.make("1:2:4", "16:32:48"))
    engine = TrtEngine(tmp_path / "m.engine")
    with pytest.raises(VitCompressError) as e:
        engine(np.zeros((8, 3, 32, 32), np.float32))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "(8, 3, 32, 32)" in msg and "outside optimisation profile 0" in msg
    assert "min (1, 3, 16, 16), opt (2, 3, 32, 32), max (4, 3, 48, 48)" in msg
    assert ("IExecutionContext.set_input_shape", ("pixel_values", (8, 3, 32, 32))) in trt.CALLS
    assert not _names(trt, "IExecutionContext.execute_async_v3")  # nothing ran


def test_engine_from_another_tensorrt_or_gpu_is_one_line(trt, onnx_file, tmp_path, monkeypatch):
    engine_path = tmp_path / "m.engine"
    build_engine(onnx_file, engine_path, BuildConfig.make("1:2:4", "16:32:48"))
    side = read_sidecar(engine_path)
    # the sidecar says another TensorRT built it: refused before deserialisation, naming both versions
    sidecar_path(engine_path).write_text(json.dumps({**side, "tensorrt_version": "9.9.9"}))
    with pytest.raises(VitCompressError) as e:
        TrtEngine(engine_path)
    assert "built with TensorRT 9.9.9 and this machine has TensorRT " + trt.__version__ in str(e.value)
    assert len(str(e.value).splitlines()) == 1 and not _names(trt, "Runtime.deserialize_cuda_engine")
    # another GPU architecture
    sidecar_path(engine_path).write_text(json.dumps({**side, "compute_capability": "8.0", "gpu": "A100"}))
    monkeypatch.setattr(trt_runner, "compute_capability", lambda device: "9.0")
    monkeypatch.setattr(trt_runner, "gpu_name", lambda device: "NVIDIA H100")
    with pytest.raises(
        VitCompressError, match=r"built for compute capability 8.0 \(A100\) and this GPU \(NVIDIA H100\)"
    ):
        TrtEngine(engine_path)
    # the sidecar says nothing wrong, but TensorRT cannot deserialise it: None is one line too
    monkeypatch.setattr(trt_runner, "compute_capability", lambda device: None)
    sidecar_path(engine_path).write_text(json.dumps(side))
    engine_path.write_bytes(b"not an engine")
    with pytest.raises(VitCompressError, match=f"TensorRT {trt.__version__} cannot load engine") as e:
        TrtEngine(engine_path)
    assert "rebuild it here" in str(e.value) and _names(trt, "Runtime.deserialize_cuda_engine")


def test_each_engine_runs_on_its_own_stream(trt, onnx_file, tmp_path):
    build_engine(onnx_file, tmp_path / "m.engine", BuildConfig.make("1:2:4", "16:32:48"))
    a, b = TrtEngine(tmp_path / "m.engine"), TrtEngine(tmp_path / "m.engine")
    x = np.ones((2, 3, 32, 32), np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    handles = [args[0] for name, args in trt.CALLS if name == "IExecutionContext.execute_async_v3"]
    assert handles == [a.stream_handle, b.stream_handle] and a.stream_handle != b.stream_handle and 0 not in handles
    assert not [m for m in a.logger.messages + b.logger.messages if "default stream" in m[1]]


def test_runner_reads_and_writes_the_bound_buffers(trt, onnx_file, tmp_path):
    """The stand-in reads inputs from the addresses it is given and writes outputs there: the
    runner's buffers really carry the data (a stale or wrong binding changes the result)."""
    from vitcompress.exporters.parity import ort_session

    build_engine(onnx_file, tmp_path / "m.engine", BuildConfig.make("1:2:4", "16:32:48"))
    engine = TrtEngine(tmp_path / "m.engine")
    sess = ort_session(str(onnx_file))
    for batch, side in [(1, 16), (4, 48), (2, 32)]:
        x = np.random.default_rng(batch).standard_normal((batch, 3, side, side)).astype(np.float32)
        ref = sess.run(None, {"pixel_values": x})[0]
        np.testing.assert_array_equal(engine(torch.from_numpy(x)), ref)
        assert engine.outputs[0].shape == (batch, 10)


def test_cli_runtime_keep_engine(tmp_path, monkeypatch, capsys):
    """`vitcompress export --runtime-keep --trt --keep-permille`: a token-reduced artifact to an engine
    whose keep_permille ranges over the given profile."""
    import vitcompress
    from vitcompress.cli import main

    use_tensorrt_stand_in(monkeypatch, TRT_VERSIONS[-1])
    art = vitcompress.save(apply_tokens(tiny("vit", depth=3), "0.6@1", method="evit"), tmp_path / "art")
    out = tmp_path / "e.onnx"
    args = ["export", str(art), "-o", str(out), "--batch", "1:2:4", "--dynamic-size", "--img-size", "16:32:48"]
    code = main([*args, "--runtime-keep", "--trt", "--keep-permille", "300:600:900"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    side = read_sidecar(tmp_path / "e.engine")
    assert side["profile"][KEEP_INPUT] == {"min": 300, "opt": 600, "max": 900}
    assert "keep 0.600" in stdout and "keep 0.500" in stdout and "TensorRT engine vs ONNX Runtime" in stdout


def test_stand_in_refuses_what_the_bindings_refuse(trt, onnx_file, tmp_path):
    """The stand-in is strict where TensorRT is: argument types, call order, build requirements."""
    build_engine(onnx_file, tmp_path / "m.engine", BuildConfig.make("1:2:4", "16:32:48"))
    engine = TrtEngine(tmp_path / "m.engine")
    ctx = engine.engine.create_execution_context()
    for call in (
        lambda: ctx.set_tensor_address("pixel_values", 1.5),
        lambda: ctx.execute_async_v3("stream"),
        lambda: ctx.set_input_shape("pixel_values", "2x3x32x32"),
        lambda: trt.Runtime(trt.Logger()).deserialize_cuda_engine("engine"),
    ):
        with pytest.raises(TypeError, match="incompatible function arguments"):
            call()
    # enqueueing before the shapes and addresses are set fails, with TensorRT's log line
    assert ctx.execute_async_v3(engine.stream_handle) is False
    assert "address not set" in engine.logger.messages[-1][1]
    # on the default stream it runs, with TensorRT's warning
    x = torch.zeros(2, 3, 32, 32)
    assert ctx.set_input_shape("pixel_values", (2, 3, 32, 32))
    out = torch.empty(2, 10)
    ctx.set_tensor_address("pixel_values", x.data_ptr())
    ctx.set_tensor_address("logits", out.data_ptr())
    assert ctx.execute_async_v3(0) and "default stream" in engine.logger.messages[-1][1]
    # a dynamic input without an optimisation profile does not build
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_file))
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None
    assert "no optimization profile" in logger.messages[-1][1]


def test_runner_sets_shape_input_values_before_reading_output_shapes(trt, runtime_keep_onnx, tmp_path):
    """NvInferRuntime.h: every input shape and the value (host address) of every shape-inference input
    before an output's shape; the runner checks ``infer_shapes()`` names nothing missing in between."""
    _, res = runtime_keep_onnx
    build_engine(res.path, tmp_path / "rk.engine", BuildConfig.make("1:2:4"))
    engine = TrtEngine(tmp_path / "rk.engine")
    ctx = engine.engine.create_execution_context()
    # the stand-in refuses an output shape before the shape input's value, as TensorRT does
    assert ctx.set_input_shape("pixel_values", (2, 3, 32, 32)) and ctx.set_input_shape(KEEP_INPUT, (1,))
    assert ctx.infer_shapes() == [KEEP_INPUT] and tuple(ctx.get_tensor_shape("logits")) == (-1, -1)
    assert "must be set before an output's shape is read" in engine.logger.messages[-1][1]
    keep = torch.tensor([700], dtype=torch.int64)
    assert ctx.set_tensor_address(KEEP_INPUT, keep.data_ptr())
    assert ctx.infer_shapes() == [] and tuple(ctx.get_tensor_shape("logits")) == (2, 10)
    # the runner's order
    del trt.CALLS[:]
    out = engine(np.zeros((2, 3, 32, 32), np.float32), {KEEP_INPUT: np.array([700])})
    assert out.shape == (2, 10)
    order = [(n, a[0] if a else None) for n, a in trt.CALLS if n.startswith("IExecutionContext.")]
    assert order == [
        ("IExecutionContext.set_input_shape", "pixel_values"),
        ("IExecutionContext.set_input_shape", KEEP_INPUT),
        ("IExecutionContext.set_tensor_address", KEEP_INPUT),
        ("IExecutionContext.infer_shapes", None),
        ("IExecutionContext.get_tensor_shape", "logits"),
        ("IExecutionContext.set_tensor_address", "pixel_values"),
        ("IExecutionContext.set_tensor_address", "logits"),
        ("IExecutionContext.execute_async_v3", engine.stream_handle),
    ]


def test_timing_cache_of_another_device_is_replaced_not_ignored(trt, onnx_file, tmp_path, monkeypatch):
    """``set_timing_cache`` returns False for a cache of another GPU or TensorRT version: the build
    warns, starts a fresh cache and writes it back (the config would otherwise hold none, and
    ``get_timing_cache()`` would be None)."""
    cache = tmp_path / "timing.cache"
    monkeypatch.setattr(trt, "DEVICE", "another GPU")
    build_engine(onnx_file, tmp_path / "a.engine", BuildConfig.make("1:2:4", "16:32:48", timing_cache=cache))
    assert b"another GPU" in cache.read_bytes()
    monkeypatch.setattr(trt, "DEVICE", "stand-in GPU")
    logs = []
    monkeypatch.setattr(trt.Logger, "log", lambda self, sev, msg: logs.append((sev, msg)))
    build_engine(onnx_file, tmp_path / "b.engine", BuildConfig.make("1:2:4", "16:32:48", timing_cache=cache))
    results = [n for n, _ in trt.CALLS if n == "IBuilderConfig.set_timing_cache"]
    assert len(results) == 3  # first build: 1; second: refused, then the fresh one
    assert [m for s, m in logs if "is from another GPU or TensorRT version; starting a new one" in m]
    data = json.loads(cache.read_bytes().split(b"\n", 1)[1])
    assert data["owner"] == f"{trt.__version__} on stand-in GPU" and len(data["entries"]) == 1
    # a config that never had a cache set gives None, not an empty cache
    assert trt.Builder(trt.Logger()).create_builder_config().get_timing_cache() is None


def test_shape_input_profile_needs_one_value_per_element(trt, runtime_keep_onnx):
    _, res = runtime_keep_onnx
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(res.path))
    assert [t.is_shape_tensor for t in network.inputs] == [False, True]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("pixel_values", (1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))
    profile.set_shape_input(KEEP_INPUT, [1, 1], [500, 500], [1000, 1000])
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is None
    assert "gives 2 values for a shape tensor of 1 element(s)" in logger.messages[-1][1]
