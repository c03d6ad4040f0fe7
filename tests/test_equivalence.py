"""A sliced model computes exactly what the original computes with the removed structures zeroed,
and the analytic counter matches the flop counter and the parameter count on it."""

import random

import pytest
import torch
from helpers import random_plan, tiny

from vitcompress.counting import count, measured_macs
from vitcompress.reference import mask_model
from vitcompress.slicers import slice_model

COMBOS = [
    ("heads",),
    ("qk",),
    ("v",),
    ("mlp",),
    ("embed",),
    ("depth",),
    ("heads", "mlp"),
    ("qk", "v"),
    ("heads", "qk", "v", "mlp", "embed", "depth"),
]


@pytest.mark.parametrize("kinds", COMBOS, ids=["+".join(c) for c in COMBOS])
def test_sliced_equals_masked_reference(tiny_kind, kinds):
    model = tiny(tiny_kind)
    plan = random_plan(model, random.Random(1), kinds)
    sliced = slice_model(model, plan)
    ref = mask_model(model, plan)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out, want, orig = sliced(x), ref(x), model(x)
    assert out.shape == orig.shape
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    # the removal matters: the reference differs from the unpruned model
    assert (want - orig).abs().max() > 1e-3
    # the analytic counter is exact on the pruned model too: flop counter and real parameter count
    c = count(sliced)
    assert c.macs == measured_macs(sliced) < count(model).macs
    assert c.params == sum(p.numel() for p in sliced.parameters()) < count(model).params


def test_sliced_model_is_dense_and_self_describing():
    model = tiny("vit")
    plan = random_plan(model, random.Random(2), ("heads", "qk", "v", "mlp", "embed"))
    sliced = slice_model(model, plan)
    assert sliced.embed_dim == 37 and sliced.num_features == 37
    for b, blk in zip(plan.blocks, sliced.blocks):
        lp = plan.layers[b]
        attn = blk.attn
        assert (attn.num_heads, attn.qk_dim, attn.v_dim) == (len(lp.heads), 5, 7)
        assert attn.qkv.weight.shape == (len(lp.heads) * (2 * 5 + 7), 37)
        assert attn.proj.weight.shape == (37, len(lp.heads) * 7)
        # the softmax scale of the unpruned head width (16) is kept, not 1/sqrt(5)
        assert attn.scale == pytest.approx(16**-0.5)
        assert blk.mlp.fc1.weight.shape == (37, 37)
    assert not any(n for n, _ in sliced.named_buffers())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in sliced.modules())


def test_fused_and_explicit_attention_paths_agree():
    model = tiny("vit")
    plan = random_plan(model, random.Random(3), ("qk", "v"))
    sliced = slice_model(model, plan)
    x = torch.randn(2, 3, 32, 32)
    attn = [b.attn for b in sliced.blocks]
    assert all(a.fused_attn for a in attn)  # SDPA is used where available
    with torch.no_grad():
        fused = sliced(x)
        for a in attn:
            a.fused_attn = False
        explicit = sliced(x)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_sliced_model_trains():
    model = tiny("deit_distilled")
    sliced = slice_model(model, random_plan(model, random.Random(4), ("heads", "mlp", "embed"))).train()
    opt = torch.optim.SGD(sliced.parameters(), lr=0.05)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(sliced(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in sliced.parameters() if p.requires_grad)
    assert losses[-1] < losses[0]
