"""TensorRT: the CPU compatibility check on planted graphs, the pure-Python engine-build parts
(profiles, sidecar, dtype mapping), and real engines where TensorRT and CUDA are present."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vitcompress.errors import VitCompressError
from vitcompress.exporters import check_tensorrt, parse_profile, tensorrt_available
from vitcompress.exporters.trt_build import (
    INSTALL_HINT,
    BuildConfig,
    profile_shapes,
    read_sidecar,
    require_tensorrt,
    sidecar,
    sidecar_path,
    trt_major,
)
from vitcompress.exporters.trt_runner import parity_inputs, torch_dtype


def _graph(nodes, inputs, inits=(), opset=20):
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", inputs, [out], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _by_node(report):
    return {i.node: i for i in report.issues}


def test_flags_unsupported_op_topk_limits_and_scatter_reduction():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5000])
    k_big = numpy_helper.from_array(np.array([4000], dtype=np.int64), "k_big")
    k_ok = numpy_helper.from_array(np.array([100], dtype=np.int64), "k_ok")
    idx = numpy_helper.from_array(np.zeros((1, 4), dtype=np.int64), "idx")
    upd = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "upd")
    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="planted_unique"),
        helper.make_node("TopK", ["x", "k_big"], ["v1", "i1"], name="topk_big", axis=1),
        helper.make_node("TopK", ["x", "k_ok"], ["v2", "i2"], name="topk_ok", axis=1),
        helper.make_node("TopK", ["x", "k_ok"], ["v3", "i3"], name="topk_unsorted", axis=1, sorted=0),
        helper.make_node("ScatterElements", ["x", "idx", "upd"], ["s1"], name="scatter_add", reduction="add"),
        helper.make_node("ScatterElements", ["x", "idx", "upd"], ["s2"], name="scatter_plain"),
        helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("MyOp", ["x"], ["c"], name="custom", domain="com.example"),
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
    ]
    rep = check_tensorrt(_graph(nodes, [x], [k_big, k_ok, idx, upd]))
    found = _by_node(rep)
    assert not rep.ok
    assert set(found) == {"planted_unique", "topk_big", "topk_unsorted", "scatter_add", "to_double", "custom"}
    assert "not supported" in found["planted_unique"].message
    assert "4000" in found["topk_big"].message and "3840" in found["topk_big"].message
    assert "sorted=0" in found["topk_unsorted"].message
    assert "add" in found["scatter_add"].message
    assert all(i.severity == "error" for i in rep.issues)
    assert "planted_unique" in rep.format() and json.dumps(rep.to_dict())


def test_dynamic_topk_k_is_evaluated_at_the_largest_profile_shape():
    # K = (tokens * 7) // 10, computed from the runtime shape, as token pruning exports it
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    c = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["n"], name="gather_n", axis=0),
        helper.make_node("Mul", ["n", "seven"], ["n7"], name="mul"),
        helper.make_node("Div", ["n7", "ten"], ["k"], name="div"),
        helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk_dyn", axis=1),
    ]
    model = _graph(nodes, [x], [c("one", [1]), c("seven", [7]), c("ten", [10])])
    small = check_tensorrt(model, {"x": [4, 5000]})  # K = 3500
    assert small.ok and not small.issues
    big = check_tensorrt(model, {"x": [4, 6000]})  # K = 4200
    assert [i.node for i in big.errors] == ["topk_dyn"] and "4200" in big.errors[0].message


@pytest.mark.export
def test_exported_vit_is_clean(tmp_path):
    from helpers import tiny

    from vitcompress.exporters import export_onnx

    res = export_onnx(tiny("vit"), tmp_path / "m.onnx", batch=(1, 2, 4), check=False)
    rep = check_tensorrt(res.path, {"pixel_values": [4, 3, 32, 32]})
    assert rep.ok and rep.nodes == res.nodes_after
    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert {"MatMul", "Softmax"} <= ops  # the attention pattern TensorRT fuses


# ------------------------------------------------------------------ engine-building logic on CPU
def test_profile_parsing():
    assert parse_profile("1:8:32").as_tuple() == (1, 8, 32)
    assert parse_profile(4).as_tuple() == (4, 4, 4)
    assert str(parse_profile((2, 2, 5))) == "2:2:5"
    for bad, msg in [("8:2:16", "impossible"), ("0:1:2", "MIN < 1"), ("1:2", "1 or 3"), ("x", "integers")]:
        with pytest.raises(VitCompressError, match=msg):
            parse_profile(bad)


def test_profile_shapes_dynamic_and_static():
    cfg = BuildConfig.make("1:8:32", "160:224:320", "fp16", 2, 4)
    assert profile_shapes([None, 3, None, None], cfg) == ((1, 3, 160, 160), (8, 3, 224, 224), (32, 3, 320, 320))
    static = BuildConfig.make("2:4:8")
    assert profile_shapes([-1, 3, 224, 224], static) == ((2, 3, 224, 224), (4, 3, 224, 224), (8, 3, 224, 224))
    with pytest.raises(VitCompressError, match="img_size=MIN:OPT:MAX") as e:
        profile_shapes([None, 3, None, None], static)
    assert e.value.params == ("img_size",)
    with pytest.raises(VitCompressError, match="dynamic_size=True"):
        profile_shapes([None, 3, 224, 224], cfg)
    for kw, msg in [
        (dict(precision="int8"), "precision"),
        (dict(workspace_gib=0), "workspace"),
        (dict(opt_level=9), "optimisation level"),
    ]:
        with pytest.raises(VitCompressError, match=msg):
            BuildConfig.make(**kw)


def test_sidecar_roundtrip_and_corruption(tmp_path):
    cfg = BuildConfig.make("1:8:32", None, "fp16", 1.5, 3, str(tmp_path / "cache"))
    shapes = profile_shapes([None, 3, 224, 224], cfg)
    d = sidecar(
        tmp_path / "m.engine",
        tmp_path / "m.onnx",
        cfg,
        trt_version="11.0.0",
        gpu="H100",
        input_name="pixel_values",
        shapes=shapes,
        source="art",
        strongly_typed=True,
    )
    sidecar_path(tmp_path / "m.engine").write_text(json.dumps(d))
    back = read_sidecar(tmp_path / "m.engine")
    assert back["profile"] == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert back["precision"] == "fp16" and back["strongly_typed"] is True and back["gpu"] == "H100"
    assert back["build"]["workspace_gib"] == 1.5 and back["source_artifact"] == "art"
    sidecar_path(tmp_path / "m.engine").write_text("{")
    with pytest.raises(VitCompressError, match="corrupt"):
        read_sidecar(tmp_path / "m.engine")
    with pytest.raises(VitCompressError, match="missing"):
        read_sidecar(tmp_path / "other.engine")
    assert trt_major("10.13.2.6") == 10 and trt_major("11.0.0") == 11


def test_dtype_mapping_by_name():
    class FakeDT:
        def __init__(self, name):
            self.name = name

    assert torch_dtype(FakeDT("HALF")) is torch.float16 and torch_dtype(FakeDT("FLOAT")) is torch.float32
    with pytest.raises(TypeError):
        torch_dtype(FakeDT("FP8"))


def test_parity_inputs_take_channels_and_static_sizes_from_the_input_shape():
    # ORT spells dynamic axes by name, TensorRT as -1; the channel count always comes from the shape
    xs = parity_inputs(["batch", 1, 28, 28], [(1, 28), (4, None)])
    assert [x.shape for x in xs] == [(1, 1, 28, 28), (4, 1, 28, 28)] and xs[0].dtype == np.float32
    xs = parity_inputs([-1, 3, -1, -1], [(2, 16), (1, 48)], np.float16)
    assert [x.shape for x in xs] == [(2, 3, 16, 16), (1, 3, 48, 48)] and xs[1].dtype == np.float16
    assert parity_inputs([None, 4, "height", "width"], [(2, 8)])[0].shape == (2, 4, 8, 8)
    for shape, sizes, msg in [
        ([-1, -1, 32, 32], [(1, 32)], "dynamic channel"),
        (["batch", 3, 32, 32], [(1, 48)], "fixed size 32"),
        (["batch", 3, "h", "w"], [(1, None)], "image side"),
        (["batch", 3, 32], [(1, 32)], "NCHW"),
    ]:
        with pytest.raises(VitCompressError, match=msg):
            parity_inputs(shape, sizes)


@pytest.mark.export
def test_engine_parity_of_a_one_channel_model(tmp_path, monkeypatch):
    """``engine_parity`` end to end for an in_chans=1 model (as the mnist10k teacher): an engine built
    by the TensorRT stand-in, which runs the graph in ONNX Runtime from the buffers it is given."""
    from helpers import tiny
    from stand_ins import use_tensorrt_stand_in

    from vitcompress.exporters import BuildConfig, build_engine, export_onnx, trt_runner

    trt = use_tensorrt_stand_in(monkeypatch)
    res = export_onnx(tiny("vit", in_chans=1), tmp_path / "c1.onnx", batch=(1, 2, 4), check=False)
    build_engine(res.path, tmp_path / "c1.engine", BuildConfig.make("1:2:4"))
    rep = trt_runner.engine_parity(tmp_path / "c1.engine", res.path, [(1, 32), (2, 32), (4, None)])
    shapes = [c[1][1] for c in trt.CALLS if c[0] == "IExecutionContext.set_input_shape"]
    assert shapes == [(1, 1, 32, 32), (2, 1, 32, 32), (4, 1, 32, 32)]
    assert rep.ok and [c.batch for c in rep.cases] == [1, 2, 4] and rep.max_rel == 0.0


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed")
def test_missing_tensorrt_message():
    with pytest.raises(VitCompressError) as e:
        require_tensorrt()
    assert str(e.value) == INSTALL_HINT and "pip install 'vitcompress[gpu]'" in str(e.value)


# --------------------------------------------------------------------- real engines (GPU only)
needs_trt = pytest.mark.skipif(
    not (tensorrt_available() and torch.cuda.is_available()), reason="needs the tensorrt package and a CUDA GPU"
)


@needs_trt
@pytest.mark.export
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_and_run_matches_onnxruntime(precision, tmp_path):
    from helpers import tiny

    from vitcompress.exporters.export import export

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
    assert run.engine.is_file() and (tmp_path / "cache").is_file()
    side = read_sidecar(run.engine)
    assert side["profile"]["max"] == [8, 3, 48, 48] and side["precision"] == precision
    assert run.engine_parity.ok and {c.img_size for c in run.engine_parity.cases} == {32, 16}


def test_topk_k_from_an_input_value_and_from_a_data_dependent_length():
    # K read from an input (a runtime keep rate drives K this way): input_values fixes it
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    k_in = helper.make_tensor_value_info("k_in", TensorProto.INT64, [1])
    model = _graph([helper.make_node("TopK", ["x", "k_in"], ["y", "i"], name="topk_input_k", axis=1)], [x, k_in])
    assert check_tensorrt(model, {"x": [4, 5000]}, {"k_in": [100]}).ok
    big = check_tensorrt(model, {"x": [4, 5000]}, {"k_in": [4000]})
    assert [i.node for i in big.errors] == ["topk_input_k"] and "4000" in big.errors[0].message
    # without the value, K is bounded by the axis length at the largest shape
    assert "5000" in check_tensorrt(model, {"x": [4, 5000]}).errors[0].message
    # the axis itself data-dependent (tokens after a runtime Top-K): only a caller's bound helps
    c = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["x", "zero", "k_in", "one"], ["xs"], name="slice_dd"),
        helper.make_node("Shape", ["xs"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "one"], ["n"], name="gather_n", axis=0),
        helper.make_node("TopK", ["xs", "n"], ["y", "i"], name="topk_dd", axis=1),
    ]
    dd = _graph(nodes, [x, k_in], [c("zero", [0]), c("one", [1])])
    unknown = check_tensorrt(dd, {"x": [4, 5000]})
    assert unknown.ok and [(i.node, i.severity) for i in unknown.issues] == [("topk_dd", "warning")]
    assert not check_tensorrt(dd, {"x": [4, 5000]}, max_k=900).issues
    flagged = check_tensorrt(dd, {"x": [4, 5000]}, max_k=5000)
    assert [i.node for i in flagged.errors] == ["topk_dd"] and "token count" in flagged.errors[0].message
