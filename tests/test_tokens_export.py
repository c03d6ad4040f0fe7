"""Token reduction in ONNX: every reducer exports with symbolic token counts (dynamic batch and
image size), matches PyTorch in ONNX Runtime, really reduces in the graph and passes the TensorRT
check; and one graph that takes the keep rate as a second input (``runtime_keep``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny

import vitcompress
from vitcompress.errors import VitCompressError
from vitcompress.exporters import check_tensorrt, export_onnx, read_onnx_metadata
from vitcompress.exporters.parity import ort_session
from vitcompress.exporters.runtime_keep import KEEP_INPUT, permille
from vitcompress.exporters.source import with_dynamic_size as _with_dynamic_size
from vitcompress.exporters.trt_check import input_max_shapes, input_max_values, token_bound
from vitcompress.tokens import apply_tokens, set_keep

pytestmark = pytest.mark.export  # ONNX export: `make test-slow`

BATCH = (1, 3, 8)
IMG = (16, 32, 48)  # patch 8: 4, 16 and 36 patch tokens; parity runs at 32 and 16
UNSEEN = 40  # 25 patch tokens: a size neither the export example nor the parity check used
DEPTH = 3


def _model(kind: str):
    if kind == "pruned":  # odd q/k, v and MLP widths per block
        return vitcompress.prune(tiny("vit", depth=DEPTH), flops_reduction=0.3, importance="l1", round_to=1).model
    return tiny(kind, depth=DEPTH)


def _ort(path, x, keep=None):
    sess = ort_session(str(path))
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    if keep is not None:
        feeds[KEEP_INPUT] = np.array([round(keep * 1000)], dtype=np.int64)
    return sess.run(None, feeds)[0]


def _unseen_error(path, model, keep=None, batch=2):
    """Our own ORT run at an image size the export never saw, against the dynamic-size PyTorch model;
    a token count baked in as a constant breaks the graph there."""
    ref_model = _with_dynamic_size(model, model.vitcompress_meta)
    if keep is not None:
        set_keep(ref_model, keep)
    x = torch.randn(batch, 3, UNSEEN, UNSEEN, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        ref = ref_model(x).numpy()
    out = _ort(path, x, keep)
    return float(np.abs(out - ref).max() / np.abs(ref).max()), out


def _trt_report(path, **kw):
    shapes = input_max_shapes(path, BATCH[-1], IMG[-1])
    return check_tensorrt(path, shapes, input_max_values(path), kw.get("max_k", token_bound(path, shapes)))


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# name: (model, method, schedule, options, reducing blocks)
CASES = {
    "topk-rate-pruned": ("pruned", "topk", "rate=0.2", {}, 2),
    "topk-vpa-distilled": ("deit_distilled", "topk-vpa", "0.7@1", {}, 1),
    "topk-vpa-ablation": ("vit", "topk-vpa", "0.5@1", {"vpa": False}, 1),
    "evit-reg-gap": ("reg_gap", "evit", "0.7@0,2", {}, 2),
    "etps": ("vit", "etps", "0.6@1", {}, 1),
    "tome": ("vit", "tome", "merge=3", {}, 3),  # at 16 px: 4 -> 2 -> 1 -> 1 patch tokens (n = 1: no match)
}


@pytest.mark.parametrize("case", list(CASES))
def test_reducer_exports_with_symbolic_token_counts(case, tmp_path):
    kind, method, spec, options, blocks = CASES[case]
    model = apply_tokens(_model(kind), spec, method=method, **options)
    # resampled with MatMuls (one graph for ONNX Runtime and TensorRT): equal to timm at every size
    res = export_onnx(model, tmp_path / "m.onnx", batch=BATCH, dynamic_size=True, img_size=IMG)
    # parity at three batch sizes and two image sizes
    assert res.parity.ok and res.parity.max_rel < 1e-4
    assert {(c.batch, c.img_size) for c in res.parity.cases} == {(1, 32), (3, 32), (8, 32), (1, 16)}
    assert read_onnx_metadata(res.path)["tokens"]["spec"] == spec
    # the reduction is in the graph: one TopK per reducing block, K computed from the shape
    proto = onnx.load(str(res.path))
    topk = [n for n in proto.graph.node if n.op_type == "TopK"]
    assert len(topk) == blocks
    constants = {t.name for t in proto.graph.initializer}
    assert all(n.input[1] not in constants for n in topk)
    if method == "tome":  # matching (A @ B^T) and merging (one-hot @ A) products: 2 MatMuls per block
        # (+ 2: the position-embedding resampling's rows and columns)
        assert _ops(res.path).count("MatMul") == 6 * DEPTH + 2 * blocks + 2
    # symbolic token axis: exact at a size the export never saw
    err, _ = _unseen_error(res.path, model)
    assert err < 1e-4
    # TensorRT: supported ops and every K bounded below 3840 at the largest profile shape
    rep = _trt_report(res.path)
    assert rep.ok and not rep.issues, rep.format()


# ----------------------------------------------------------------------------- runtime keep rate
@pytest.fixture(scope="module")
def runtime_export(tmp_path_factory):
    model = apply_tokens(_model("vit"), "0.7@1,2", method="topk-vpa")
    res = export_onnx(
        model,
        tmp_path_factory.mktemp("rk") / "rk.onnx",
        batch=BATCH,
        dynamic_size=True,
        img_size=IMG,
        runtime_keep=True,
    )
    return model, res


def test_runtime_keep_graph_matches_set_keep_at_each_rate(runtime_export):
    model, res = runtime_export
    # parity: every (batch, size) at the schedule's own rate and at 0.5, against set_keep copies
    assert res.parity.ok and res.runtime_keep
    assert {(c.batch, c.img_size, c.keep) for c in res.parity.cases} == {
        (b, s, k) for b, s in [(1, 32), (3, 32), (8, 32), (1, 16)] for k in (0.7, 0.5)
    }
    assert "keep 0.500" in res.parity.format()
    # the second input, documented in the metadata
    proto = onnx.load(str(res.path))
    inputs = {
        i.name: ([d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim], i.type.tensor_type.elem_type)
        for i in proto.graph.input
    }
    assert inputs == {
        "pixel_values": (["batch", 3, "height", "width"], onnx.TensorProto.FLOAT),
        KEEP_INPUT: ([1], onnx.TensorProto.INT64),
    }
    assert res.metadata["export"]["runtime_keep"]["input"] == KEEP_INPUT
    # rates and an image size the export never saw; 1.0 keeps everything
    outs = []
    for keep in (0.3, 0.85, 1.0):
        err, out = _unseen_error(res.path, model, keep)
        assert err < 1e-4, keep
        outs.append(out)
    assert np.abs(outs[0] - outs[2]).max() > 1e-3  # the input really changes the computation
    # per-mille values out of range are clipped to [1, 1000] like a static schedule's rates
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(_ort(res.path, x, 5.0), _ort(res.path, x, 1.0))
    assert np.array_equal(_ort(res.path, x, -1.0), _ort(res.path, x, 0.001))
    assert permille(0.6004) == 600 and permille(0.7) == 700 and permille(0.0001) == 1


def test_runtime_keep_topk_k_comes_from_the_input(runtime_export):
    _, res = runtime_export
    proto = onnx.load(str(res.path))
    producer = {o: n for n in proto.graph.node for o in n.output}

    def ancestors(name, seen):
        node = producer.get(name)
        if node is None or id(node) in seen:
            return {name}
        seen.add(id(node))
        return {name}.union(*(ancestors(i, seen) for i in node.input if i))

    topk = [n for n in proto.graph.node if n.op_type == "TopK"]
    assert len(topk) == 2 and all(KEEP_INPUT in ancestors(n.input[1], set()) for n in topk)
    # K is integer arithmetic all the way from the input (TensorRT: K must be an INT32/INT64 shape
    # tensor): no floating-point tensor between K and the inputs, shapes, constants it is computed from
    typed = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.input) + list(typed.graph.value_info)}
    types.update({t.name: t.data_type for t in typed.graph.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    todo, seen, k_sources = [n.input[1] for n in topk], set(), set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        k_sources.add(t)
        node = producer.get(t)
        if node is not None and node.op_type != "Shape":  # a shape is an integer whatever the values
            todo.extend(i for i in node.input if i)
    assert KEEP_INPUT in k_sources and types[KEEP_INPUT] == onnx.TensorProto.INT64
    # K stays ONNX's one-element INT64 (ONNX Runtime refuses INT32; TensorRT's parser takes it as it is)
    assert all(types[n.input[1]] == onnx.TensorProto.INT64 for n in topk)
    assert not {t for t in k_sources if types.get(t) in floats}
    # TensorRT check: K <= tokens <= 3840; with a token bound above 3840 the data-dependent K is flagged
    rep = _trt_report(res.path)
    assert rep.ok and not rep.issues, rep.format()
    flagged = _trt_report(res.path, max_k=5000)
    assert not flagged.ok and all("5000" in i.message for i in flagged.errors)


def test_runtime_keep_evit_replaces_every_blocks_rate(tmp_path):
    # two different keep rates in the schedule: keep_permille replaces both (as set_keep does)
    model = apply_tokens(_model("deit_distilled"), "0.9@1;0.6@2", method="evit")
    res = export_onnx(model, tmp_path / "e.onnx", batch=BATCH, dynamic_size=True, img_size=IMG, runtime_keep=True)
    assert res.parity.ok and {c.keep for c in res.parity.cases} == {0.9, 0.5}
    err, _ = _unseen_error(res.path, model, 0.4)
    assert err < 1e-4
    # evit always fuses in this graph: keep_permille 1000 runs as 999
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(_ort(res.path, x, 1.0), _ort(res.path, x, 0.999))
    rep = _trt_report(res.path)
    assert rep.ok and not rep.issues, rep.format()


def test_runtime_keep_refuses_tome_and_plain_models(tmp_path, capsys):
    tome = apply_tokens(tiny("vit"), "merge=2", method="tome")
    with pytest.raises(VitCompressError, match="does not apply to tome"):
        export_onnx(tome, tmp_path / "t.onnx", batch=BATCH, runtime_keep=True)
    with pytest.raises(VitCompressError, match="no token schedule"):
        export_onnx(tiny("vit"), tmp_path / "p.onnx", batch=BATCH, runtime_keep=True)
    # the CLI flag reaches the exporter: one error line, exit code 2, nothing written
    from vitcompress.cli import main

    art = vitcompress.save(tome, tmp_path / "art")
    code = main(["export", str(art), "-o", str(tmp_path / "c.onnx"), "--runtime-keep"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--runtime-keep does not apply to tome" in err[0]
    assert not list(tmp_path.glob("*.onnx"))
