"""Every name ``vitcompress models`` lists prunes exactly; the refused names are listed apart with their
reason; the coverage table of docs/pruning.md is the one the families generate."""

import pathlib
import zlib

import pytest
import timm
import torch

import vitcompress
from vitcompress.cli import main
from vitcompress.counting import count
from vitcompress.families import family_for_name, list_models, refused_models
from vitcompress.families.coverage import coverage_rows
from vitcompress.models import create_source_model
from vitcompress.reference import mask_model

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "pruning.md"
ALL = sorted(n for names in list_models().values() for n in names)
# a deterministic sample (about one name in six, by a hash of the name), every family represented
SAMPLE = sorted({n for n in ALL if zlib.crc32(n.encode()) % 6 == 0} | {names[0] for names in list_models().values()})


def tiny_of(name: str):
    """``name`` with 2 blocks of width 64 or 96 (4 heads) on 2 x 2 patches (CCT: 64 px), random weights."""
    fam = family_for_name(name)
    if fam.name == "swin":  # stages, not depth: two stages of two blocks, 4x4 windows on a 16x16 grid
        torch.manual_seed(0)
        kwargs = dict(embed_dim=16, num_heads=(2, 4), depths=(2, 2), patch_size=2, window_size=4)
        return create_source_model(name, img_size=32, num_classes=10, in_chans=3, **kwargs).eval(), 32
    if timm.is_model(name):
        with torch.device("meta"):
            img = 2 * fam.image_stride(timm.create_model(name, depth=1))
    else:  # a family of its own names (CCT, from an optional package): a size every tokenizer of it takes
        pytest.importorskip("vit_pytorch.cct")
        img = 64
    torch.manual_seed(0)
    kwargs = dict(depth=2, num_heads=4, img_size=img, num_classes=10, in_chans=3)
    try:
        model = create_source_model(name, embed_dim=64, **kwargs)
    except vitcompress.VitCompressError:  # packed SwiGLU needs an even hidden width: 64 * 16/3 is not one
        model = create_source_model(name, embed_dim=96, **kwargs)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "token" in n or "gamma" in n or "latent" in n:
                p.normal_(0, 0.2)
    return model.eval(), img


@pytest.mark.parametrize("name", SAMPLE)
def test_every_listed_model_prunes_one_shot_exactly(name):
    model, img = tiny_of(name)
    fam = family_for_name(name)
    stem = getattr(fam.arch_info(model), "stem_macs", 0) / count(model).macs  # a hybrid's CNN stem stays whole
    target = round(0.2 * (1 - stem), 3)
    # widths in steps of 4: at width 64 steps of 8 are too coarse to land within the tolerance on every family
    res = vitcompress.prune(
        model, flops_reduction=target, importance="random", granularity=("heads", "mlp", "embed"), round_to=4
    )
    assert abs(res.achieved - target) <= 0.015 and count(res.model).params < count(model).params
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), mask_model(model, res.meta.plan)(x), atol=1e-4, rtol=1e-4)
    assert fam.name == vitcompress.families.family_of(res.model).name


def test_refused_names_are_not_listed_and_are_refused_with_their_reason():
    refused = {n: r for reasons in refused_models().values() for n, r in reasons.items()}
    assert {"vit_dwee_patch16_reg1_gap_256", "vit_small_patch16_18x2_224"} <= set(refused)
    assert not set(refused) & set(ALL)
    for name, reason in refused.items():
        with pytest.raises(vitcompress.VitCompressError) as e:
            create_source_model(name, depth=1, img_size=64)
        if one_block(name):  # else timm itself refuses one block (per-block options)
            assert reason.split(" (")[0] in str(e.value)
        assert "\n" not in str(e.value)


def one_block(name: str) -> bool:
    try:
        with torch.device("meta"):
            timm.create_model(name, depth=1)
    except Exception:
        return False
    return True


def test_models_command_lists_the_refused_names_apart(capsys):
    assert main(["models", "vit_d*", "--refused"]) == 0
    out = capsys.readouterr().out
    assert "vit_dwee_patch16_reg1_gap_256  # block 0 attention is DiffAttention" in out
    assert main(["models", "vit_d*"]) == 0
    assert "vit_dwee" not in capsys.readouterr().out


@pytest.mark.parametrize("by_name", [True, False])
def test_a_vit_like_model_of_no_family_is_refused_with_its_reason(by_name, tmp_path):
    needle = "a relative position bias table per head"
    with pytest.raises(vitcompress.VitCompressError, match=needle) as e:
        if by_name:
            create_source_model("beit_base_patch16_224", depth=1, img_size=32)
        else:
            vitcompress.prune(timm.create_model("beit_base_patch16_224", depth=1, img_size=32), flops_reduction=0.3)
    assert "\n" not in str(e.value)


def test_docs_coverage_table_is_the_generated_one():
    """The rows of the ViT and EVA families (``python -m vitcompress.families.coverage``) are in docs/pruning.md."""
    text = DOCS.read_text()
    rows = [r for r in coverage_rows() if r.split("`")[1] in ("vit", "vit_parallel", "hybrid", "eva")]
    missing = [r for r in rows if r not in text]
    assert not missing, "regenerate with python -m vitcompress.families.coverage:\n" + "\n".join(missing)
