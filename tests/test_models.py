"""Model creation: supported families, clear errors, checkpoints and hub weights."""

import pytest
import torch

from vitcompress.errors import VitCompressError
from vitcompress.models import check_supported, create_source_model, list_models


def test_supported_families_create():
    for name in (
        "vit_tiny_patch16_224",
        "deit_tiny_distilled_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_reg4_gap_256",
        "deit3_small_patch16_224",
    ):
        m = create_source_model(name, img_size=32, depth=1)
        assert m.vitcompress_meta.source.name == name


def test_list_models_filters_to_supported_families():
    names = list_models("*patch16_224")
    assert "deit_base_patch16_224" in names and "vit_large_patch16_224" in names
    assert not any(n.startswith(("swin", "resnet", "convnext")) for n in names)


@pytest.mark.parametrize(
    "name,kwargs,needle",
    [
        ("vit_dwee_patch16_reg1_gap_256", {"depth": 1, "img_size": 32}, "DiffAttention"),
        ("vit_base_patch16_rpn_224", {"depth": 1, "img_size": 32, "act_layer": "prelu"}, "activation PReLU"),
        ("swinv2_tiny_window8_256", {}, "unsupported architecture"),
        ("convnext_tiny", {}, "unsupported architecture"),
    ],
)
def test_unsupported_architectures_name_the_supported_families(name, kwargs, needle):
    with pytest.raises(VitCompressError, match=needle) as e:
        create_source_model(name, **kwargs)
    assert "supported: timm VisionTransformer" in str(e.value)


def test_pretrained_without_hub_is_a_clear_error(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:  # what the hub client raises on a machine without access
            raise OSError("We couldn't connect to the model hub to load this file")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(VitCompressError, match="checkpoint=FILE") as e:
        create_source_model("deit_tiny_patch16_224", pretrained=True)
    assert "\n" not in str(e.value)


def test_safetensors_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    a = create_source_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    save_file(a.state_dict(), str(tmp_path / "w.safetensors"))
    b = create_source_model(
        "vit_tiny_patch16_224", img_size=32, num_classes=10, checkpoint=str(tmp_path / "w.safetensors")
    )
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(VitCompressError, match="does not exist"):
        create_source_model("vit_tiny_patch16_224", checkpoint=str(tmp_path / "nope.pth"))


def test_check_supported_rejects_other_modules():
    with pytest.raises(VitCompressError, match="not a VisionTransformer"):
        check_supported(torch.nn.Linear(2, 2))
