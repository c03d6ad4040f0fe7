"""Measuring latency tables: the probes reproduce the model's sublayers (PyTorch and ONNX), a profile
on the bench runners, the profile and latency-prune commands."""

import json
import math
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import random_plan, synthetic_table, tiny

import vitcompress
from vitcompress.benchmarks import env as envmod
from vitcompress.benchmarks import stats
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.exporters import export_onnx
from vitcompress.families import family_of
from vitcompress.latency import LatencyTable, source_of
from vitcompress.latency_search.probes import (
    EmptyProbe,
    attn_probe,
    empty_graph,
    empty_variant,
    mlp_probe,
    quantized_copy,
    rest_model,
    sublayer_graph,
    sublayer_variant,
    token_probe,
)
from vitcompress.latency_search.profile import ProfileConfig, _load_report, _Session, profile_latency
from vitcompress.latency_search.prune import MEASURED_TOLERANCE, LatencyCheck, check_latency, prune_to_latency
from vitcompress.quantizers import FP8_MAX, INT8_MAX, quant_layers
from vitcompress.slicers import slice_model
from vitcompress.tokens.apply import apply_tokens

# small grids and one pass per probe: these tests check structure, not speed
QUICK = dict(sweep=8, iters=2, rounds=1, warmup=1, heads_points=2, dim_points=2, mlp_points=2, embed_points=2,
             token_points=2, batch=2, threads=1)  # fmt: skip


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "kind, overrides",
    [
        ("vit", {}),
        ("layerscale_noqkvbias", {}),
        ("reg_gap", {}),
        ("vit", {"qk_norm": True}),
        ("vit", {"act_layer": "gelu_tanh"}),
    ],
)
def test_probe_graphs_compute_what_the_probe_modules_compute(kind, overrides):
    block = tiny(kind, **overrides).blocks[0]
    x = np.random.default_rng(0).standard_normal((3, 1, 17, 48)).astype(np.float32)
    for probe in (attn_probe(block, 48, 3, 5, 7, 17, 0.25), mlp_probe(block, 48, 37, 17)):
        graph = sublayer_graph(probe)
        onnx.checker.check_model(graph)
        with torch.no_grad():
            want = probe(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ort_run(graph, x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ort_run(empty_graph(17, 48), x), EmptyProbe()(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_probe_graphs_compute_what_the_fake_quantized_probes_compute(precision):
    """An int8/fp8 probe graph (Q/DQ on every Linear input and weight) against the probe with every
    Linear fake-quantized (``vitcompress.quantizers``) at the graph's scales."""
    block = tiny("vit").blocks[0]
    x = np.random.default_rng(0).standard_normal((3, 1, 17, 48)).astype(np.float32)
    qmax = INT8_MAX if precision == "int8" else FP8_MAX
    for probe in (attn_probe(block, 48, 3, 5, 7, 17, 0.25), mlp_probe(block, 48, 37, 17)):
        graph = sublayer_graph(probe, precision)
        onnx.checker.check_model(graph)
        ops = Counter(n.op_type for n in graph.graph.node)
        linears = 2
        assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 2 * linears  # input and weight of each
        ref = quantized_copy(probe, precision)
        assert ref is not probe and len(quant_layers(ref)) == linears and not quant_layers(probe)
        with torch.no_grad():
            for m in quant_layers(ref).values():
                m.input_scale.fill_(4.0 / qmax)
                m.weight_scale.copy_(m.weight.abs().amax(1) / qmax)
            want = ref(torch.from_numpy(x)).numpy()
            plain = probe(torch.from_numpy(x)).numpy()
        got = ort_run(graph, x)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() / scale < 1e-2  # the same rounding, computed by ONNX Runtime
        assert np.abs(plain - want).max() / scale > 1e-5  # and the rounding is there


@pytest.mark.parametrize("kind", ["vit", "layerscale_noqkvbias", "deit_distilled"])
def test_probes_are_the_sublayers_of_a_pruned_block(kind):
    """Loaded with a pruned block's weights, the two probes are exactly that block."""
    import random

    model = tiny(kind)
    pruned = slice_model(model, random_plan(model, random.Random(1), ["heads", "qk", "v", "mlp"]))
    block = pruned.blocks[1]
    a, m = block.attn, block.mlp
    t = 17 if kind != "deit_distilled" else 18
    attn = attn_probe(model.blocks[0], 64, a.num_heads, a.qk_dim, a.v_dim, t, a.scale)
    mlp = mlp_probe(model.blocks[0], 64, m.fc1.out_features, t)
    attn.load_state_dict({**_prefixed(block.norm1, "norm"), **_prefixed(a, "body"), **_prefixed(block.ls1, "ls")})
    mlp.load_state_dict({**_prefixed(block.norm2, "norm"), **_prefixed(m, "body"), **_prefixed(block.ls2, "ls")})
    x = torch.randn(2, t, 64)
    with torch.no_grad():
        torch.testing.assert_close(mlp(attn(x[:, None])[:, None]), block(x), atol=1e-6, rtol=0)


def _prefixed(module, prefix):
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def test_the_model_without_blocks_is_the_rest_of_the_model():
    model = tiny("vit")
    rest = rest_model(source_of(model), 64)
    assert len(rest.blocks) == 0 and family_of(rest).name == "vit"
    rest.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")})
    with torch.no_grad():
        torch.testing.assert_close(rest(X := torch.randn(2, 3, 32, 32)), model.forward_head(model.norm(
            model._pos_embed(model.patch_embed(X)))))  # fmt: skip


@pytest.mark.export
def test_probe_graphs_have_the_ops_of_an_exported_pruned_block(tmp_path):
    model = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1", round_to=4).model
    export_onnx(model, tmp_path / "m.onnx", batch=(1, 2, 4), check=False)
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)
    probes = Counter()
    for blk in model.blocks:
        a = blk.attn
        for probe in (attn_probe(blk, 64, a.num_heads, a.qk_dim, a.v_dim, 17, a.scale), mlp_probe(blk, 64, 8, 17)):
            probes.update(n.op_type for n in sublayer_graph(probe).graph.node)
    for op in ("MatMul", "Softmax", "Gelu", "Split"):
        assert ops[op] == probes[op], op
    assert ops["LayerNormalization"] == probes["LayerNormalization"] + 1  # + the final norm
    assert ops["Transpose"] == probes["Transpose"] + 1  # + the patch embedding's


def _check_table(table: LatencyTable, model):
    f = table.full
    assert (f["embed"], f["heads"], f["qk"], f["v"], f["mlp"], f["tokens"]) == (64, 4, 16, 16, 256, 17)
    for kind in ("qk", "v", "mlp", "embed"):
        step = table.steps[kind]
        assert step in (1, 2, 4)  # at most half the 8-wide sweep
        assert table.sweeps[kind]["widths"] == list(range(f[kind] - 7, f[kind] + 1))
        grid = table.grid[kind]
        assert grid[-1] == f[kind] and all(w % step == 0 for w in grid[:-1])
    arrays = [np.asarray(table.attn_ms), np.asarray(table.mlp_ms), np.asarray(table.rest_ms)]
    assert all(np.isfinite(a).all() and (a >= 0).all() for a in arrays)
    assert table.dense["measured_ms"] > 0 and table.scale > 0
    assert table.predict(family_of(model).spec(model)) == pytest.approx(table.dense["measured_ms"])
    assert table.env["threads"] == 1 and table.seconds > 0
    assert {"load_before", "load_after", "governor_before", "governor_after", "others_busy"} <= set(table.env)
    assert table.env["probe_ci95_reach"]["probes"] > 0 and isinstance(table.env["warnings"], list)


def test_profile_on_torch_cpu_builds_a_consistent_table(one_thread):
    model = tiny("vit")
    table = profile_latency(model, backend="torch-cpu", token_method="topk-vpa", **QUICK)
    _check_table(table, model)
    assert table.backend == "torch-cpu" and table.batch == 2
    red = table.reducers["topk-vpa"]
    assert red["tokens"] == table.grid["tokens"] and red["tokens_after"] == [
        1 + math.ceil(0.7 * (t - 1)) for t in red["tokens"]
    ]
    assert len(red["reduce_ms"]) == len(red["after_ms"]) == len(red["tokens"])
    assert all(math.isfinite(v) for v in red["reduce_ms"] + red["after_ms"])


def test_token_probe_is_the_models_reducing_block():
    """Two blocks of a model reducing with topk-vpa at block 0 (the second adds the proportional-
    attention bias) equal the token probe loaded with their weights."""
    model = tiny("vit")
    reduced = apply_tokens(tiny("vit"), "0.7@0", method="topk-vpa")
    tb = reduced.blocks
    ref = type(tb)(list(tb)[:2], tb.reducers[:2], tb.prefix, tb.has_cls, tb.prop_attn)
    probe = token_probe(source_of(model), family_of(model).spec(model).blocks[0], 64, 2, "topk-vpa", 0.7, 17)
    assert probe.blocks.prop_attn and probe.blocks.reducers[0] is not None and probe.blocks.reducers[1] is None
    probe.blocks.load_state_dict(ref.state_dict())
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        got = probe(x[:, None])
        torch.testing.assert_close(got, ref(x))
    assert got.shape == (2, 1 + math.ceil(0.7 * 16), 64)


@pytest.mark.export
def test_profile_on_onnx_runtime_builds_a_consistent_table(tmp_path):
    model = tiny("vit")
    table = profile_latency(model, backend="ort-cpu", workdir=tmp_path, **QUICK)
    _check_table(table, model)
    assert any(p.suffix == ".onnx" for p in tmp_path.rglob("*"))


@pytest.mark.export
def test_int8_profile_on_onnx_runtime_measures_q_dq_graphs(tmp_path):
    model = tiny("vit")
    table = profile_latency(model, backend="ort-cpu", precision="int8", workdir=tmp_path, token_method="topk", **QUICK)
    _check_table(table, model)
    assert table.precision == "int8" and "int8" in table.describe() and table.reducers["topk"]["tokens"]
    graphs = {p.parent.name: onnx.load(str(p)) for p in tmp_path.rglob("*.onnx")}
    for name in ("dense", "rest-d64", "mlp-d64-t17-m256", "attn-d64-t17-h4-qk16-v16", "reduce-topk-t17"):
        ops = Counter(n.op_type for n in graphs[name].graph.node)
        assert ops["QuantizeLinear"] > 0 and ops["QuantizeLinear"] == ops["DequantizeLinear"], name
    assert "QuantizeLinear" not in {n.op_type for n in graphs["empty"].graph.node}
    path = table.save(tmp_path / "t.json")
    assert LatencyTable.load(path).precision == "int8"


@pytest.mark.parametrize("statistic, expected", [("min", 1.0 - 0.25), ("median", 5.0 - 0.5)])
def test_a_probe_figure_is_the_statistic_of_its_passes_minus_the_empty_calls(statistic, expected, monkeypatch):
    """The minimum by default: on a shared CPU the median of a long call includes other processes' time."""
    passes = {"probe": [[9.0, 1.0], [5.0, 7.0, 3.0]], "empty": [[0.5, 0.25], [2.0]]}
    monkeypatch.setattr(
        "vitcompress.latency_search.profile.measure", lambda runners, *a, **k: {n: passes[n] for n in runners}
    )
    cfg = ProfileConfig(backend="torch-cpu", batch=2, threads=1, statistic=statistic).validate()
    probe = sublayer_variant("probe", attn_probe(tiny("vit").blocks[0], 64, 2, 8, 8, 17, 0.35), 2)
    sess = _Session(cfg, None, None)
    assert sess.time([probe], empty_variant(17, 64, 2)) == {"probe": pytest.approx(expected)}
    # each probe's spread: its per-round figures' 95% CI (two rounds: their two values) around their median
    per_round = {"min": ([1.0, 3.0], [0.25, 2.0]), "median": ([5.0, 5.0], [0.375, 2.0])}[statistic]
    assert sess.spreads == pytest.approx([stats.relative_width(np.median(r), (min(r), max(r))) for r in per_round])
    assert ProfileConfig().statistic == "min"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"backend": "tpu"}, "unknown backend"),
        ({"backend": "torch-cuda"}, "cannot measure here"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"min_tokens": 0.0}, "min_tokens must be in"),
        ({"precision": "int4"}, "precision"),
        ({"precision": "int8", "backend": "torch-cpu"}, "int8 latency is measured on ort-cpu, ort-trt, trt"),
        ({"precision": "fp8"}, "fp8 latency is measured on ort-trt, trt .*not ort-cpu"),
        ({"colour": 1}, "unknown profile option"),
        ({"statistic": "mean"}, "statistic is min or median"),
    ],
)
def test_profile_refuses_bad_settings(options, message):
    if options.get("backend") == "torch-cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(VitCompressError, match=message):
        profile_latency(tiny("vit"), **options)


def test_latency_check_says_when_the_measured_cut_misses_the_target():
    def check(measured):
        return LatencyCheck(0.4, "ort-cpu", 8, (10.0, 6.0), (12.0, 12.0 * (1 - measured)), measured, (100, 60))

    assert check(0.4 + MEASURED_TOLERANCE - 1e-6).warning() is None
    miss = check(0.35)
    assert not miss.ok and "5.0 points from the target 40.0%" in miss.warning()
    text = miss.format()
    assert "predicted" in text and "measured" in text and "40.0%" in text and "35.0%" in text
    # on target, but too uncertain to tell (CI wider than +-3 points) or measured on a busy machine
    wide = LatencyCheck(0.4, "ort-cpu", 8, (10, 6), (12, 7.2), 0.4, (100, 60), {}, (0.33, 0.45))
    assert wide.ok and not wide.ci_ok
    assert wide.warning() == (
        "the measured latency cut 40.0% (95% CI 33.0% to 45.0%) is not reliable: the CI is wider than +-3 points; "
        "re-run the measurement on a quiet machine"
    )
    assert "measured cut 95% CI 33.0% to 45.0%" in wide.format() and wide.to_dict()["measured_cut_ci95"] == [0.33, 0.45]
    busy = LatencyCheck(0.4, "ort-cpu", 8, (10, 6), (12, 7.2), 0.4, (100, 60), {}, (0.39, 0.41), ["busy"])
    assert busy.ci_ok and "other processes kept the cores busy; re-run" in busy.warning()
    assert check(0.4).to_dict()["flags"] == [] and check(0.4).warning() is None


def test_profile_reports_load_and_probe_spread(monkeypatch):
    monkeypatch.setattr(envmod, "usable_cores", lambda: 2)
    cfg = ProfileConfig(backend="torch-cpu", batch=2, threads=2).validate()
    quiet = _load_report(cfg, 0.1, [0.01, 0.02, 0.03], [0.5, 0.4, 0.3], "performance")
    assert quiet["warnings"] == [] and not quiet["busy"] and quiet["probe_ci95_reach"]["median"] == 0.02
    assert quiet["load_before"] == [0.5, 0.4, 0.3] and quiet["governor_before"] == "performance"
    assert "load_after" in quiet and "governor_after" in quiet
    noisy = _load_report(cfg, 1.2, [0.04, 0.08, 0.3], None, None)
    assert noisy["busy"] and len(noisy["warnings"]) == 2
    assert noisy["warnings"][0].startswith("other processes kept 1.2 cores busy during the profile (0 free with 2")
    assert "reach +-8.0% of their figures (median over 3 probes)" in noisy["warnings"][1]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def artifact(tmp_path):
    return vitcompress.save(tiny("vit"), tmp_path / "art")


def test_profile_command_writes_the_table_and_refuses_to_overwrite(artifact, tmp_path, capsys, one_thread):
    quick = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    out, png = tmp_path / "t.json", tmp_path / "t.png"
    code, stdout, err = run(capsys, "profile", artifact, "--backend", "torch-cpu", *quick, "-o", out, "--plot", png)
    assert code == 0, err
    assert "steps (widths where latency changes)" in stdout and "dense model: measured" in stdout
    assert LatencyTable.load(out).backend == "torch-cpu" and png.stat().st_size > 0
    code, _, err = run(capsys, "profile", artifact, "--backend", "torch-cpu", "-o", out)
    assert code == 2 and err.startswith("error: ") and "--force" in err
    code, stdout, err = run(capsys, "profile", artifact, "--backend", "torch-cpu", *quick, "--no-calibrate", "--force", "-o", out)  # fmt: skip
    assert code == 0, err
    assert "dense model: measured" not in stdout and LatencyTable.load(out).dense == {}


def test_prune_command_to_a_latency_table(artifact, tmp_path, capsys):
    table = synthetic_table(vitcompress.load(artifact)).save(tmp_path / "t.json")
    out = tmp_path / "p"
    code, stdout, err = run(
        capsys,
        "prune",
        artifact,
        "--latency-reduction",
        "0.3",
        "--latency-table",
        table,
        "--importance",
        "l1",
        "-o",
        out,
    )
    assert code == 0, err
    assert "of predicted latency on torch-cpu" in stdout
    assert "predicted vs measured" in stdout and "cut" in stdout
    check = json.loads((out / "latency.json").read_text())
    assert check["target"] == 0.3 and abs(check["predicted_cut"] - 0.3) <= 0.015
    assert 0 < check["measured_ms"][1] and check["env"]["threads"] >= 1
    assert not (out / "latency_table.json").exists()  # the table came from a file


def test_prune_command_profiles_on_the_fly(artifact, tmp_path, capsys, monkeypatch):
    """--backend measures the table with the command's backend, batch and precision (a synthetic
    table stands in for the measurement here: the profile itself is tested above) and writes it
    into the artifact."""
    asked = {}

    def measured(net, cfg, progress):
        asked.update(backend=cfg.backend, batch=cfg.batch, precision=cfg.precision)
        return synthetic_table(net, batch=cfg.batch)

    monkeypatch.setattr("vitcompress.latency_search.prune.profile_latency", measured)
    out = tmp_path / "p"
    code, stdout, err = run(
        capsys, "prune", artifact, "--latency-reduction", "0.25", "--backend", "torch-cpu", "--latency-batch", "2",
        "--importance", "l1", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert asked == {"backend": "torch-cpu", "batch": 2, "precision": "fp32"}
    assert (out / "latency_table.json").is_file() and f"latency table {out / 'latency_table.json'}" in stdout
    assert LatencyTable.load(out / "latency_table.json").batch == 2
    assert json.loads((out / "latency.json").read_text())["batch"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--flops-reduction", "0.3", "--backend", "torch-cpu"], "add --latency-reduction"),
        (["--latency-reduction", "0.3"], "--latency-table"),
        (["--latency-reduction", "0.3", "--backend", "torch-cpu", "--method", "ihp"], "one-shot"),
        (["--latency-reduction", "1.5", "--backend", "torch-cpu"], "outside (0, 1)"),
    ],
)
def test_prune_command_latency_refusals(artifact, tmp_path, capsys, args, message):
    code, _, err = run(capsys, "prune", artifact, *args, "-o", tmp_path / "p")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "p").exists()


def test_prune_to_latency_needs_one_table_source(tmp_path):
    with pytest.raises(VitCompressError, match="give one latency table"):
        prune_to_latency(tiny("vit"), latency_reduction=0.3)
    with pytest.raises(VitCompressError, match="give one latency table"):
        prune_to_latency(tiny("vit"), latency_reduction=0.3, backend="torch-cpu", table=synthetic_table(tiny("vit")))


def test_latency_check_on_an_int8_table_measures_both_models_quantized(monkeypatch):
    dense = tiny("vit")
    pruned = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1").model
    table = synthetic_table(dense, backend="ort-cpu")
    table.precision = "int8"
    seen = {}

    def bench(variants, cfg, baseline=None, progress=False):
        seen.update(cfg=cfg, variants=variants)
        ms = {"input": 2.0, "pruned": 1.5}
        rows = [{"variant": v.name, "median_ms": ms[v.name], "latency_ratio": ms[v.name] / 2.0} for v in variants]
        return {"measurements": rows, "skipped": []}

    monkeypatch.setattr("vitcompress.latency_search.prune.run_bench", bench)
    check = check_latency(dense, pruned, table, 0.25)
    assert seen["cfg"].precision == "fp32" and seen["cfg"].backends == ["ort-cpu"]  # the Q/DQ graph runs as fp32
    assert [v.quantized for v in seen["variants"]] == ["int8", "int8"]
    assert all(quant_layers(v.model) for v in seen["variants"])
    assert not quant_layers(dense) and not quant_layers(pruned)  # the caller's models are left as they were
    assert check.measured_cut == pytest.approx(0.25)
