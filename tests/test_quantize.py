"""Post-training quantization (vitcompress.quantize): fake-quantized numerics, the artifact round
trip, training through the quantizers, the Q/DQ ONNX export and every bad input as one line."""

import copy
import os

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny
from onnx import TensorProto, numpy_helper

import vitcompress
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.quantization import entropy_threshold
from vitcompress.quantizers import QuantLinear, fake_quant, quant_layers, strip_quantizers

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_fake_quant_int8_and_fp8_round_to_their_grids():
    x = torch.tensor([-2.0, -0.26, 0.0, 0.124, 0.126, 0.5, 3.0])
    s = torch.tensor(0.01)
    want = torch.clamp(torch.round(x / 0.01), -128, 127) * 0.01
    assert torch.allclose(fake_quant(x, s, "int8"), want, atol=1e-7)
    w = torch.tensor([[1.0, -0.5], [0.02, 0.03]])
    ws = torch.tensor([1.0 / 127, 0.03 / 127])
    got = fake_quant(w, ws, "int8", axis=0)
    assert torch.allclose(got, torch.round(w / ws[:, None]) * ws[:, None], atol=1e-7)
    s8 = torch.tensor(1 / 448)
    f8 = fake_quant(x, s8, "fp8")
    assert torch.equal(f8, (x / s8).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s8)
    assert float(f8[1]) == pytest.approx(-120 / 448)  # E4M3 near 116: steps of 8
    assert float(f8[-1]) == pytest.approx(1.0)  # 3.0 saturates at the format's maximum


def test_quantize_writes_an_artifact_that_loads_fake_quantized(tmp_path):
    model = tiny()
    with torch.no_grad():
        ref = model(X)
    res = vitcompress.quantize(model, precision="int8", calib_images=32, exclude=("head",), output=tmp_path / "q")
    assert res.skipped == ["head"] and len(res.layers) == 17  # 4 blocks x 4 Linear + patch embedding
    assert not quant_layers(model)  # the module given is copied, not changed
    qkv = res.model.blocks[0].attn.qkv
    amax = qkv.weight.detach().abs().amax(1)
    assert torch.allclose(qkv.weight_scale, amax / 127)
    with torch.no_grad():
        out = res.model(X)
    assert 0 < float((out - ref).abs().max() / ref.abs().max()) < 0.2
    loaded = vitcompress.load(tmp_path / "q")
    assert isinstance(loaded.blocks[0].attn.qkv, QuantLinear)
    assert torch.equal(loaded(X), out)
    meta = vitcompress.read_meta(tmp_path / "q")
    q = meta.extra["quantization"]
    assert q["precision"] == "int8" and q["calibration"] == "minmax" and q["calib_images"] == 32
    assert "head" not in q["layers"] and meta.history[-1]["method"] == "quantize"
    assert meta.counts == meta.counts_source  # quantization removes no MACs
    # stripping the quantizers gives back the float model exactly
    plain = strip_quantizers(copy.deepcopy(loaded))
    assert not quant_layers(plain) and torch.allclose(plain(X), ref, atol=1e-5)


@pytest.mark.parametrize("calibration", ["percentile", "entropy"])
def test_clipping_calibrations_choose_a_threshold_below_the_maximum(calibration):
    res = vitcompress.quantize(tiny(), precision="fp8", calibration=calibration, calib_images=32)
    m = res.model.blocks[1].mlp.fc2
    seen = []
    m.quant_observer = lambda mod, x: seen.append(float(x.detach().abs().max()))
    res.model(X)
    m.quant_observer = None
    assert 0 < float(m.input_scale) * 448 < max(seen)


def test_entropy_threshold_clips_a_rare_outlier():
    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.normal(0, 1, 100_000), [200.0]]))
    t = entropy_threshold(values, float(values.max()))
    assert 2.0 < t < 20.0


def test_finetuning_trains_through_the_quantizers():
    res = vitcompress.quantize(tiny(), precision="int8", calib_images=16)
    lin = res.model.blocks[0].mlp.fc1
    x = torch.randn(5, 64, requires_grad=True)
    lin(x).sum().backward()
    wq = fake_quant(lin.weight.detach(), lin.weight_scale, "int8", axis=0)
    xq = fake_quant(x.detach(), lin.input_scale, "int8")
    inside = (x.detach() / lin.input_scale).round().abs() <= 127
    assert torch.allclose(lin.weight.grad, torch.ones(5, lin.out_features).T @ xq, atol=1e-5)  # STE
    assert torch.allclose(x.grad, (torch.ones(5, lin.out_features) @ wq) * inside, atol=1e-5)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    a, m = tmp_path / "a", tmp_path / "m"
    vitcompress.quantize(tiny(), calib_images=8, output=a)
    vitcompress.save(tiny(), m)
    cases = [
        ([a, "-o", tmp_path / "b"], "is already quantized; quantize the unquantized model"),
        ([m, "-o", tmp_path / "b", "--calib-images", "0"], "--calib-images"),
        ([m, "-o", tmp_path / "b", "--exclude", "nothing.*"], "exclude pattern 'nothing.*' matches no"),
        ([m, "-o", tmp_path / "b", "--precision", "int4"], "int4"),
    ]
    for args, msg in cases:
        code, _, err = run(capsys, "quantize", *args)
        assert code == 2 and err.startswith("error: ") and msg in err and err.count("\n") == 1, err
        assert not os.path.exists(tmp_path / "b")
    with pytest.raises(VitCompressError, match="already quantized"):
        vitcompress.quantize(vitcompress.load(a))


def test_cli_quantize_then_eval_info(tmp_path, capsys):
    model = tiny()
    vitcompress.save(model, tmp_path / "m")
    code, out, err = run(
        capsys, "quantize", tmp_path / "m", "-o", tmp_path / "q", "--precision", "fp8", "--calib-images", "16"
    )
    assert code == 0, err
    assert "quantized 18 Linear/Conv2d layers to fp8 (minmax calibration on 16 images" in out
    code, out, err = run(capsys, "info", tmp_path / "q")
    assert code == 0, err
    assert "step: quantize fp8 (minmax calibration)" in out


@pytest.mark.export
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_export_writes_qdq_pairs_that_match_the_fake_quantized_model(precision, tmp_path):
    from vitcompress.exporters import export_onnx

    vitcompress.quantize(tiny(), precision=precision, calib_images=16, output=tmp_path / "q")
    res = export_onnx(tmp_path / "q", tmp_path / "q.onnx", batch=(1, 4, 8))
    assert (
        res.parity.ok and res.parity.tolerance == {"int8": 5e-2, "fp8": 1e-1}[precision] and res.parity.max_rel < 1e-4
    )
    proto = onnx.load(str(tmp_path / "q.onnx"))
    nodes = proto.graph.node
    inits = {i.name: i for i in proto.graph.initializer}
    q = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dq = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert len(q) == len(dq) == 2 * 18  # input and weight of each Linear/Conv2d
    kind = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    for n in q + dq:
        scale, zero = n.input[1], n.input[2]
        assert scale in inits and zero in inits  # constant scales and zero points
        assert inits[zero].data_type == kind
        assert not numpy_helper.to_array(inits[zero]).astype(np.float32).any()
    with pytest.raises(VitCompressError, match=r"is quantized \(" + precision + r"\).*drop precision=fp16"):
        export_onnx(tmp_path / "q", tmp_path / "h.onnx", precision="fp16")
    assert not (tmp_path / "h.onnx").exists()


@pytest.mark.export
@pytest.mark.parametrize("version", ["10.16.1", "11.1.0"])
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_export_builds_through_the_tensorrt_stand_in(version, precision, tmp_path, monkeypatch):
    from stand_ins import use_tensorrt_stand_in

    from vitcompress.exporters.export import export

    trt = use_tensorrt_stand_in(monkeypatch, version)
    vitcompress.quantize(tiny(), precision=precision, calib_images=16, output=tmp_path / "q")
    run = export(tmp_path / "q", tmp_path / "q.onnx", batch="1:4:8", trt=True)
    assert run.compat.ok and not run.compat.issues
    assert run.engine.is_file() and run.engine_parity.ok
    flag = "INT8" if precision == "int8" else "FP8"
    set_flags = [c[1][0].name for c in trt.CALLS if c[0] == "IBuilderConfig.set_flag"]
    assert set_flags == ([flag] if trt.MAJOR == 10 else [])  # TensorRT 11: strongly typed, no flags


def _qdq_graph(zero_type, zero_value, scale_const=True):
    """x -> QuantizeLinear -> DequantizeLinear -> y with the given zero point."""
    from onnx import helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, 4, 4])
    inits = [helper.make_tensor("z", zero_type, [], [zero_value])]
    nodes = []
    if scale_const:
        inits.append(helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]))
    else:  # a scale computed from the input
        nodes.append(helper.make_node("ReduceMax", ["x"], ["s"], keepdims=0))
    nodes += [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
    ]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize(
    "zero_type, zero_value, scale_const, message",
    [
        (TensorProto.INT8, 3, True, "the zero point is not 0: TensorRT quantization is symmetric"),
        (TensorProto.UINT8, 0, True, "zero point of type UINT8: TensorRT quantizes to INT8 or FLOAT8E4M3FN only"),
        (TensorProto.INT8, 0, False, "the scale is computed at run time; TensorRT needs a constant scale"),
    ],
)
def test_tensorrt_lint_knows_the_qdq_rules(zero_type, zero_value, scale_const, message, tmp_path, monkeypatch):
    from stand_ins import use_tensorrt_stand_in

    from vitcompress.exporters import BuildConfig, build_engine, check_tensorrt

    proto = _qdq_graph(zero_type, zero_value, scale_const)
    rep = check_tensorrt(proto)
    assert [(i.node, i.severity, i.message) for i in rep.issues] == [("q", "error", message), ("dq", "error", message)]
    assert check_tensorrt(_qdq_graph(TensorProto.INT8, 0)).ok
    # the stand-in's parser refuses the same graph, in one line, and nothing is written
    use_tensorrt_stand_in(monkeypatch, "11.1.0")
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(VitCompressError, match="TensorRT cannot parse") as e:
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.engine", BuildConfig.make("1:2:4"))
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "bad.engine").exists()


@pytest.mark.export
def test_bench_measures_a_quantized_artifact_with_its_precision(tmp_path):
    from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
    from vitcompress.benchmarks.report import to_markdown

    vitcompress.save(tiny(), tmp_path / "fp32")
    vitcompress.quantize(tmp_path / "fp32", calib_images=16, output=tmp_path / "int8")
    variants = [load_variant(tmp_path / "fp32"), load_variant(tmp_path / "int8")]
    assert [v.quantized for v in variants] == [None, "int8"]
    cfg = BenchConfig(backends=["ort-cpu", "torch-cpu"], batches=[2], warmup=1, iters=2, rounds=2, threads=1)
    result = run_bench(variants, cfg)
    assert not result["skipped"]
    got = {(m["backend"], m["variant"]): m["precision"] for m in result["measurements"]}
    assert got == {
        ("ort-cpu", "fp32"): "fp32",
        ("ort-cpu", "int8"): "int8",
        ("torch-cpu", "fp32"): "fp32",
        ("torch-cpu", "int8"): "int8",
    }
    assert all(m["output_finite"] for m in result["measurements"])
    assert "| ort-cpu | 2 | int8 | int8 |" in to_markdown(result)
    onnx_file = variants[1].onnx()  # the ort-cpu runner's graph is the Q/DQ export
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_file)).graph.node) == 36


def test_finetune_of_a_quantized_artifact_distils_through_the_quantizers(tmp_path, capsys):
    teacher = vitcompress.save(tiny(), tmp_path / "teacher")
    pruned = vitcompress.prune(teacher, flops_reduction=0.3, importance="l1", round_to=1, output=tmp_path / "p")
    assert pruned.achieved > 0.2
    q = vitcompress.quantize(tmp_path / "p", calib_images=16, output=tmp_path / "q").model
    out = tmp_path / "ft"
    code, _, err = run(
        capsys, "finetune", tmp_path / "q", "--teacher", teacher, "--data", "digits", "--epochs", "1",
        "--max-steps-per-epoch", "2", "--batch-size", "8", "--quiet", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    ft = vitcompress.load(out)
    layers = quant_layers(ft)
    assert (
        sorted(layers) == sorted(quant_layers(q))
        and vitcompress.read_meta(out).extra["quantization"]["precision"] == "int8"
    )
    before, after = q.blocks[0].mlp.fc1, ft.blocks[0].mlp.fc1
    assert torch.equal(before.input_scale, after.input_scale)  # calibrated scales stay; the weights train
    assert not torch.equal(before.weight, after.weight)
    assert [s["method"] for s in vitcompress.read_meta(out).history][:2] == ["oneshot", "quantize"]


def test_calibration_images_of_another_shape_are_refused(tmp_path, monkeypatch):
    # the built-in data and image folders are resized to the model's geometry; a loader that is not
    # (another channel count or size) is refused before any scale is set, and nothing is written
    import vitcompress.quantization as qmod

    monkeypatch.setattr(qmod, "calibration_loader", lambda *a, **k: [(torch.randn(2, 1, 28, 28), torch.zeros(2))])
    with pytest.raises(VitCompressError) as e:
        vitcompress.quantize(tiny(), calib_images=2, output=tmp_path / "q")
    assert str(e.value).startswith(
        "calibration data 'digits' gives images of shape (1, 28, 28), the model takes (3, 32, 32)"
    )
    assert not (tmp_path / "q").exists()


@pytest.mark.export
def test_token_reduced_quantized_artifact_exports_with_dynamic_size(tmp_path):
    from vitcompress.exporters import export_onnx
    from vitcompress.token_reduction import reduce_tokens
    from vitcompress.tokens import schedule_of

    reduce_tokens(tiny(), "0.7@1,2", "topk-vpa", output=tmp_path / "tok")
    vitcompress.quantize(tmp_path / "tok", calib_images=16, output=tmp_path / "q")
    loaded = vitcompress.load(tmp_path / "q")
    assert schedule_of(loaded) is not None and len(quant_layers(loaded)) == 18  # both steps applied on load
    res = export_onnx(tmp_path / "q", tmp_path / "q.onnx", batch=(1, 4, 8), dynamic_size=True, img_size=(16, 32, 48))
    assert res.parity.ok and {c.img_size for c in res.parity.cases} == {16, 32} and res.parity.max_rel < 1e-4
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(res.path)).graph.node) == 36
