"""The Swin Transformer family: exact slicing (per-stage widths, patch merging, relative-position bias,
windows and shifts), exact counting, artifacts, the seed methods, export and refusals."""

import json
import random

import pytest
import torch
from timm.layers import Attention, GluMlp, RmsNorm

import vitcompress
from vitcompress.budget import Budget, select
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import build_groups, family_of, identity_plan, spec_from_model
from vitcompress.families.swin import PrunedWindowAttention
from vitcompress.methods import METHODS
from vitcompress.models import check_model_name, check_supported, create_source_model, list_models
from vitcompress.pruner import PruneConfig
from vitcompress.reference import mask_model
from vitcompress.scorers import SCORERS
from vitcompress.slicers import slice_model
from vitcompress.tokens import apply_tokens

NAME = "swin_tiny_patch4_window7_224"
BASE = dict(in_chans=1, num_classes=10, embed_dim=16, num_heads=(2, 4))
# tiny configurations: (kwargs, image side); each covers a different window geometry
CONFIGS = {
    # 16x16 then 8x8 grid, windows 4x4: both stages have shifted blocks
    "shifted": (dict(img_size=32, patch_size=2, window_size=4, depths=(2, 2)), 32),
    # non-square windows 4x2; stage 1 (6x6) is padded to whole windows
    "padded": (dict(img_size=24, patch_size=2, window_size=(4, 2), depths=(2, 2)), 24),
    # three stages of a 7x7 window on a 14x14 grid: stage 1 (7x7) clips its window and does not shift,
    # stage 2 comes from an odd grid (the merging pads it)
    "clipped": (dict(img_size=28, patch_size=2, window_size=7, depths=(2, 2, 2), num_heads=(2, 2, 4)), 28),
    # always_partition: stage 1 keeps its window and shift although its grid is no larger than the window
    "always": (dict(img_size=16, patch_size=2, window_size=4, depths=(2, 2), always_partition=True), 16),
}
KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")


def tiny_swin(config="shifted", seed=0, **overrides):
    """A tiny randomly initialised Swin (eval mode) with biases and bias tables that matter."""
    kwargs, _ = CONFIGS[config]
    torch.manual_seed(seed)
    model = create_source_model(NAME, **{**BASE, **kwargs, **overrides})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "relative_position_bias_table" in n:
                p.normal_(0, 0.5)
            elif n.endswith("qkv.weight"):
                p.mul_(6.0)  # sharper attention, so that every q/k dim visibly matters
    return model.eval()


def image(config="shifted", batch=2, seed=1):
    side = CONFIGS[config][1]
    return torch.randn(batch, 1, side, side, generator=torch.Generator().manual_seed(seed))


def blocks_of(model):
    return [b for stage in model.layers for b in stage.blocks]


def random_plan(model, rng: random.Random, kinds):
    """Remove a random share of each requested kind (odd widths on purpose; a block stays per stage)."""
    plan = identity_plan(model)
    spec = spec_from_model(model)
    if "embed" in kinds:
        embeds = [sorted(rng.sample(e, rng.randint(1, len(e) - 1))) for e in plan.embeds]
        plan.embed, plan.stage_embeds = embeds[0], embeds[1:]
    if "depth" in kinds:
        stages = sorted({b.stage for b in spec.blocks})
        keep = [rng.choice([i for i, b in enumerate(spec.blocks) if b.stage == s]) for s in stages]
        plan.blocks = sorted(set(keep) | {i for i in plan.blocks if rng.random() < 0.5})
        plan.layers = {b: plan.layers[b] for b in plan.blocks}
    for b in plan.blocks:
        lp, bs = plan.layers[b], spec.blocks[b]
        if "heads" in kinds:
            keep = sorted(rng.sample(range(bs.num_heads), rng.randint(1, bs.num_heads)))
            lp.heads, lp.qk, lp.v = [lp.heads[i] for i in keep], [lp.qk[i] for i in keep], [lp.v[i] for i in keep]
        if "qk" in kinds:
            n = rng.randint(1, bs.qk_dim - 1)
            lp.qk = [sorted(rng.sample(range(bs.qk_dim), n)) for _ in lp.heads]
        if "v" in kinds:
            n = rng.randint(1, bs.v_dim - 1)
            lp.v = [sorted(rng.sample(range(bs.v_dim), n)) for _ in lp.heads]
        if "mlp" in kinds:
            lp.mlp = sorted(rng.sample(lp.mlp, rng.randint(1, bs.mlp_hidden - 1)))
    return plan


def test_swin_names_are_listed_and_recognised():
    names = set(list_models("swin*"))
    assert {NAME, "swin_base_patch4_window7_224", "swin_s3_tiny_224"} <= names
    assert not any(n.startswith("swinv2") for n in names)  # Swin V2 is another family (refused)
    model = tiny_swin()
    fam = family_of(model)
    assert fam.name == "swin" and fam.input_size(model) == (1, 32, 32) and fam.image_stride(model) == 2
    spec = spec_from_model(model)
    assert spec.stage_dims == [16, 32] and [b.stage for b in spec.blocks] == [0, 0, 1, 1]
    assert [b.extra["shift"] for b in spec.blocks] == [[0, 0], [2, 2], [0, 0], [2, 2]]
    assert {tuple(b.extra["window"]) for b in spec.blocks} == {(4, 4)}


@pytest.mark.parametrize("seed", range(12))
def test_sliced_equals_masked_reference_for_random_combinations(seed):
    rng = random.Random(seed)
    config = sorted(CONFIGS)[seed % len(CONFIGS)]
    model = tiny_swin(config)
    kinds = tuple(k for k in KINDS if rng.random() < 0.5) or ("embed",)
    plan = random_plan(model, rng, kinds)
    sliced, ref = slice_model(model, plan), mask_model(model, plan)
    x = image(config)
    with torch.no_grad():
        out, want, orig = sliced(x), ref(x), model(x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    # every kept block keeps its own window, shift, shift mask and softmax scale
    src = blocks_of(model)
    for i, blk in zip(plan.blocks, blocks_of(sliced)):
        assert isinstance(blk.attn, PrunedWindowAttention)
        assert (blk.window_size, blk.shift_size) == (src[i].window_size, src[i].shift_size)
        assert (blk.attn_mask is None) == (src[i].attn_mask is None)
        if blk.attn_mask is not None:
            assert torch.equal(blk.attn_mask, src[i].attn_mask)
        assert blk.attn.scale == src[i].attn.scale
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_counts_equal_the_flop_counter_and_numel(config):
    model = tiny_swin(config)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())


def test_counts_at_other_image_sizes_on_a_dynamic_size_model():
    model = tiny_swin("shifted", dynamic_img_size=True)
    fam = family_of(model)
    for side in (16, 20, 24, 48):  # 20 and 24: padded windows, an odd grid before the merging
        info = fam.arch_info(model, (side, side))
        assert fam.macs(fam.spec(model), info) == measured_macs(model, (side, side))


def test_a_block_keeps_its_shift_when_the_block_before_it_is_removed():
    model = tiny_swin()
    plan = identity_plan(model)
    plan.blocks = [1, 2]  # the shifted block of stage 0 becomes its stage's first block
    plan.layers = {b: plan.layers[b] for b in plan.blocks}
    sliced = slice_model(model, plan)
    first, second = blocks_of(sliced)
    assert first.shift_size == (2, 2) and second.shift_size == (0, 0)
    assert [b.source_index for b in spec_from_model(sliced).blocks] == [1, 2]
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), mask_model(model, plan)(x), atol=1e-5, rtol=0)
    # timm's own stage would shift its second block, not its first: the difference is visible
    rebuilt = create_source_model(NAME, **{**BASE, **CONFIGS["shifted"][0], "depths": (1, 1)})
    assert blocks_of(rebuilt)[0].shift_size == (0, 0)


def test_groups_couple_the_patch_merging_and_the_bias_table():
    model = tiny_swin()
    groups = {(g.kind, g.layer): g for g in build_groups(model, KINDS)}
    e0 = {m.param: m for m in groups[("embed", 0)].members}
    merge = e0["layers.1.downsample.reduction.weight"]
    assert merge.dim == 1 and merge.index[3].tolist() == [3, 19, 35, 51]  # channel 3 of 16: q*16 + 3
    assert "layers.1.downsample.norm.weight" in e0 and "norm.weight" not in e0
    e1 = {m.param: m for m in groups[("embed", 1)].members}
    assert e1["layers.1.downsample.reduction.weight"].dim == 0 and "head.fc.weight" in e1
    heads = {m.param: m for m in groups[("heads", 2)].members}
    table = heads["layers.1.blocks.0.attn.relative_position_bias_table"]
    assert table.dim == 1 and table.index.tolist() == [[0], [1], [2], [3]]


@pytest.mark.parametrize("granularity", [("heads", "qk", "v", "mlp"), ("mlp", "embed", "depth"), ("embed",)])
def test_prune_reaches_the_budget_and_reloads(tmp_path, granularity):
    model = tiny_swin()
    res = vitcompress.prune(
        model,
        flops_reduction=0.3,
        importance="taylor",
        granularity=granularity,
        round_to=2,
        calib_images=8,
        batch_size=8,
        output=tmp_path / "a",
    )
    assert abs(res.achieved - 0.3) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    assert not any(b.is_meta for b in loaded.buffers())  # index and masks computed on load
    x = image()
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
        torch.testing.assert_close(loaded(x), mask_model(model, res.meta.plan)(x), atol=1e-5, rtol=0)
    assert count(loaded).macs == res.meta.counts["macs"] == measured_macs(loaded)
    spec = spec_from_model(loaded)
    d = json.loads((tmp_path / "a" / "vitcompress.json").read_text())
    assert d["spec"]["stage_dims"] == spec.stage_dims
    assert all(set(b["extra"]) == {"window", "shift"} for b in d["spec"]["blocks"])
    if "embed" in granularity:
        assert all(w % 2 == 0 for w in spec.stage_dims) and spec.stage_dims != [16, 32]


def test_a_swin_created_by_timm_prunes_and_reloads_from_its_recorded_source(tmp_path):
    import timm

    torch.manual_seed(0)
    kwargs = dict(img_size=32, patch_size=2, window_size=4, depths=(2, 2), embed_dim=16, num_heads=(2, 4))
    model = timm.create_model(NAME, in_chans=1, num_classes=10, mlp_ratio=2.0, **kwargs).eval()
    res = vitcompress.prune(
        model, flops_reduction=0.3, importance="l1", granularity=KINDS, round_to=2, output=tmp_path / "a"
    )
    assert vitcompress.read_meta(tmp_path / "a").source.kwargs["img_size"] == [32, 32]
    loaded = vitcompress.load(tmp_path / "a")
    x = image()
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))
        torch.testing.assert_close(loaded(x), mask_model(model, res.meta.plan)(x), atol=1e-5, rtol=0)


def test_depth_budget_keeps_a_block_in_every_stage():
    model = tiny_swin()  # stage 0 blocks have the smallest weights: l1 would remove both
    groups = build_groups(model, ("depth",))
    scores = SCORERS.get("l1")(model, groups)
    assert scores[0].argsort().tolist()[:2] == [0, 1]
    plan, achieved = select(model, groups, scores, Budget("macs", 0.48, round_to=2))
    assert plan.blocks == [1, 2] and abs(achieved - 0.48) <= 0.015
    fam, spec = family_of(model), spec_from_model(model)
    assert [fam.can_remove_block(spec, i) for i in range(4)] == [True] * 4
    spec.blocks = spec.blocks[1:]
    assert [fam.can_remove_block(spec, i) for i in range(3)] == [False, True, True]


def test_pruning_a_pruned_swin_composes_the_plans():
    model = tiny_swin("padded")
    first = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=KINDS, round_to=1)
    again = vitcompress.prune(first.model, flops_reduction=0.2, importance="l1", granularity=KINDS, round_to=1)
    x = image("padded")
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), mask_model(model, again.meta.plan)(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "method,options,granularity",
    [
        ("ihp", {"steps": 3}, ("heads", "qk", "v", "mlp", "embed")),
        ("amap", {"steps": 3}, ("heads", "qk", "v", "mlp")),
    ],
)
def test_ihp_and_amap_run_on_swin(method, options, granularity):
    model = tiny_swin()
    cfg = PruneConfig(flops_reduction=0.3, granularity=granularity, round_to=2, calib_images=8, batch_size=8)
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(model, cfg, m.parse_options(options))
    assert abs(out.achieved - 0.3) <= 0.015
    x = image()
    with torch.no_grad():
        sliced = slice_model(out.model, out.plan)
        torch.testing.assert_close(sliced(x), mask_model(out.model, out.plan)(x), atol=1e-5, rtol=0)
        assert (out.model(x) - model(x)).abs().max() > 1e-4  # the method changed the model (scales folded)


def test_swin_refuses_gohsp_and_token_reduction_in_one_line():
    with pytest.raises(VitCompressError, match="method gohsp does not run on the swin family") as e:
        vitcompress.prune(tiny_swin(), flops_reduction=0.3, method="gohsp", granularity=("heads",))
    assert "\n" not in str(e.value)
    with pytest.raises(VitCompressError, match="token reduction does not apply to the swin family") as e:
        apply_tokens(tiny_swin(), "rate=0.1", method="topk")
    assert "\n" not in str(e.value)


def _glu_block():
    model = tiny_swin()
    blk = model.layers[1].blocks[0]
    blk.mlp = GluMlp(32, 64)
    return model


def _changed(change):
    def build():
        model = tiny_swin()
        change(model)
        return model

    return build


@pytest.mark.parametrize(
    "build,needle",
    [
        (lambda: tiny_swin(global_pool="catavgmax"), r"global_pool='catavgmax'"),
        (_glu_block, "stage 1 block 0 MLP is GluMlp"),
        (
            _changed(lambda m: setattr(m.layers[0].blocks[1], "norm2", RmsNorm(16))),
            "stage 0 block 1 uses RmsNorm instead of LayerNorm",
        ),
        (
            _changed(lambda m: setattr(m.layers[1].blocks[0], "attn", Attention(32, num_heads=4))),
            "stage 1 block 0 attention is Attention",
        ),
        (
            _changed(lambda m: setattr(m.layers[1].downsample, "reduction", torch.nn.Linear(64, 32))),
            "stage 1 downsamples with PatchMerging",
        ),
        (_changed(lambda m: setattr(m, "norm", RmsNorm(32))), "final norm RmsNorm"),
    ],
)
def test_unsupported_swin_variants_are_one_line_refusals(build, needle):
    with pytest.raises(VitCompressError, match=needle) as e:
        check_supported(build())
    assert "\n" not in str(e.value) and "timm Swin Transformer v1" in str(e.value)


@pytest.mark.parametrize("name", ["swinv2_tiny_window8_256", "swinv2_cr_tiny_224"])
def test_swin_v2_is_refused_by_name(name):
    with pytest.raises(VitCompressError, match=rf"unsupported architecture '{name}' \(swin_transformer_v2") as e:
        check_model_name(name)
    assert "\n" not in str(e.value)


def test_cli_prunes_a_swin_shows_its_stages_and_refuses_in_one_error_line(tmp_path, capsys):
    from vitcompress.cli import main

    vitcompress.save(tiny_swin(), tmp_path / "src")
    args = ["prune", str(tmp_path / "src"), "--flops-reduction", "0.3", "--importance", "l1"]
    assert main([*args, "--granularity", "heads,mlp,embed", "--round-to", "2", "-o", str(tmp_path / "a")]) == 0
    meta = vitcompress.read_meta(tmp_path / "a")
    assert meta.source.name == NAME and abs(meta.history[-1]["achieved"]["macs_reduction"] - 0.3) <= 0.015
    capsys.readouterr()
    assert main(["info", str(tmp_path / "a"), "--plot", str(tmp_path / "w.png")]) == 0
    dims = ",".join(str(d) for d in meta.require_spec().stage_dims)
    out = capsys.readouterr().out
    assert f"{NAME}  stage dims {dims}  depth 4" in out and "MACs: windowed attention" in out
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refusals = {
        "swin v2": ["prune", "swinv2_tiny_window8_256", "--flops-reduction", "0.3", "-o", str(tmp_path / "b")],
        "gohsp": [*args, "--method", "gohsp", "-o", str(tmp_path / "c")],
        "tokens": ["tokens", str(tmp_path / "a"), "--method", "topk", "--schedule", "0.5@1", "-o", str(tmp_path / "d")],
    }
    for what, argv in refusals.items():
        assert main(argv) == 2, what
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, what
    assert not any((tmp_path / n).exists() for n in "bcd")


@pytest.mark.export
@pytest.mark.parametrize(
    "dynamic_size",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # tracing the dynamic-size graph takes minutes
    ids=["static-size", "dynamic-size"],
)
def test_onnx_export_with_dynamic_batch_matches_pytorch(tmp_path, dynamic_size):
    from vitcompress.exporters import export_onnx

    model = tiny_swin(depths=(2, 1))  # a shifted block: its mask is part of the graph
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=KINDS[:5], round_to=2)
    size = dict(dynamic_size=True, img_size="16:32:48") if dynamic_size else {}
    out = export_onnx(res.model, tmp_path / "s.onnx", batch="1:2:4", **size)
    assert out.parity.ok and out.parity.max_rel < 1e-4
    cases = {(c.batch, c.img_size) for c in out.parity.cases}
    assert cases == {(1, 32), (2, 32), (4, 32)} | ({(1, 16)} if dynamic_size else set())
    if dynamic_size:  # sizes whose grids need padded windows and a padded merging, against the PyTorch model
        import onnxruntime as ort

        from vitcompress.exporters.source import with_dynamic_size

        sess = ort.InferenceSession(str(tmp_path / "s.onnx"))
        dyn = with_dynamic_size(res.model, res.meta)
        for side in (20, 24, 40):
            x = torch.randn(2, 1, side, side)
            with torch.no_grad():
                want = dyn(x).numpy()
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
            assert abs(got - want).max() < 1e-4


@pytest.mark.export
def test_cli_exports_a_pruned_swin_with_parity_and_its_stage_widths(tmp_path, capsys):
    import onnxruntime as ort

    from vitcompress.cli import main
    from vitcompress.exporters import read_onnx_metadata

    vitcompress.save(tiny_swin(depths=(2, 1)), tmp_path / "src")
    prune = ["prune", str(tmp_path / "src"), "--flops-reduction", "0.3", "--importance", "l1", "--round-to", "2"]
    assert main([*prune, "--granularity", "heads,v,mlp,embed,depth", "-o", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "a"), "-o", str(tmp_path / "a.onnx"), "--batch", "1:2:3"]) == 0
    out = capsys.readouterr().out
    assert "passed: max rel" in out and "batch   3  image   32" in out
    meta = vitcompress.read_meta(tmp_path / "a")
    assert read_onnx_metadata(tmp_path / "a.onnx")["spec"] == meta.require_spec().to_dict()
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"))
    x = image(batch=5)  # a batch outside the checked profile
    with torch.no_grad():
        want = vitcompress.load(tmp_path / "a")(x).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - want).max() < 1e-4


@pytest.mark.slow
def test_swin_t_counts_and_prunes_exactly():
    torch.manual_seed(0)
    model = create_source_model(NAME).eval()  # Swin-T, 224 px: 4.49 G MACs, 28.3 M params
    c = count(model)
    assert c.macs == measured_macs(model) and round(c.macs / 1e9, 2) == 4.49
    assert c.params == sum(p.numel() for p in model.parameters())
    res = vitcompress.prune(model, flops_reduction=0.462, importance="l1", granularity=KINDS)
    assert abs(res.achieved - 0.462) <= 0.015
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), mask_model(model, res.meta.plan)(x), atol=1e-4, rtol=0)
    assert count(res.model).macs == measured_macs(res.model)


SWIN_TRAIN = [
    "train",
    NAME,
    "--img-size",
    "32",
    "--patch-size",
    "2",
    "--in-chans",
    "1",
    "--num-classes",
    "10",
    "--embed-dim",
    "8",
    "--model-opt",
    "depths=[1,2]",
    "--model-opt",
    "num_heads=[2,2]",
    "--model-opt",
    "window_size=4",
    "--global-pool",
    "avg",
    "--data",
    "digits",
    "--epochs",
    "1",
    "--max-steps-per-epoch",
    "2",
    "--quiet",
]


def test_cli_trains_a_swin_with_creation_options_and_refuses_bad_ones(tmp_path, capsys):
    from vitcompress.cli import main

    assert main([*SWIN_TRAIN, "-o", str(tmp_path / "t")]) == 0, capsys.readouterr().err
    meta = vitcompress.read_meta(tmp_path / "t")
    assert meta.source.kwargs["depths"] == [1, 2] and meta.source.kwargs["window_size"] == 4
    spec = spec_from_model(vitcompress.load(tmp_path / "t"))
    assert spec.stage_dims == [8, 16] and [b.stage for b in spec.blocks] == [0, 1, 1]
    assert [b.extra["shift"] for b in spec.blocks] == [[0, 0], [0, 0], [2, 2]]
    capsys.readouterr()
    bad = {
        "depths": "model option 'depths' is not KEY=VALUE",
        "embed_dim=16": "model option embed_dim is given twice",
        "mlp_speed=2": "cannot create",
    }
    for opt, needle in bad.items():
        assert main([*SWIN_TRAIN, "--model-opt", opt, "-o", str(tmp_path / "b")]) == 2, opt
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, (opt, err)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ihp", "amap"])
def test_ihp_and_amap_run_on_swin_t(method):
    torch.manual_seed(0)
    model = create_source_model(NAME).eval()
    granularity = ("heads", "qk", "v", "mlp", "embed") if method == "ihp" else ("heads", "qk", "v", "mlp")
    cfg = PruneConfig(flops_reduction=0.3, granularity=granularity, calib_images=4, batch_size=2)
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(model, cfg, m.parse_options({"steps": 1}))
    assert abs(out.achieved - 0.3) <= 0.015
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        sliced = slice_model(out.model, out.plan)
        torch.testing.assert_close(sliced(x), mask_model(out.model, out.plan)(x), atol=1e-4, rtol=0)
    assert count(sliced).macs == measured_macs(sliced)
