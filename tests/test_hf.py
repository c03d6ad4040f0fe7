"""Hugging Face transformers ViTs (vitcompress.hf): every supported class converts to the timm ViT
that computes the same, prunes exactly (sliced == masked reference) and is counted exactly, from a
module or a save_pretrained folder; uniform-width artifacts go back to transformers folders."""

import random

import pytest
import torch
from helpers import random_widths_plan

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import family_of, identity_plan
from vitcompress.hf import to_hf_folder, to_timm
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model
from vitcompress.tokens import apply_tokens

T = pytest.importorskip("transformers")

# width 64, 4 heads of 16, 3 layers, MLP 128; 32 px images in 8 px patches: 16 patch tokens
TINY = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=128,
    mlp_ratio=2,
    image_size=32,
    patch_size=8,
    num_labels=5,
)
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
KINDS = ("heads", "qk", "v", "mlp", "embed", "depth")
CLASSES = {
    "ViTModel": "ViTConfig",
    "ViTForImageClassification": "ViTConfig",
    "DeiTModel": "DeiTConfig",
    "DeiTForImageClassification": "DeiTConfig",
    "DeiTForImageClassificationWithTeacher": "DeiTConfig",
    "Dinov2Model": "Dinov2Config",
    "Dinov2WithRegistersModel": "Dinov2WithRegistersConfig",
}


def tiny_hf(cls: str, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(T, cls)(getattr(T, CLASSES[cls])(**TINY)).eval()
    with torch.no_grad():  # random tokens, biases and layer scales (not zeros and ones)
        for n, p in model.named_parameters():
            if "token" in n or "lambda1" in n or n.endswith("bias") or "position" in n:
                p.normal_(0, 0.5)
    return model


def hf_output(model, x):
    out = model(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state[:, 0]


@pytest.mark.parametrize("cls", list(CLASSES))
def test_each_class_converts_prunes_exactly_and_is_counted(cls):
    hf = tiny_hf(cls)
    net = to_timm(hf)
    assert family_of(net).name == "vit"
    with torch.no_grad():
        ref = hf_output(hf, X)
        torch.testing.assert_close(net(X), ref, atol=1e-5, rtol=0)
        assert ref.abs().max() > 0.1
    plan = random_widths_plan(net, random.Random(cls), KINDS, min_embed=10, max_mlp=100)
    sliced = slice_model(net, plan)
    with torch.no_grad():
        ref = mask_model(net, plan)(X)
        # a model without a classifier outputs its (pruned) embedding: the reference's kept channels
        torch.testing.assert_close(sliced(X), ref if net.num_classes else ref[:, plan.embed], atol=1e-5, rtol=0)
    c = count(sliced)
    assert c.macs == measured_macs(sliced) and c.params == sum(p.numel() for p in sliced.parameters())


def test_prune_a_module_and_token_reducers(tmp_path):
    hf = tiny_hf("ViTForImageClassification")
    res = vitcompress.prune(
        hf, flops_reduction=0.3, importance="taylor", round_to=4, calib_images=8, batch_size=8, output=tmp_path / "a"
    )
    assert abs(res.achieved - 0.3) <= 0.015
    loaded = vitcompress.load(tmp_path / "a")
    assert vitcompress.read_meta(tmp_path / "a").source.name == "vit_base_patch16_224"
    with torch.no_grad():
        assert torch.equal(loaded(X), res.model(X))
    for method, schedule in (("topk-vpa", "0.7@1"), ("topk", "0.7@1"), ("tome", "merge=2")):
        net = apply_tokens(to_timm(hf), schedule, method=method)
        with torch.no_grad():
            assert net(X).shape == (2, 5) and torch.isfinite(net(X)).all()
        assert count(net).macs == measured_macs(net) < count(to_timm(hf)).macs


def test_cli_prunes_a_save_pretrained_folder(tmp_path):
    from vitcompress.cli import main

    hf = tiny_hf("DeiTForImageClassificationWithTeacher")
    hf.save_pretrained(tmp_path / "hf")
    args = ["prune", str(tmp_path / "hf"), "--flops-reduction", "0.25", "--importance", "l1", "--round-to", "4"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    meta = vitcompress.read_meta(tmp_path / "a")
    assert meta.source.name == "deit_base_distilled_patch16_224"
    loaded = vitcompress.load(tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), mask_model(to_timm(hf), meta.plan)(X), atol=1e-5, rtol=0)
    assert main(["prune", str(tmp_path / "hf"), "--img-size", "64", "-o", str(tmp_path / "b")]) == 2


def uniform_plan(net, depth=True):
    """The same widths in every block: 2 of 4 heads (different ones), 96 of 128 neurons, 48 of 64 channels."""
    rng = random.Random(1)
    plan = identity_plan(net)
    plan.embed = sorted(rng.sample(plan.embed, 48))
    if depth:
        plan.blocks = plan.blocks[:1] + plan.blocks[2:]
    for b in plan.blocks:
        lp = plan.layers[b]
        keep = sorted(rng.sample(range(4), 2))
        lp.heads, lp.qk, lp.v = [lp.heads[i] for i in keep], [lp.qk[i] for i in keep], [lp.v[i] for i in keep]
        lp.mlp = sorted(rng.sample(lp.mlp, 96))
    return plan


@pytest.mark.parametrize(
    "cls,auto",
    [
        ("ViTForImageClassification", "AutoModelForImageClassification"),
        ("DeiTForImageClassificationWithTeacher", "AutoModelForImageClassification"),
        ("DeiTModel", "AutoModel"),
        ("Dinov2Model", "AutoModel"),
        ("Dinov2WithRegistersModel", "AutoModel"),
    ],
)
def test_uniform_widths_round_trip_to_transformers(tmp_path, cls, auto):
    net = to_timm(tiny_hf(cls))
    pruned = slice_model(net, uniform_plan(net))
    vitcompress.save(pruned, tmp_path / "a")
    loaded = vitcompress.load(tmp_path / "a")
    assert to_hf_folder(loaded, tmp_path / "hf") == cls
    back = getattr(T, auto).from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == cls
    with torch.no_grad():
        torch.testing.assert_close(hf_output(back, X), loaded(X), atol=1e-5, rtol=0)
    with pytest.raises(VitCompressError, match="2 heads of 16 dims on a 48-wide stream .a head-pruned folder."):
        to_timm(back)  # timm's ViT has no head_dim option


def test_per_layer_widths_name_the_missing_config_field(tmp_path):
    from vitcompress.cli import main

    net = to_timm(tiny_hf("ViTForImageClassification"))
    plan = uniform_plan(net, depth=False)
    plan.layers[1].mlp = plan.layers[1].mlp[:50]
    vitcompress.save(slice_model(net, plan), tmp_path / "a")
    with pytest.raises(
        VitCompressError, match=r"no field for per-layer MLP widths \(the config has one intermediate_size"
    ):
        to_hf_folder(vitcompress.load(tmp_path / "a"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    plan = uniform_plan(net, depth=False)
    for b in plan.blocks:
        plan.layers[b].qk = [d[:8] for d in plan.layers[b].qk]
    vitcompress.save(slice_model(net, plan), tmp_path / "q")
    assert main(["export", str(tmp_path / "q"), "--format", "hf", "-o", str(tmp_path / "hf")]) == 2
    assert not (tmp_path / "hf").exists()
    vitcompress.save(slice_model(net, uniform_plan(net)), tmp_path / "u")
    assert main(["export", str(tmp_path / "u"), "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").exists()


def test_refusals_are_one_line(tmp_path):
    from vitcompress.resolve import resolve_model

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(VitCompressError, match="holds BertModel; vitcompress converts ViTModel, ") as e:
        resolve_model(tmp_path / "bert")
    assert "\n" not in str(e.value) and e.value.params == ("path",)
    with pytest.raises(VitCompressError, match="Dinov2ForImageClassification cannot be converted: its head reads"):
        to_timm(T.Dinov2ForImageClassification(T.Dinov2Config(**TINY)))
    cfg = T.ViTConfig(**{**TINY, "hidden_act": "relu"})
    with pytest.raises(VitCompressError, match="hidden_act='relu' is not supported"):
        to_timm(T.ViTModel(cfg))


@pytest.mark.export
def test_onnx_export_matches_pytorch(tmp_path):
    from vitcompress.exporters import export_onnx

    res = vitcompress.prune(
        tiny_hf("Dinov2WithRegistersModel"),
        flops_reduction=0.3,
        importance="l1",
        granularity=("heads", "mlp", "depth"),
        round_to=4,
    )
    out = export_onnx(res.model, tmp_path / "m.onnx", batch="1:2:4")
    assert out.parity.ok and out.parity.max_rel < 1e-4
