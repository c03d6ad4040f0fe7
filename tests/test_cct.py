"""The CCT family (vit-pytorch's Compact Convolutional Transformer through an adapter): names, the
fused-qkv layout, exact slicing (tokenizer kept, sequence pooling coupled to the embedding, depth
with a norm on the stream), exact counting, artifacts, export, IHP and the one-line refusals."""

import random
import sys

import pytest
import torch
from helpers import random_widths_plan

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of, identity_plan
from vitcompress.families.cct.model import cct_arguments
from vitcompress.models import create_source_model, list_models
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model
from vitcompress.tokens import apply_tokens

cct = pytest.importorskip("vit_pytorch.cct")

NAME = "cct_7_3x1_32"
# width 64, 4 heads of 16, 3 layers; 16 px -> one 3x3 convolution + max pool -> 8x8 = 64 tokens
TINY = dict(img_size=16, embed_dim=64, depth=3, num_heads=4)
KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")
X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def tiny_cct(name=NAME, seed=0, **overrides):
    torch.manual_seed(seed)
    model = create_source_model(name, **{**TINY, **overrides})
    with torch.no_grad():  # random (not near-zero) biases and positions, sharper attention
        for n, p in model.named_parameters():
            if n.endswith("bias") or "positional" in n:
                p.normal_(0, 0.3)
            elif n.endswith("qkv.weight"):
                p.mul_(6.0)
    return model.eval()


def random_plan(model, rng: random.Random, kinds):
    return random_widths_plan(model, rng, kinds, min_embed=10, max_mlp=100)


def test_names_map_to_the_papers_configurations():
    assert {"cct_7_3x1_32", "cct_14_7x2_224", "cct_7_3x1_32_sine"} <= set(list_models("cct*"))
    a = cct_arguments("cct_14_7x2_224")
    assert (a["num_layers"], a["embedding_dim"], a["num_heads"], a["mlp_ratio"]) == (14, 384, 6, 3)
    assert (a["kernel_size"], a["stride"], a["padding"], a["n_conv_layers"], a["img_size"]) == (7, 2, 3, 2, 224)
    assert cct_arguments("cct_7_3x1_32_sine")["positional_embedding"] == "sine"
    b = cct_arguments("cct_7_3x1_32", in_chans=1, embed_dim=32, depth=2)
    assert (b["n_input_channels"], b["embedding_dim"], b["num_layers"], b["num_classes"]) == (1, 32, 2, 10)
    model = tiny_cct()
    assert isinstance(model, cct.CCT) and family_of(model).name == "cct"
    assert family_of(model).input_size(model) == (3, 16, 16) and family_of(model).image_stride(model) == 2


def test_fused_qkv_layout_is_read_as_vit_pytorch_computes_it():
    """The per-head outputs the family reads (no qkv bias, rows [q | k | v], head-major) add up to
    vit-pytorch's own attention output."""
    model = tiny_cct()
    attn = model.classifier.blocks[1].self_attn
    assert isinstance(attn, cct.Attention) and attn.qkv.bias is None
    x = torch.randn(2, 64, 64)
    with torch.no_grad():
        heads = family_of(model).head_outputs(attn, x)
        torch.testing.assert_close(heads.sum(0) + attn.proj.bias, attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_sliced_equals_masked_reference_for_random_combinations(seed):
    rng = random.Random(seed)
    model = tiny_cct(NAME if seed % 2 else "cct_7_3x2_32_sine", seed=seed)
    kinds = tuple(k for k in KINDS if rng.random() < 0.5) or ("embed",)
    plan = random_plan(model, rng, kinds)
    sliced = slice_model(model, plan)
    ref = mask_model(model, plan)
    with torch.no_grad():
        out, want, orig = sliced(X), ref(X), model(X)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    assert (want - orig).abs().max() > 1e-3  # the removal matters
    # the tokenizer is kept whole but for the last convolution's output channels (the embedding)
    state, last = sliced.state_dict(), f"tokenizer.conv_layers.{len(model.tokenizer.conv_layers) - 1}.0.weight"
    for k, v in model.state_dict().items():
        if k.startswith("tokenizer.") and k != last:
            assert torch.equal(state[k], v)
    assert torch.equal(state[last], model.state_dict()[last][plan.embed])
    assert sliced.classifier.attention_pool.in_features == len(plan.embed)
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


@pytest.mark.parametrize("seed", range(2))
def test_cct_14_7x2_slices_exactly(seed):
    """CCT-14/7x2 (two 7x7 convolutions, MLP ratio 3) at 64 px: 16 tokens."""
    rng = random.Random(100 + seed)
    model = tiny_cct("cct_14_7x2_224", seed=seed, img_size=64)
    assert len(model.tokenizer.conv_layers) == 2 and model.classifier.blocks[0].linear1.out_features == 3 * 64
    plan = random_plan(model, rng, KINDS)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    sliced = slice_model(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), mask_model(model, plan)(x), atol=1e-5, rtol=0)
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


def test_removing_a_layer_skips_it_norm_included():
    """A layer's norm1 normalises the stream itself, so the reference for depth pruning skips the
    layer; the sliced model is the original run without it."""
    model = tiny_cct()
    plan = identity_plan(model)
    plan.blocks = [0, 2]
    cls = model.classifier
    with torch.no_grad():
        x = model.tokenizer(X) + cls.positional_emb
        for i in plan.blocks:
            x = cls.blocks[i](x)
        x = cls.norm(x)
        x = (cls.attention_pool(x).squeeze(-1).softmax(1)[..., None] * x).sum(1)
        torch.testing.assert_close(slice_model(model, plan)(X), cls.fc(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "name,overrides",
    [
        (NAME, {}),
        ("cct_7_3x2_32_sine", {}),
        ("cct_7_7x2_224", {"img_size": 64}),
        ("cct_14_7x2_224", {"img_size": 64}),
        (NAME, {"in_chans": 1}),
    ],
)
def test_counts_equal_the_flop_counter_and_numel(name, overrides):
    model = tiny_cct(name, **overrides)
    c = count(model)
    assert c.macs == measured_macs(model)
    assert c.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("granularity", [("heads", "qk", "v", "mlp"), ("mlp", "embed", "depth")])
def test_prune_reaches_the_budget_and_reloads(tmp_path, granularity):
    model = tiny_cct()
    res = vitcompress.prune(
        model,
        flops_reduction=0.3,
        importance="taylor",
        granularity=granularity,
        round_to=4,
        calib_images=16,
        batch_size=8,
        output=tmp_path / "a",
    )
    assert abs(res.achieved - 0.3) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    assert isinstance(loaded, cct.CCT) and family_of(loaded).name == "cct"
    with torch.no_grad():
        assert torch.equal(loaded(X), res.model(X))
        torch.testing.assert_close(loaded(X), mask_model(model, res.meta.plan)(X), atol=1e-5, rtol=0)
    assert count(loaded).macs == res.meta.counts["macs"] == measured_macs(loaded)


def test_cli_prunes_a_cct_by_name_and_lists_the_family(tmp_path, capsys):
    from vitcompress.cli import main

    assert main(["models", "cct_7*"]) == 0
    out = capsys.readouterr().out
    assert "# cct: Compact Convolutional Transformers" in out and "cct_7_3x1_32\n" in out
    args = ["prune", NAME, "--img-size", "16", "--flops-reduction", "0.25", "--importance", "l1"]
    assert main([*args, "--granularity", "heads,qk,v,mlp,embed", "-o", str(tmp_path / "a")]) == 0
    meta = vitcompress.read_meta(tmp_path / "a")
    assert meta.source.name == NAME and abs(meta.history[-1]["achieved"]["macs_reduction"] - 0.25) <= 0.015


@pytest.mark.parametrize(
    "method,options,granularity",
    [
        ("ihp", {"steps": 3}, ("heads", "qk", "v", "mlp", "embed")),
        ("gohsp", {"rounds": 1, "steps_per_round": 2}, ("heads", "qk", "v", "mlp")),
        ("amap", {"steps": 3}, ("heads", "qk", "v", "mlp")),
    ],
)
def test_seed_methods_run_on_cct(method, options, granularity):
    from vitcompress.methods import METHODS
    from vitcompress.pruner import PruneConfig

    model = tiny_cct()
    cfg = PruneConfig(flops_reduction=0.3, granularity=granularity, round_to=4, calib_images=8, batch_size=8)
    cfg.validate()
    m = METHODS.get(method)
    out = m.run(model, cfg, m.parse_options(options))
    assert abs(out.achieved - 0.3) <= 0.015
    with torch.no_grad():
        torch.testing.assert_close(
            slice_model(out.model, out.plan)(X), mask_model(out.model, out.plan)(X), atol=1e-5, rtol=0
        )


def test_ihp_scales_the_cct_layers_rows_and_the_stream():
    from vitcompress.methods.ihp import attach_scales

    model = tiny_cct()
    scales = attach_scales(model, ("heads", "qk", "v", "mlp", "embed"))
    names = set(scales)
    assert "classifier.blocks.0.self_attn.qkv.weight" in names and "classifier.blocks.0.linear1.weight" in names
    assert {
        "classifier.blocks.2.pre_norm.weight",
        "classifier.blocks.2.norm1.weight",
        "classifier.norm.weight",
    } <= names


@pytest.mark.export
def test_onnx_export_matches_pytorch(tmp_path):
    from vitcompress.exporters import export_onnx

    res = vitcompress.prune(tiny_cct(depth=2), flops_reduction=0.3, importance="l1", granularity=KINDS[:5], round_to=4)
    out = export_onnx(res.model, tmp_path / "c.onnx", batch="1:2:4")
    assert out.parity.ok and out.parity.max_rel < 1e-4
    assert {c.batch for c in out.parity.cases} == {1, 2, 4}


def test_without_vit_pytorch_creation_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vit_pytorch", None)
    monkeypatch.setitem(sys.modules, "vit_pytorch.cct", None)
    with pytest.raises(
        VitCompressError, match=r"vit-pytorch package; install it with pip install 'vitcompress\[cct\]'"
    ) as e:
        create_source_model(NAME)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"patch_size": 4}, "patch_size does not apply to cct_7_3x1_32: CCT has a convolutional tokenizer"),
        ({"global_pool": "avg"}, "global_pool does not apply"),
        ({"drop_rate": 0.1}, "unknown option 'drop_rate' for cct_7_3x1_32"),
        ({"pretrained": True}, "no hub weights for cct_7_3x1_32"),
    ],
)
def test_bad_creation_options_are_one_line_refusals(kwargs, needle):
    with pytest.raises(VitCompressError, match=needle) as e:
        create_source_model(NAME, **TINY, **kwargs)
    assert "\n" not in str(e.value)


def test_unknown_cct_names_suggest_the_listed_ones():
    from vitcompress.models import check_model_name

    with pytest.raises(VitCompressError, match=r"unknown model 'cct_5_3x1_32' \(did you mean cct_7_3x1_32") as e:
        check_model_name("cct_5_3x1_32")  # CCT-5 is no configuration of the paper
    assert "\n" not in str(e.value)


def test_unsupported_uses_are_one_line_refusals():
    with pytest.raises(VitCompressError, match="token reduction does not apply to the cct family") as e:
        apply_tokens(tiny_cct(depth=1), "0.5@0", method="topk")
    assert "\n" not in str(e.value)
    foreign = cct.CCT(img_size=16, embedding_dim=32, num_layers=1, num_heads=2, mlp_ratio=1, kernel_size=3)
    with pytest.raises(VitCompressError, match="not created by vitcompress") as e:
        family_of(foreign)
    assert "\n" not in str(e.value)


def test_hidden_state_distillation_reads_the_cct_layers():
    """The hidden-state loss finds a family's blocks through its adapter (CCT keeps them under
    ``classifier.blocks``): zero against itself, positive for a pruned student."""
    from vitcompress.distill import DistillConfig, TrainLoss

    teacher = tiny_cct()
    plan = random_plan(teacher, random.Random(0), ("mlp", "embed", "depth"))
    student = slice_model(teacher, plan)
    cfg = DistillConfig(kind="soft", ce=0.0, kd=0.0, hidden=1.0)
    y = torch.zeros(2, dtype=torch.long)
    copy = tiny_cct()
    same = TrainLoss(copy, teacher, cfg)
    _, _, parts = same(copy(X), X, y)
    assert abs(parts["hidden"]) < 1e-6
    crit = TrainLoss(student, teacher, cfg)
    assert crit.pairs == [(i, b) for i, b in enumerate(plan.blocks)]
    _, _, parts = crit(student(X), X, y)
    assert parts["hidden"] > 1e-4
