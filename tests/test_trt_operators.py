"""The TensorRT lint's operator table (onnx-tensorrt's docs/operators.md, TensorRT 10.15) and the lint's
verdicts on hand-built graphs: supported and unsupported operators, type rules, restrictions, and the
rules for TopK's K (an INT64 scalar, positive, at most 3840)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from vitcompress.exporters import check_tensorrt
from vitcompress.exporters.trt_check import TRT_SUPPORTED_OPS
from vitcompress.exporters.trt_operators import DOC_TYPES, DOC_VERSION, OPERATORS, SUPPORTED

F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def _model(nodes, inputs, inits=(), outputs=("y",), opset=20):
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
    g = helper.make_graph(nodes, "g", inputs, outs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _inp(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.array(values, dtype=dtype), name)


def _findings(report):
    return [(i.node, i.severity, i.message) for i in report.issues]


# --------------------------------------------------------------------------------------- the table
@pytest.mark.parametrize(
    "op, supported, types, note",
    [
        ("Resize", True, ("FP32", "FP16", "BF16"), "mode nearest, linear"),
        ("TopK", True, ("FP32", "FP16", "BF16", "INT32", "INT64"), "sorted must be 1"),
        ("MatMul", True, ("FP32", "FP16", "BF16"), ""),
        ("Where", True, ("FP32", "FP16", "BF16", "INT32", "INT64", "BOOL"), ""),
        ("DequantizeLinear", True, ("INT8", "FP8", "FP4", "INT4"), "x_zero_point must be zero"),
        ("LayerNormalization", True, ("FP32", "FP16", "BF16"), "only the first output"),
        ("ScatterND", True, ("FP32", "FP16", "BF16", "INT32", "INT64"), "reduction must be none"),
        ("TensorScatter", True, ("FP32", "FP16", "BF16", "INT32"), "axis -2"),
        ("STFT", True, ("FP32",), "frame_step and window initializers"),
        ("RotaryEmbedding", True, ("FP32", "FP16", "BF16"), "position_ids INT64"),
        ("Attention", True, ("FP32", "FP16", "BF16", "INT8", "FP8"), "no past_key"),
        ("Compress", False, (), ""),
        ("SequenceAt", False, (), ""),
        ("BitwiseAnd", False, (), ""),
        ("DynamicQuantizeLinear", False, (), "not supported"),
        ("Unique", False, (), ""),
    ],
)
def test_table_rows_follow_operators_md(op, supported, types, note):
    row = OPERATORS[op]
    assert (row.op, row.supported, row.types) == (op, supported, types)
    assert note in row.notes


def test_table_is_consistent_and_drives_the_supported_list():
    assert DOC_VERSION == "TensorRT 10.15"
    assert TRT_SUPPORTED_OPS == SUPPORTED == {op for op, row in OPERATORS.items() if row.supported}
    for row in OPERATORS.values():
        assert set(row.types) <= DOC_TYPES, row
        assert bool(row.types) == row.supported, row  # every Y row lists its types, no N row does
    # the one documented departure: the parser's Clip importer takes INT32/INT64 (element-wise min/max)
    assert {"INT32", "INT64"} <= set(OPERATORS["Clip"].types) and "parser's source" in OPERATORS["Clip"].notes


# ----------------------------------------------------------------------------- verdicts on graphs
def test_supported_operator_passes_and_integer_clip_passes():
    x = _inp("x", F, ["b", 8])
    assert not check_tensorrt(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x])).issues
    k = _inp("k", I64, [1])
    clip = helper.make_node("Clip", ["k", "lo", "hi"], ["y"], name="clip_int")
    rep = check_tensorrt(_model([clip], [k], [_const("lo", 1), _const("hi", 1000)]))
    assert rep.ok and not rep.issues


@pytest.mark.parametrize("op", ["Compress", "SequenceEmpty", "AffineGrid", "DFT", "SplitToSequence", "BitwiseNot"])
def test_operators_marked_n_are_refused(op):
    node = helper.make_node(op, ["x"], ["y"], name="planted")
    rep = check_tensorrt(_model([node], [_inp("x", F, ["b", 8])]))
    assert [(n, s) for n, s, _ in _findings(rep)] == [("planted", "error")]
    assert "marked N in onnx-tensorrt's operators.md, TensorRT 10.15" in rep.errors[0].message


def test_operator_missing_from_the_document_is_refused():
    node = helper.make_node("CumProd", ["x", "ax"], ["y"], name="cumprod")
    rep = check_tensorrt(_model([node], [_inp("x", F, ["b", 8])], [_const("ax", 1)]))
    assert [(n, s) for n, s, _ in _findings(rep)] == [("cumprod", "error")]
    assert "not listed in onnx-tensorrt's operators.md" in rep.errors[0].message


@pytest.mark.parametrize(
    "node, inputs, expected",
    [
        (
            helper.make_node("MatMul", ["a", "b"], ["y"], name="n"),
            [("a", I32, [2, 3]), ("b", I32, [3, 4])],
            "input 0 is INT32; operators.md (TensorRT 10.15) lists FP32, FP16, BF16 for MatMul",
        ),
        (helper.make_node("Sqrt", ["a"], ["y"], name="n"), [("a", I64, [4])], "input 0 is INT64"),
        (
            helper.make_node("Cast", ["a"], ["y"], name="n", to=TensorProto.INT8),
            [("a", F, [4])],
            "the cast target is INT8",
        ),
        (
            helper.make_node("Where", ["c", "a", "a"], ["y"], name="n"),
            [("c", TensorProto.BOOL, [4]), ("a", TensorProto.UINT8, [4])],
            "input 1 is UINT8",
        ),
        (
            helper.make_node("Add", ["a", "a"], ["y"], name="n"),
            [("a", TensorProto.UINT16, [4])],
            "input 0 is UINT16, a type TensorRT does not have",
        ),
    ],
)
def test_type_rules_from_the_supported_types_column(node, inputs, expected):
    rep = check_tensorrt(_model([node], [_inp(*i) for i in inputs]))
    assert not rep.ok and [i.node for i in rep.errors] == ["n"]
    assert expected in rep.errors[0].message


def test_types_the_column_lists_pass():
    nodes = [
        helper.make_node("Where", ["c", "a", "a"], ["w"], name="where"),  # condition BOOL, data INT64
        helper.make_node("Cast", ["w"], ["y"], name="cast", to=TensorProto.FLOAT),
    ]
    rep = check_tensorrt(_model(nodes, [_inp("c", TensorProto.BOOL, [4]), _inp("a", I64, [4])]))
    assert rep.ok and not rep.issues


def test_restrictions_column():
    x = _inp("x", F, ["b", 4, 8, 8])
    idx, upd = (
        _const("idx", np.zeros((1, 1), np.int64)),
        numpy_helper.from_array(np.ones((1, 4, 8, 8), np.float32), "u"),
    )
    nodes = [
        helper.make_node("ScatterND", ["x", "idx", "u"], ["s1"], name="scatter_nd_add", reduction="add"),
        helper.make_node("ScatterND", ["x", "idx", "u"], ["s2"], name="scatter_nd_plain"),
        helper.make_node("ScatterElements", ["x", "idx4", "u"], ["s3"], name="scatter_el_max", reduction="max"),
        helper.make_node("MaxPool", ["x"], ["p1"], name="pool_dilated", kernel_shape=[2, 2], dilations=[2, 2]),
        helper.make_node("MaxPool", ["x"], ["p2", "p2_idx"], name="pool_indices", kernel_shape=[2, 2]),
        helper.make_node("AveragePool", ["x"], ["p3"], name="pool_ok", kernel_shape=[2, 2]),
        helper.make_node("LayerNormalization", ["x", "g"], ["l1", "l1_mean"], name="ln_mean", axis=-1),
        helper.make_node("LayerNormalization", ["x", "g"], ["y"], name="ln_ok", axis=-1),
        helper.make_node("ReduceSum", ["x", "axes_in"], ["r1"], name="reduce_runtime_axes"),
        helper.make_node("ReduceSum", ["x", "axes_c"], ["r2"], name="reduce_const_axes"),
        helper.make_node("Resize", ["x", "", "sc"], ["z1"], name="resize_cubic", mode="cubic"),
        helper.make_node("Resize", ["x", "", "sc"], ["z2"], name="resize_linear", mode="linear"),
    ]
    inits = [
        idx,
        upd,
        _const("idx4", np.zeros((1, 4, 8, 8), np.int64)),
        numpy_helper.from_array(np.ones(8, np.float32), "g"),
        _const("axes_c", [1]),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    ]
    rep = check_tensorrt(_model(nodes, [x, _inp("axes_in", I64, [1])], inits))
    got = {n: m for n, s, m in _findings(rep) if s == "error"}
    assert set(got) == {
        "scatter_nd_add",
        "scatter_el_max",
        "pool_dilated",
        "pool_indices",
        "ln_mean",
        "reduce_runtime_axes",
        "resize_cubic",
    }
    assert "reduction must be none" in got["scatter_nd_add"] and "plugin" in got["scatter_el_max"]
    assert "dilation" in got["pool_dilated"] and "Indices" in got["pool_indices"]
    assert "first output" in got["ln_mean"] and "axes must be an initializer" in got["reduce_runtime_axes"]
    assert "mode='cubic'" in got["resize_cubic"]


# ------------------------------------------------------------------------------------- TopK's K
def _topk(k_init=None, k_input=None):
    x = _inp("x", F, ["b", 50])
    inputs = [x] + ([_inp("k", *k_input)] if k_input else [])
    node = helper.make_node("TopK", ["x", "k"], ["y", "i"], name="topk", axis=1)
    return _model([node], inputs, [k_init] if k_init is not None else [], outputs=("y", "i"))


def test_topk_k_int64_scalar_within_the_limit_passes():
    assert not check_tensorrt(_topk(_const("k", [10]))).issues
    assert not check_tensorrt(_topk(k_input=(I64, [1])), {"x": [4, 50]}, {"k": [10]}).issues


@pytest.mark.parametrize(
    "graph, expected",
    [
        (lambda: _topk(_const("k", [10], np.int32)), "K is INT32: ONNX's TopK takes an INT64 K"),
        (lambda: _topk(k_input=(I32, [1])), "K is INT32"),
        (lambda: _topk(_const("k", [10, 20])), "K has shape [2]: it must hold exactly one value"),
        (lambda: _topk(_const("k", [0])), "K = 0: TensorRT's TopK needs a positive K"),
        (lambda: _topk(_const("k", [2**31])), "does not fit the INT32 scalar ITopKLayer takes"),
        (lambda: _topk(_const("k", [3841])), "exceeds TensorRT's limit 3840"),
    ],
)
def test_topk_k_type_and_value_rules(graph, expected):
    rep = check_tensorrt(graph(), {"x": [4, 50]})
    assert not rep.ok and [i.node for i in rep.errors] == ["topk"]
    assert expected in rep.errors[0].message


def test_topk_k_of_3840_is_the_largest_accepted():
    assert check_tensorrt(_topk(_const("k", [3840])), {"x": [4, 5000]}).ok
