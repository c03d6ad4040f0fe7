"""The prune API end to end: equivalence to the masked original, artifacts, iterative pruning."""

import json

import pytest
import torch
from helpers import tiny

import vitcompress
from vitcompress.artifact import read_meta
from vitcompress.plan import Plan
from vitcompress.reference import mask_model

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def same(a, b, atol=1e-5):
    with torch.no_grad():
        torch.testing.assert_close(a(X), b(X), atol=atol, rtol=0)


@pytest.mark.parametrize(
    "importance", ["taylor", "taylor-sum", "taylor-sq", "taylor-act", "fisher", "l1", "l2", "random"]
)
def test_prune_matches_masked_original(importance):
    model = tiny("deit_distilled")
    res = vitcompress.prune(
        model,
        flops_reduction=0.35,
        importance=importance,
        calib_images=16,
        granularity=["heads", "qk", "v", "mlp", "depth"],
        round_to=4,
    )
    assert abs(res.achieved - 0.35) <= 0.015
    same(res.model, mask_model(model, res.meta.plan))


def test_artifact_round_trip(tmp_path):
    model = tiny("reg_gap")
    out = tmp_path / "art"
    res = vitcompress.prune(
        model,
        params_reduction=0.3,
        importance="taylor",
        calib_images=8,
        granularity=["heads", "mlp", "embed"],
        output=out,
    )
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "vitcompress.json"]
    loaded = vitcompress.load(out)
    same(loaded, res.model, atol=0)
    d = json.loads((out / "vitcompress.json").read_text())
    for key in ("format_version", "source", "spec", "plan", "counts_source", "counts", "history"):
        assert key in d
    assert d["source"]["name"] == "vit_base_patch16_reg4_gap_256"
    assert d["source"]["kwargs"]["embed_dim"] == 64
    assert d["history"][0]["config"]["importance"] == "taylor"
    assert d["history"][0]["config"]["seed"] == 0
    assert d["counts"]["params"] == sum(p.numel() for p in loaded.parameters())
    assert 1 - d["counts"]["params"] / d["counts_source"]["params"] == pytest.approx(res.achieved)
    assert Plan.from_dict(d["plan"]).embed == res.meta.plan.embed


def test_iterative_pruning_composes_to_source_numbering(tmp_path):
    model = tiny("vit")
    first = vitcompress.prune(
        model,
        flops_reduction=0.3,
        importance="random",
        seed=1,
        granularity=["heads", "qk", "v", "mlp", "embed"],
        round_to=1,
        output=tmp_path / "a",
    )
    second = vitcompress.prune(
        tmp_path / "a",
        flops_reduction=0.3,
        importance="random",
        seed=2,
        granularity=["heads", "mlp", "embed", "depth"],
        round_to=1,
        output=tmp_path / "b",
    )
    meta = read_meta(tmp_path / "b")
    assert len(meta.history) == 2
    # the composed plan, applied to the ORIGINAL model, reproduces the twice-pruned model
    same(second.model, mask_model(model, meta.plan))
    same(vitcompress.load(tmp_path / "b"), second.model, atol=0)
    assert set(meta.plan.embed) <= set(first.meta.plan.embed)


def test_existing_output_is_refused_and_force_overwrites(tmp_path):
    model = tiny("vit")
    out = tmp_path / "art"
    vitcompress.prune(model, flops_reduction=0.2, importance="l1", output=out)
    with pytest.raises(vitcompress.VitCompressError, match="already exists"):
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", output=out)
    vitcompress.prune(model, flops_reduction=0.3, importance="l1", output=out, force=True)
    assert abs(read_meta(out).history[-1]["target"]["reduction"] - 0.3) < 1e-9
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temp folders left behind


def test_taylor_sum_score_is_first_order_loss_change():
    """taylor-sum: |sum w*dL/dw| over an MLP neuron equals |dL/d(alpha)| when the neuron is scaled by alpha."""
    from vitcompress.data import calibration_loader
    from vitcompress.families import build_groups
    from vitcompress.scorers import SCORERS

    model = tiny("vit").double()
    loader = calibration_loader("digits", model, n_images=8, batch_size=8)
    (group,) = [g for g in build_groups(model, ["mlp"]) if g.layer == 1]
    score = SCORERS.get("taylor-sum")(model, [group], loader=loader, labels="true")[0]
    x, y = next(iter(loader))
    x = x.double()
    fc1, fc2, j = model.blocks[1].mlp.fc1, model.blocks[1].mlp.fc2, 5

    def loss_at(alpha):
        m = model
        with torch.no_grad():
            saved = fc1.weight[j].clone(), fc1.bias[j].clone(), fc2.weight[:, j].clone()
            fc1.weight[j] *= alpha
            fc1.bias[j] *= alpha
            fc2.weight[:, j] *= alpha
            loss = torch.nn.functional.cross_entropy(m(x), y)
            fc1.weight[j], fc1.bias[j], fc2.weight[:, j] = saved
        return loss.item()

    eps = 1e-4
    fd = (loss_at(1 + eps) - loss_at(1 - eps)) / (2 * eps)
    assert score[j].item() == pytest.approx(abs(fd), rel=1e-4)


def _taylor_scores(model, loader, labels):
    from vitcompress.families import build_groups
    from vitcompress.scorers import SCORERS

    groups = build_groups(model, ["heads", "mlp", "embed"])
    return SCORERS.get("taylor")(model, groups, loader=loader, labels=labels)


def _same_scores(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_taylor_pseudo_labels_are_the_unpruned_models_predictions():
    """labels='auto' uses the data's labels when the class counts match, else the model's argmax."""
    from torch.utils.data import DataLoader, TensorDataset

    from vitcompress.data import calibration_loader

    foreign = tiny("vit", num_classes=7)  # digits have 10 classes
    loader = calibration_loader("digits", foreign, n_images=16, batch_size=8)
    assert loader.dataset.num_classes == 10
    auto = _taylor_scores(foreign, loader, "auto")
    assert _same_scores(auto, _taylor_scores(foreign, loader, "pseudo"))
    # the same images labelled with the model's own predictions, scored as true labels: identical
    with torch.no_grad():
        batches = [(x, foreign(x).argmax(-1)) for x, _ in loader]
    relabelled = DataLoader(
        TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])),
        batch_size=8,
        shuffle=False,
    )
    assert _same_scores(auto, _taylor_scores(foreign, relabelled, "true"))
    # these 16 images happen to have labels < 7, so the data's labels can be scored too: other scores
    assert max(y.max() for _, y in loader) < 7
    assert not _same_scores(auto, _taylor_scores(foreign, loader, "true"))

    # with matching class counts 'auto' takes the data's labels, and pseudo-labels give other scores
    native = tiny("vit")  # 10 classes
    loader = calibration_loader("digits", native, n_images=16, batch_size=8)
    auto, pseudo = _taylor_scores(native, loader, "auto"), _taylor_scores(native, loader, "pseudo")
    assert _same_scores(auto, _taylor_scores(native, loader, "true"))
    assert not _same_scores(auto, pseudo)
    assert max((a - p).abs().max() / a.abs().max() for a, p in zip(auto, pseudo)) > 0.05


def test_taylor_pseudo_labels_for_foreign_classes():
    model = tiny("vit", num_classes=7)  # digits have 10 classes: the model's predictions are used
    res = vitcompress.prune(model, flops_reduction=0.3, importance="taylor", calib_images=8)
    assert abs(res.achieved - 0.3) <= 0.015
    assert res.meta.history[-1]["config"]["labels"] == "auto"
    explicit = vitcompress.prune(model, flops_reduction=0.3, importance="taylor", calib_images=8, labels="pseudo")
    assert explicit.meta.plan.to_dict() == res.meta.plan.to_dict()


@pytest.mark.slow
def test_deit_small_worked_example(tmp_path):
    torch.manual_seed(0)
    src = vitcompress.create_source_model("deit_small_patch16_224")
    res = vitcompress.prune(
        src, flops_reduction=0.462, importance="taylor", calib_images=8, batch_size=8, output=tmp_path / "d"
    )
    assert abs(res.achieved - 0.462) <= 0.015
    loaded = vitcompress.load(tmp_path / "d")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), res.model(x), atol=0, rtol=0)
        torch.testing.assert_close(loaded(x), mask_model(src, res.meta.plan)(x), atol=1e-5, rtol=0)
    for blk in loaded.blocks:
        assert blk.attn.qk_dim % 8 == 0 and blk.attn.v_dim % 8 == 0 and blk.mlp.fc1.out_features % 8 == 0
        assert blk.attn.scale == pytest.approx(64**-0.5)


@pytest.mark.slow
def test_deit_base_all_granularities_exact():
    torch.manual_seed(1)
    src = vitcompress.create_source_model("deit_base_patch16_224")
    res = vitcompress.prune(
        src, flops_reduction=0.5, importance="l2", granularity=["heads", "qk", "v", "mlp", "embed", "depth"]
    )
    assert abs(res.achieved - 0.5) <= 0.015
    assert res.model.embed_dim % 8 == 0
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), mask_model(src, res.meta.plan)(x), atol=1e-5, rtol=0)


def test_max_memory_prunes_to_the_same_plan():
    """A memory budget small enough for one image per backward pass gives the plan of whole batches
    (same scores up to float rounding), and the budget is recorded; a budget of 0 is refused."""
    model = tiny("vit", seed=3)
    kw = dict(flops_reduction=0.35, importance="taylor-abs", calib_images=12, batch_size=6)
    whole = vitcompress.prune(model, max_memory=1000.0, **kw)
    small = vitcompress.prune(model, max_memory=1e-6, **kw)
    assert small.meta.plan == whole.meta.plan
    assert small.meta.history[-1]["config"]["max_memory"] == 1e-6
    with pytest.raises(vitcompress.VitCompressError, match="max_memory") as e:
        vitcompress.prune(model, max_memory=0.0, **kw)
    assert list(e.value.params) == ["max_memory"]
