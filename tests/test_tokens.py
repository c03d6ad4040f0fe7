"""Token reducers: counts, prefix tokens, sizes, identity, per-image selection, counting, artifacts."""

import copy
import random

import pytest
import torch
from helpers import random_plan, tiny

import vitcompress
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model
from vitcompress.tokens import (
    REDUCERS,
    apply_tokens,
    parse_schedule,
    remove_tokens,
    schedule_of,
    token_counts,
    token_macs,
)

# (method, schedule): every reducer, each schedule form
CASES = [
    ("topk", "0.7@1,2"),
    ("topk-vpa", "0.7@1;0.5@2"),
    ("topk-vpa", "rate=0.2"),
    ("evit", "0.6@1,3"),
    ("tome", "merge=5"),
    ("etps", "0.5@1,2"),
]
IDENTITY = {"topk": "1.0@0,1,2", "topk-vpa": "1.0@0,1,2", "evit": "1.0@0,1,2", "tome": "merge=0", "etps": "1.0@0,1,2"}
X = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(1))  # 36 patch tokens


def _model(kind="vit", **kw):
    return tiny(kind, img_size=48, **kw)


def _run_recorded(model, x=X):
    model.blocks.record = []
    with torch.no_grad():
        y = model(x)
    rec, model.blocks.record = model.blocks.record, None
    return y, rec


def test_registry_lists_every_reducer():
    assert REDUCERS.list() == ["etps", "evit", "tome", "topk", "topk-vpa"]
    assert REDUCERS.list("topk*") == ["topk", "topk-vpa"]


@pytest.mark.parametrize("method,schedule", CASES)
@pytest.mark.parametrize("kind", ["vit", "deit_distilled", "reg_gap"])
def test_token_counts_per_block_match_the_running_model(kind, method, schedule):
    model = apply_tokens(_model(kind), schedule, method=method)
    _, rec = _run_recorded(model)
    counts = token_counts(model)
    assert [t for t, _ in rec] == counts[1:]  # tokens leaving each block
    p = model.num_prefix_tokens
    sched = parse_schedule(schedule, method)
    for b in sched.reducing_blocks(4):
        assert counts[b + 1] < counts[b]  # the scheduled blocks really reduce
    if sched.kind == "keep":
        k = sched.keep[1]
        n_in = counts[1] - p
        extra = 1 if method == "evit" else 0  # EViT's fused token
        assert counts[2] - p == -(-int(round(k * 1000)) * n_in // 1000) + extra


def test_counts_follow_the_keep_rule_exactly():
    model = apply_tokens(_model(), "0.7@1,2", method="topk")
    assert token_counts(model) == [37, 37, 1 + 26, 1 + 19, 20]  # ceil(0.7 * 36) = 26, ceil(0.7 * 26) = 19


@pytest.mark.parametrize("method", sorted(IDENTITY))
def test_prefix_tokens_are_never_removed_moved_or_changed(method):
    torch.manual_seed(0)
    prefix, n, c = 3, 20, 16
    kw = {"merge": 6} if method == "tome" else {"keep": 0.4}
    red = REDUCERS.get(method)(prefix=prefix, **kw)
    x = torch.randn(2, prefix + n, c)
    size = torch.rand(2, prefix + n, 1) + 0.5
    scores = torch.rand(2, n).softmax(-1)
    metric = torch.randn(2, prefix + n, 8)
    out, out_size = red(x, size if red.tracks_size else None, scores, metric)
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    if out_size is not None:
        assert torch.equal(out_size[:, :prefix], size[:, :prefix])
        # merging and fusing keep the total mass of the patch tokens
        torch.testing.assert_close(out_size[:, prefix:].sum(1), size[:, prefix:].sum(1))
    assert out.shape[1] == prefix + red.out_count(n)


@pytest.mark.parametrize("method,schedule", [c for c in CASES if c[0] != "topk"])
def test_sizes_sum_to_the_patch_count_in_every_block(method, schedule):
    model = apply_tokens(_model("deit_distilled"), schedule, method=method)
    _, rec = _run_recorded(model)
    p = model.num_prefix_tokens
    sizes = [s for _, s in rec if s is not None]
    assert sizes, "a size-tracking reducer must record sizes"
    for s in sizes:
        torch.testing.assert_close(s[:, p:].sum(1).flatten(), torch.full((len(X),), 36.0))
        torch.testing.assert_close(s[:, :p], torch.ones_like(s[:, :p]))


@pytest.mark.parametrize("method", sorted(IDENTITY))
@pytest.mark.parametrize("kind", ["vit", "deit_distilled", "reg_gap", "layerscale_noqkvbias"])
def test_keep_one_or_zero_merges_is_the_identity(kind, method):
    model = _model(kind)
    with torch.no_grad():
        ref = model(X)
        out = apply_tokens(copy.deepcopy(model), IDENTITY[method], method=method)(X)
    assert (out - ref).abs().max() <= 1e-6


@pytest.mark.parametrize("method,schedule", CASES)
def test_each_image_has_its_own_selection(method, schedule):
    model = apply_tokens(_model(), schedule, method=method)
    with torch.no_grad():
        batch = model(X)
        single = torch.cat([model(X[i : i + 1]) for i in range(len(X))])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-5)
    # and the selection depends on the image: a reduced model is not the unreduced one
    with torch.no_grad():
        assert (batch - remove_tokens(copy.deepcopy(model))(X)).abs().max() > 1e-3


@pytest.mark.parametrize("method,schedule", CASES)
@pytest.mark.parametrize("kind", ["vit", "reg_gap"])
def test_analytic_macs_match_the_flop_counter(kind, method, schedule):
    model = apply_tokens(_model(kind), schedule, method=method)
    analytic, measured = token_macs(model), measured_macs(model)
    assert abs(analytic - measured) <= 0.01 * measured
    assert count(model).macs == analytic  # vitcompress.count sees the schedule
    assert analytic < count(remove_tokens(copy.deepcopy(model))).macs


@pytest.mark.parametrize("method,schedule", [("topk-vpa", "0.7@1,2"), ("tome", "merge=4"), ("etps", "rate=0.25")])
def test_width_pruned_plus_tokens_are_counted_right(method, schedule):
    pruned = vitcompress.prune(_model(), flops_reduction=0.3, importance="l1", round_to=1).model
    model = apply_tokens(pruned, schedule, method=method)
    assert abs(token_macs(model) - measured_macs(model)) <= 0.01 * measured_macs(model)
    with torch.no_grad():
        assert model(X).shape == (3, 10)


def test_artifact_round_trip_keeps_the_schedule(tmp_path):
    from vitcompress.report import format_info

    model = apply_tokens(_model("deit_distilled"), "0.6@1,2", method="evit")
    path = vitcompress.save(model, tmp_path / "art")
    meta = vitcompress.read_meta(path)
    assert meta.tokens["method"] == "evit" and meta.tokens["keep"] == {"1": 0.6, "2": 0.6}
    assert meta.counts["macs"] == token_macs(model)
    loaded = vitcompress.load(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=1e-6)
    assert token_counts(loaded) == token_counts(model)
    table = format_info(meta)
    assert "token reduction evit 0.6@1,2" in table and "38>25" in table  # 36 + 2 prefix -> 22 + fused + 2


def test_pruning_a_token_reduced_model_keeps_its_schedule():
    model = apply_tokens(_model(), "0.7@1,2", method="topk-vpa")
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", round_to=1)
    assert schedule_of(res.model).spec == "0.7@1,2"
    assert token_counts(res.model) == token_counts(model)
    assert res.meta.tokens["method"] == "topk-vpa"
    with pytest.raises(VitCompressError, match="prune depth first"):
        vitcompress.prune(model, flops_reduction=0.3, importance="l1", granularity=["depth"])


@pytest.mark.parametrize("method,schedule", [("tome", "merge=6"), ("etps", "0.5@1,2")])
@pytest.mark.parametrize("kinds", [("qk",), ("heads", "qk", "v", "mlp", "embed")])
def test_merging_on_a_sliced_model_equals_merging_on_its_masked_original(method, schedule, kinds):
    """The merge metric (keys of every head side by side) gives a width-pruned model the same
    matches as its masked original, also when each head keeps different q/k dims."""
    model = _model()
    plan = random_plan(model, random.Random(5), kinds)
    sliced = apply_tokens(slice_model(model, plan), schedule, method=method)
    ref = mask_model(apply_tokens(copy.deepcopy(model), schedule, method=method), plan)
    y, rec = _run_recorded(sliced)
    want, rec_ref = _run_recorded(ref)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=0)
    for (n, size), (n_ref, size_ref) in zip(rec, rec_ref):  # the same tokens merged into the same sizes
        assert n == n_ref and (size is None) == (size_ref is None)
        assert size is None or torch.equal(size, size_ref)
    assert count(sliced).macs == measured_macs(sliced)


@pytest.mark.parametrize("method", [None, "ihp"])
def test_the_budget_of_a_token_reduced_model_counts_its_schedule(method, tmp_path):
    """The reduction asked for is the reduction of the artifact's own MACs, schedule included."""
    model = apply_tokens(_model(depth=6), "0.25@0", method="topk")
    opts = {} if method is None else {"method": method, "method_options": {"steps": 2}, "calib_images": 8}
    res = vitcompress.prune(model, flops_reduction=0.5, importance="l1", output=tmp_path / "a", **opts)
    real = 1 - count(res.model).macs / count(model).macs  # both counted with their schedule
    assert res.achieved == pytest.approx(real, abs=1e-12) and abs(real - 0.5) <= 0.015
    step = vitcompress.artifact.read_meta(tmp_path / "a").history[-1]
    assert step["before"]["macs"] == count(model).macs and step["after"]["macs"] == count(res.model).macs
    assert step["achieved"]["macs_reduction"] == pytest.approx(real, abs=1e-12)
    # counted without the schedule, the same widths remove another share (what the budget must not use)
    plain = 1 - count(res.model, with_schedule=False).macs / count(model, with_schedule=False).macs
    assert method is not None or abs(plain - real) > 0.015


@pytest.mark.parametrize(
    "spec,method,match",
    [
        ("0.7@1,9", "topk", "names block 9, but the model has blocks 0..3"),
        ("rate=1.2", "topk-vpa", r"outside \[0, 1\)"),
        ("rate=-0.1", "etps", r"outside \[0, 1\)"),
        ("1.5@2", "evit", r"outside \(0, 1\]"),
        ("0@2", "evit", r"outside \(0, 1\]"),
        ("rate=0.1@7", "topk", "names block 7"),
        ("merge=2.5", "tome", "whole number"),
        ("0.7", "topk", "lacks '@BLOCKS'"),
        ("0.7@1", "tome", "does not take a KEEP@BLOCKS schedule"),
        ("merge=4", "topk", "does not take a merge=N schedule"),
        ("0.7@1", "dynamicvit", "unknown token reducer"),
    ],
)
def test_bad_schedules_are_one_line_errors(spec, method, match):
    with pytest.raises(VitCompressError, match=match) as e:
        apply_tokens(_model(), spec, method=method)
    assert "\n" not in str(e.value)


def test_windowed_attention_is_refused():
    from timm.models.vision_transformer import Block

    model = _model()

    class WindowBlock(Block):  # stands for any restructured attention block
        pass

    model.blocks[1].__class__ = WindowBlock
    with pytest.raises(VitCompressError, match="global-attention timm ViT blocks, this model has WindowBlock"):
        apply_tokens(model, "0.7@2", method="topk")


@pytest.mark.parametrize("keep", [0.99, 0.97, 0.5])
def test_evit_always_prunes_at_least_the_token_it_fuses(keep):
    model = apply_tokens(_model(), f"{keep}@1", method="evit")  # 36 patch tokens enter block 1
    _, rec = _run_recorded(model)
    n_out = rec[1][0] - 1
    assert n_out == min(-(-int(round(keep * 1000)) * 36 // 1000), 35) + 1 <= 36
    assert token_macs(model) <= count(remove_tokens(copy.deepcopy(model))).macs + 4 * 37 * 16  # + score row only
