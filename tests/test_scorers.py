"""The scorer formulas against brute-force references computed here, and which labels they use."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny
from torch.utils.data import DataLoader, TensorDataset

import vitcompress
from vitcompress.data import calibration_loader
from vitcompress.families import build_groups
from vitcompress.report import format_prune_summary
from vitcompress.scorers import ALIASES, SCORERS, label_source

LAYER = 1
KINDS = ["heads", "qk", "v", "mlp"]


def _setup(batches=3, batch_size=4, seed=0):
    model = tiny("vit", seed=seed).double()
    loader = calibration_loader("digits", model, n_images=batches * batch_size, batch_size=batch_size)
    return model, loader


def _slices(model, kind):
    """Element -> list of (param name, index tuple) it owns, written out by hand for block LAYER."""
    blk = model.blocks[LAYER]
    H, hd, M = blk.attn.num_heads, blk.attn.head_dim, blk.mlp.fc1.out_features
    p = f"blocks.{LAYER}."
    qkv_w, qkv_b, proj_w = p + "attn.qkv.weight", p + "attn.qkv.bias", p + "attn.proj.weight"
    out = {}
    if kind == "mlp":
        for j in range(M):
            out[(j,)] = [
                (p + "mlp.fc1.weight", (j,)),
                (p + "mlp.fc1.bias", (j,)),
                (p + "mlp.fc2.weight", (slice(None), j)),
            ]
    for h in range(H):
        q, k, v = (
            slice(h * hd, (h + 1) * hd),
            slice(H * hd + h * hd, H * hd + (h + 1) * hd),
            slice(2 * H * hd + h * hd, 2 * H * hd + (h + 1) * hd),
        )
        if kind == "heads":
            out[(h,)] = [(n, (r,)) for r in (q, k, v) for n in (qkv_w, qkv_b)] + [
                (proj_w, (slice(None), slice(h * hd, (h + 1) * hd)))
            ]
        for d in range(hd):
            if kind == "qk":
                out[(h, d)] = [(n, (r,)) for r in (h * hd + d, H * hd + h * hd + d) for n in (qkv_w, qkv_b)]
            if kind == "v":
                out[(h, d)] = [(qkv_w, (2 * H * hd + h * hd + d,)), (qkv_b, (2 * H * hd + h * hd + d,))] + [
                    (proj_w, (slice(None), h * hd + d))
                ]
    return out


def _per_batch_grads(model, loader):
    """Per batch: {name: d(mean CE of the batch)/d(param)}, with plain autograd."""
    params = dict(model.named_parameters())
    out = []
    for x, y in loader:
        loss = F.cross_entropy(model(x.double()), y)
        names = list(params)
        g = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        out.append({n: (gi if gi is not None else torch.zeros_like(params[n])) for n, gi in zip(names, g)})
    return out


def _scores(name, model, loader, kind, labels="true"):
    groups = [g for g in build_groups(model, [kind]) if g.layer == LAYER]
    return SCORERS.get(name)(model, groups, loader=loader, labels=labels)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_taylor_formulas_match_per_batch_autograd(kind):
    model, loader = _setup()
    params = dict(model.named_parameters())
    grads = _per_batch_grads(model, loader)
    assert len(grads) == 3
    ref = {"taylor-abs": {}, "taylor-sq": {}, "taylor-sum": {}}
    for e, sl in _slices(model, kind).items():
        prods = [[(params[n][i] * g[n][i]).detach() for n, i in sl] for g in grads]  # per batch, per slice
        ref["taylor-abs"][e] = sum(float(t.abs().sum()) for b in prods for t in b)
        ref["taylor-sq"][e] = sum(float(t.square().sum()) for b in prods for t in b)
        ref["taylor-sum"][e] = abs(sum(float(t.sum()) for b in prods for t in b))
    for name, want in ref.items():
        got = _scores(name, model, loader, kind)
        for e, v in want.items():
            assert got[e].item() == pytest.approx(v, rel=1e-9, abs=1e-15), (name, kind, e)
    # per batch is not the same as over all batches at once: the three formulas rank differently
    a, s = _scores("taylor-abs", model, loader, kind), _scores("taylor-sum", model, loader, kind)
    assert not torch.allclose(a / a.sum(), s / s.sum(), rtol=0.05)


def _gate_grads(model, loader, kind):
    """Per batch, d(mean CE)/d(gate) for a gate of ones multiplied into each element's output, by hooks."""
    blk = model.blocks[LAYER]
    H, hd = blk.attn.num_heads, blk.attn.head_dim
    out = []
    for x, y in loader:
        if kind == "qk":  # the q.k term of a dim is scaled by gating its q and k outputs
            gate = torch.ones(H, hd, dtype=torch.float64, requires_grad=True)

            def hook(mod, inp, o, gate=gate):
                g = torch.ones(o.shape[-1], dtype=o.dtype)
                g = torch.cat([gate.reshape(-1), gate.reshape(-1), g[2 * H * hd :]])
                return o * g

            h = blk.attn.qkv.register_forward_hook(hook)
        else:  # heads, value dims, MLP neurons: the consumer layer's input channels
            layer = blk.mlp.fc2 if kind == "mlp" else blk.attn.proj
            n = layer.in_features
            gate = torch.ones(
                H if kind == "heads" else (H, hd) if kind == "v" else n, dtype=torch.float64, requires_grad=True
            )

            def pre(mod, args, gate=gate):
                g = gate.repeat_interleave(hd) if kind == "heads" else gate.reshape(-1)
                return (args[0] * g,)

            h = layer.register_forward_pre_hook(pre)
        try:
            loss = F.cross_entropy(model(x.double()), y)
            (g,) = torch.autograd.grad(loss, [gate])
        finally:
            h.remove()
        out.append(g)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_activation_taylor_and_fisher_are_output_gate_gradients_per_batch(kind):
    model, loader = _setup()
    gates = _gate_grads(model, loader, kind)
    act = _scores("taylor-act", model, loader, kind)
    fisher = _scores("fisher", model, loader, kind)
    torch.testing.assert_close(act, sum(g.abs() for g in gates), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(fisher, sum(g.square() for g in gates), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kind", ["mlp", "heads"])
def test_activation_taylor_predicts_the_loss_change_of_removing_a_weak_element(kind):
    """An element whose output is small: |L(removed) - L| equals the score to first order."""
    model, loader = _setup(batches=1, batch_size=16)
    blk = model.blocks[LAYER]
    hd = blk.attn.head_dim
    with torch.no_grad():
        if kind == "mlp":
            j = 3
            blk.mlp.fc2.weight[:, j] *= 1e-3
            cols = [j]
        else:
            j = 2
            blk.attn.proj.weight[:, j * hd : (j + 1) * hd] *= 1e-3
            cols = list(range(j * hd, (j + 1) * hd))
    score = _scores("taylor-act", model, loader, kind)[j].item()
    x, y = next(iter(loader))
    x = x.double()
    with torch.no_grad():
        base = F.cross_entropy(model(x), y).item()
        layer = blk.mlp.fc2 if kind == "mlp" else blk.attn.proj
        saved = layer.weight.clone()
        layer.weight[:, cols] = 0  # the element's output no longer reaches the residual stream
        removed = F.cross_entropy(model(x), y).item()
        layer.weight.copy_(saved)
    assert score > 0
    assert abs(removed - base) == pytest.approx(score, rel=2e-2)


def test_old_taylor_formula_cancels_where_the_per_batch_ones_do_not():
    """Two batches whose gradients point opposite ways: taylor-sum sees (nearly) nothing."""
    model, loader = _setup(batches=1, batch_size=8)
    x, y = next(iter(loader))
    # the same images twice, once with the model's own predictions, once with those shifted by one
    with torch.no_grad():
        pred = model(x.double()).argmax(-1)
    data = TensorDataset(torch.cat([x, x]), torch.cat([pred, (pred + 1) % 10]))
    two = DataLoader(data, batch_size=8, shuffle=False)
    two.dataset.num_classes = 10
    one = DataLoader(TensorDataset(x, pred), batch_size=8)
    for name in ("taylor-abs", "taylor-act"):
        assert _scores(name, model, two, "mlp").sum() > _scores(name, model, one, "mlp").sum()


def test_scorers_leave_the_model_as_it_was():
    model, loader = _setup()
    model.train()
    model.pos_embed.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = build_groups(model, ["heads", "qk", "v", "mlp", "embed", "depth"])
    for name in ("taylor-abs", "taylor-sq", "taylor-sum", "taylor-act", "fisher"):
        scores = SCORERS.get(name)(model, groups, loader=loader)
        assert [tuple(s.shape) for s in scores] == [g.shape for g in groups]
        assert all(bool((s >= 0).all()) and bool(torch.isfinite(s).all()) for s in scores)
    assert model.training
    assert not model.pos_embed.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_names_users_can_type():
    assert ALIASES["magnitude"] == "l1"
    for alias, target in ALIASES.items():
        assert SCORERS.get(alias) is SCORERS.get(target)
    assert "taylor" in SCORERS and SCORERS.get("taylor").__doc__
    for name in SCORERS.list():
        assert SCORERS.get(name).__doc__, name  # every formula states itself


def test_label_source_rule():
    native, foreign = tiny("vit"), tiny("vit", num_classes=7)  # digits have 10 classes
    ln, lf = (calibration_loader("digits", m, n_images=8, batch_size=8) for m in (native, foreign))
    assert label_source(native, ln) == "true"
    assert label_source(foreign, lf) == "pseudo"
    assert label_source(native, ln, "pseudo") == "pseudo"
    assert label_source(foreign, lf, "true") == "true"
    with pytest.raises(vitcompress.VitCompressError, match="labels must be"):
        label_source(native, ln, "both")


@pytest.mark.parametrize(
    "num_classes, importance, labels, used",
    [
        (10, "taylor-abs", "auto", "true"),
        (7, "taylor-abs", "auto", "pseudo"),
        (10, "fisher", "pseudo", "pseudo"),
        (10, "l2", "auto", None),
    ],
)
def test_prune_records_and_prints_which_labels_scored(num_classes, importance, labels, used):
    model = tiny("vit", num_classes=num_classes)
    res = vitcompress.prune(model, flops_reduction=0.3, importance=importance, calib_images=8, labels=labels)
    step = res.meta.history[-1]
    assert step["labels_used"] == used
    assert step["config"]["labels"] == labels
    first = format_prune_summary(res.meta).splitlines()[0]
    assert (f"with {importance} ({used} labels) on" if used else f"with {importance} on") in first


def test_pseudo_labels_are_the_models_predictions_for_every_gradient_scorer():
    model = tiny("vit", num_classes=7)
    loader = calibration_loader("digits", model, n_images=16, batch_size=8)
    with torch.no_grad():
        batches = [(x, model(x).argmax(-1)) for x, _ in loader]
    relabelled = DataLoader(
        TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])), batch_size=8
    )
    groups = build_groups(model, ["heads", "mlp"])
    for name in ("taylor-abs", "taylor-sq", "taylor-act", "fisher"):
        auto = SCORERS.get(name)(model, groups, loader=loader)
        forced = SCORERS.get(name)(model, groups, loader=relabelled, labels="true")
        assert all(torch.equal(a, b) for a, b in zip(auto, forced)), name


GRADIENT_SCORERS = ["taylor-abs", "taylor-sq", "taylor-sum", "taylor-act", "fisher"]


@pytest.mark.parametrize(("name", "labels"), [(n, "auto") for n in GRADIENT_SCORERS] + [("taylor-abs", "pseudo")])
def test_micro_batched_scores_equal_one_batch_scores(name, labels):
    """Batches of 6 run as micro-batches of 1, 4 (a ragged last one) and a memory budget that forces
    micro-batches: the same scores as each batch in one pass (float64: up to summation order), and
    the same plan; with the dataset's labels and with the model's own predictions."""
    from vitcompress.budget import Budget, select

    model, loader = _setup(batches=2, batch_size=6)
    groups = build_groups(model, KINDS)
    scorer = SCORERS.get(name)
    expected = "true" if labels == "auto" else "pseudo"
    assert label_source(model, loader, labels) == expected
    ref = scorer(model, groups, loader=loader, micro_batch=6, labels=labels)
    ref_plan = select(model, groups, ref, Budget("macs", 0.4))[0]
    for kw in ({"micro_batch": 1}, {"micro_batch": 4}, {"max_memory": 1e-6}):
        got = scorer(model, groups, loader=loader, labels=labels, **kw)
        for a, b in zip(ref, got, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        assert select(model, groups, got, Budget("macs", 0.4))[0] == ref_plan


def test_micro_batch_size_follows_the_memory_budget():
    """The micro-batch is the budget left after parameters and gradients over one image's saved
    activations: 1 for a tiny budget, the whole budget's worth (measured here) otherwise."""
    from vitcompress.scorers.gradients import GIB, micro_batch_size, saved_bytes_per_image

    model, loader = _setup(batches=1, batch_size=4)
    x = next(iter(loader))[0].double()
    params = list(model.parameters())
    per_image = saved_bytes_per_image(model, x)
    fixed = 2 * sum(p.numel() * 8 for p in params)  # float64 parameters and their gradients
    assert per_image > 0
    assert micro_batch_size(model, x, params, max_memory=1e-6) == 1
    budget = (fixed + 10 * 1.5 * per_image) / GIB
    assert micro_batch_size(model, x, params, max_memory=budget) == 10
