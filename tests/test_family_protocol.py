"""The family protocol: required pieces vs optional capabilities, registration keeps the match
order, a family is resolved once per ``prune`` call, and one model resolver."""

import sys

import pytest
import torch
from helpers import synthetic_table, tiny
from timm.models.vision_transformer import VisionTransformer

import vitcompress
from vitcompress import families
from vitcompress.artifact import save
from vitcompress.counting import count
from vitcompress.errors import VitCompressError
from vitcompress.families import FAMILIES, Family, ViTFamily, family_of, find, register, unregister
from vitcompress.families.base import FamilyProtocol, MethodHooks
from vitcompress.families.vit import counting as vit_counting
from vitcompress.models import create_source_model
from vitcompress.pruner import PruneConfig, load_for_pruning
from vitcompress.resolve import Resolved, resolve, resolve_model
from vitcompress.tokens import apply_tokens, schedule_of


class MarkedViT(VisionTransformer):
    """A plain timm ViT under another type: only a family that knows the type claims it first."""


class MarkedFamily(ViTFamily):
    name = "marked"
    title = "MarkedViT (test family)"

    def owns_name(self, name):
        return name == "marked_vit"

    def list_models(self, pattern="*"):
        return []

    def refused_models(self, pattern="*"):
        return {}

    def recognises(self, model):
        return isinstance(model, MarkedViT)


def marked():
    """A tiny ViT recorded as a timm model (so its family can rebuild it), typed ``MarkedViT``."""
    torch.manual_seed(0)
    model = create_source_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5
    )
    model.__class__ = MarkedViT
    return model


@pytest.fixture
def cleanup():
    names = []
    yield names
    for n in names:
        if n in FAMILIES:
            unregister(n)


def test_a_family_registered_through_FAMILIES_register_is_matched(cleanup):
    """The documented ``FAMILIES.register(name)(family)`` keeps the match order: last by default,
    before ``before`` when given, and removal takes the family out of the order."""
    order = [f.name for f in families.families()]
    model = marked()
    assert family_of(model).name == "vit"  # nobody knows MarkedViT: the plain ViT family claims it
    cleanup.append("marked")
    FAMILIES.register("marked")(MarkedFamily())
    assert [f.name for f in families.families()] == [*order, "marked"]
    assert family_of(model).name == "vit"  # matched, but after the plain ViT (registered last)
    unregister("marked")
    assert [f.name for f in families.families()] == order
    FAMILIES.register("marked", before="vit")(MarkedFamily())
    names = [f.name for f in families.families()]
    assert names.index("marked") == names.index("vit") - 1 and len(names) == len(order) + 1
    assert family_of(model).name == "marked" and find(model).name == "marked"
    assert family_of(tiny("vit")).name == "vit"  # the other models are unaffected
    unregister("marked")
    register(MarkedFamily(), before="vit")  # the module-level helper is the same registration
    assert family_of(model).name == "marked"
    unregister("marked")
    assert [f.name for f in families.families()] == order and family_of(model).name == "vit"
    with pytest.raises(VitCompressError, match="unknown model family 'nope'"):
        FAMILIES.register("marked", before="nope")
    assert "marked" not in FAMILIES


def test_a_family_overrides_only_what_it_has(cleanup):
    """The required protocol is abstract; counting comes from a ``counting`` module or the three
    methods; the seed methods are refused where ``parts`` is not given."""
    required = {
        "owns_name",
        "recognises",
        "input_size",
        "image_stride",
        "spec",
        "build",
        "groups",
        "slice_state",
        "arch_info",
    }
    assert set(FamilyProtocol.__abstractmethods__) == required

    class Incomplete(Family):
        name = "incomplete"

        def owns_name(self, name):
            return False

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()

    vit = FAMILIES.get("vit")

    class Delegating(Family):
        """Everything required delegates to the ViT family; counting by the module; no ``parts``."""

        name = "delegating"
        title = "test"
        counting = vit_counting

        def owns_name(self, name):
            return False

        def recognises(self, model):
            return isinstance(model, MarkedViT)

        input_size = ViTFamily.input_size
        image_stride = ViTFamily.image_stride
        spec = ViTFamily.spec
        groups = ViTFamily.groups
        slice_state = ViTFamily.slice_state
        stem_axis = ViTFamily.stem_axis
        arch_info = ViTFamily.arch_info

        def build(self, source, spec, device="meta"):
            model = vit.build(source, spec, device)
            model.__class__ = MarkedViT
            return model

    fam = Delegating()
    assert fam.missing() == [] and type(fam).parts is MethodHooks.parts
    model = marked()
    info = fam.arch_info(model)
    spec = fam.spec(model)
    # the base counts delegate to the module: equal to the ViT family's own
    assert fam.macs(spec, info) == vit.macs(spec, info) and fam.params(spec, info) == vit.params(spec, info)
    assert fam.block_macs(spec, info) == vit.block_macs(spec, info)
    with pytest.raises(VitCompressError, match="method ihp does not run on the delegating family; use method=oneshot"):
        fam.check_method(model, "ihp")
    vit.check_method(tiny("vit"), "ihp")  # a family that names its parts runs them

    class NoCounting(Delegating):
        name = "nocounting"
        counting = None

    assert NoCounting().missing() == ["block_macs", "macs", "params"]
    with pytest.raises(TypeError, match="does not implement block_macs, macs, params"):
        register(NoCounting())
    assert "nocounting" not in FAMILIES
    cleanup.append("delegating")
    register(Delegating(), before="vit")
    assert family_of(model).name == "delegating"
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=("heads", "mlp"), round_to=1)
    assert family_of(res.model).name == "delegating"
    x = torch.randn(2, 3, 16, 16)
    assert res.model(x).shape == (2, 5)
    with pytest.raises(VitCompressError, match="does not run on the delegating family"):
        vitcompress.prune(model, flops_reduction=0.3, method="ihp", granularity=("heads", "mlp"))


def counted_family_of(monkeypatch) -> list:
    """Replace ``family_of`` in every vitcompress module that imported it by a counting wrapper."""
    calls: list = []
    original = families.family_of

    def counting(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return original(*args, **kwargs)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("vitcompress") and getattr(mod, "family_of", None) is original:
            monkeypatch.setattr(mod, "family_of", counting)
    return calls


def test_prune_asks_for_the_family_once(monkeypatch, tmp_path):
    model = tiny("vit")
    calls = counted_family_of(monkeypatch)
    res = vitcompress.prune(
        model, flops_reduction=0.3, importance="taylor", calib_images=8, batch_size=8, output=tmp_path / "p"
    )
    assert calls == ["VisionTransformer"]
    assert (tmp_path / "p" / "vitcompress.json").is_file()
    assert res.meta.history[-1]["achieved"]["macs_reduction"] == pytest.approx(0.3, abs=0.015)
    calls.clear()
    vitcompress.prune(
        "vit_tiny_patch16_224", flops_reduction=0.3, importance="l1", img_size=32, num_classes=3, round_to=1
    )
    assert calls == ["VisionTransformer"]  # by name: asked once, when the model is created
    art = save(apply_tokens(tiny("vit"), "0.7@1,2", method="topk"), tmp_path / "tokens")
    calls.clear()
    res = vitcompress.prune(art, flops_reduction=0.3, importance="l1", round_to=1, output=tmp_path / "p2")
    assert calls == ["VisionTransformer"]  # an artifact with a token schedule: loaded, pruned, re-applied
    assert res.meta.tokens == schedule_of(res.model).to_dict() and res.meta.tokens["keep"]
    calls.clear()
    count(model)
    count(model, family=FAMILIES.get("vit"))
    assert calls == ["VisionTransformer"]  # the wrapper sees the lower layers' own look-ups


@pytest.mark.parametrize(
    "method, options", [("ihp", {"steps": 1}), ("gohsp", {"rounds": 1, "steps_per_round": 1}), ("amap", {"steps": 1})]
)
def test_a_method_prune_asks_for_the_family_once(monkeypatch, method, options):
    """The family resolved by the pruner reaches the method's every step (calibration, scales,
    indicators, cost model, projections, selection): no step asks again."""
    model = tiny("vit")
    calls = counted_family_of(monkeypatch)
    res = vitcompress.prune(
        model,
        flops_reduction=0.3,
        method=method,
        method_options=options,
        granularity=("heads", "mlp"),
        calib_images=8,
        batch_size=8,
    )
    assert calls == ["VisionTransformer"]
    assert res.meta.history[-1]["method"] == method
    assert res.meta.history[-1]["achieved"]["macs_reduction"] == pytest.approx(0.3, abs=0.015)


def test_a_latency_prune_asks_for_the_family_once(monkeypatch):
    """The latency budget (the table's check, cost and ranking) uses the family the pruner resolved."""
    model = tiny("vit")
    table = synthetic_table(model)
    calls = counted_family_of(monkeypatch)
    res = vitcompress.prune(model, latency_reduction=0.3, importance="l1", table=table)
    assert calls == ["VisionTransformer"]
    assert res.meta.history[-1]["latency"]["predicted_reduction"] == pytest.approx(0.3, abs=0.015)


def test_resolved_carries_the_family_spec_and_schedule(tmp_path):
    model = apply_tokens(tiny("vit"), "0.5@1", method="topk")
    art = save(model, tmp_path / "a")
    ctx = resolve(art)
    assert isinstance(ctx, Resolved) and ctx.family is FAMILIES.get("vit")
    assert ctx.spec == FAMILIES.get("vit").spec(ctx.model) and ctx.schedule is not None
    assert ctx.schedule.to_dict() == schedule_of(model).to_dict()
    cfg = PruneConfig(flops_reduction=0.3, importance="l1")
    pruned = load_for_pruning(art, cfg)  # the schedule is set aside, the module plain
    assert pruned.schedule.to_dict() == ctx.schedule.to_dict() and schedule_of(pruned.model) is None


def test_the_export_source_goes_through_the_one_resolver(tmp_path):
    from vitcompress.exporters.source import load_source

    model = apply_tokens(tiny("vit"), "0.5@1", method="topk")
    art = save(model, tmp_path / "a")
    net, meta, label = load_source(art)
    assert schedule_of(net).to_dict() == schedule_of(model).to_dict() and meta.tokens == schedule_of(model).to_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), resolve_model(art)(x), atol=0, rtol=0)
    same, _, label = load_source(model)
    assert label == "<module>" and same is not model
    with pytest.raises(VitCompressError, match="does not exist"):
        load_source(tmp_path / "nope")
    with pytest.raises(VitCompressError, match="artifact 'vit_tiny_patch16_224' does not exist"):
        load_source("vit_tiny_patch16_224")  # a model name is not looked up for an export
