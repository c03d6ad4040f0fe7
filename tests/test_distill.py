"""Distillation losses: zero for identical models, hand-computed values, layer/channel mapping."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny

from vitcompress.distill import DistillConfig, TrainLoss, channel_mapping, kd_kl, layer_mapping
from vitcompress.errors import VitCompressError
from vitcompress.families import identity_plan
from vitcompress.slicers import slice_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_kd_and_hidden_loss_are_zero_when_student_equals_teacher():
    teacher = tiny("vit")
    student = copy.deepcopy(teacher)
    crit = TrainLoss(student, teacher, DistillConfig(kind="soft", ce=0.0, kd=1.0, hidden=1.0, temperature=3.0))
    x, y = _x(), torch.tensor([1, 2, 3, 4])
    loss, logits, parts = crit(student(x), x, y)
    assert set(parts) == {"kd", "hidden"}
    assert abs(float(loss.detach())) < 1e-6 and abs(parts["kd"]) < 1e-6 and abs(parts["hidden"]) < 1e-6
    # and clearly non-zero for a different student
    other = tiny("vit", seed=1)
    crit2 = TrainLoss(other, teacher, DistillConfig(kind="soft", ce=0.0, kd=1.0, hidden=1.0))
    _, _, parts2 = crit2(other(x), x, y)
    assert parts2["kd"] > 1e-3 and parts2["hidden"] > 1e-3


def test_soft_loss_matches_a_hand_computation():
    teacher, student = tiny("vit"), tiny("vit", seed=3)
    cfg = DistillConfig(kind="soft", ce=0.7, kd=0.5, temperature=4.0)
    crit = TrainLoss(student, teacher, cfg)
    x, y = _x(), torch.tensor([0, 5, 9, 2])
    s = student(x)
    loss, _, _ = crit(s, x, y)
    with torch.no_grad():
        t = teacher(x)
    p_t = F.softmax(t / 4, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / 4, -1))).sum(-1).mean() * 16
    want = 0.7 * F.cross_entropy(s, y) + 0.5 * kl
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert float(kd_kl(s, t, 4.0).detach()) == pytest.approx(float(kl.detach()), rel=1e-5)


def _prune_block_and_channels(model, drop_block=1, keep_embed=None):
    plan = identity_plan(model)
    plan.blocks = [b for b in plan.blocks if b != drop_block]
    del plan.layers[drop_block]
    if keep_embed is not None:
        plan.embed = keep_embed
    return slice_model(model, plan)


def test_layer_mapping_skips_removed_blocks_and_compares_kept_channels():
    teacher = tiny("vit")
    keep = [c for c in range(64) if c % 4]  # drop every fourth residual channel
    student = _prune_block_and_channels(teacher, drop_block=1, keep_embed=keep)
    from vitcompress.artifact import meta_of
    from vitcompress.plan import Plan

    meta = meta_of(student)
    meta.plan = Plan(keep, [0, 2, 3], {})
    student.vitcompress_meta = meta
    assert layer_mapping(student, teacher) == [(0, 0), (1, 2), (2, 3)]
    s_ch, t_ch = channel_mapping(student, teacher)
    assert s_ch.tolist() == list(range(len(keep))) and t_ch.tolist() == keep
    # the hidden loss compares exactly those pairs and channels
    crit = TrainLoss(student, teacher, DistillConfig(kind="soft", ce=0.0, kd=0.0, hidden=2.0))
    x = _x()
    cap_s, cap_t = {}, {}
    hs = [student.blocks[i].register_forward_hook(lambda m, a, o, i=i: cap_s.__setitem__(i, o)) for i in range(3)]
    ht = [teacher.blocks[i].register_forward_hook(lambda m, a, o, i=i: cap_t.__setitem__(i, o)) for i in range(4)]
    loss, _, parts = crit(student(x), x, torch.zeros(4, dtype=torch.long))
    for h in hs + ht:
        h.remove()
    terms = [
        F.mse_loss(cap_s[i], cap_t[j][..., keep]) / cap_t[j][..., keep].pow(2).mean()
        for i, j in [(0, 0), (1, 2), (2, 3)]
    ]
    assert float(loss.detach()) == pytest.approx(2.0 * float(torch.stack(terms).mean().detach()), rel=1e-5)
    crit.close()
    assert not student.blocks[0]._forward_hooks


def test_hard_distillation_through_the_dist_token():
    teacher = tiny("vit")
    student = tiny("deit_distilled", seed=2)
    crit = TrainLoss(student, teacher, DistillConfig(kind="auto", ce=1.0, kd=0.5))
    assert crit.kind == "hard"
    student.train()
    x, y = _x(), torch.tensor([3, 1, 4, 1])
    out = student(x)
    assert isinstance(out, tuple) and len(out) == 2  # distilled training mode is on
    loss, logits, parts = crit(out, x, y)
    with torch.no_grad():
        t = teacher(x)
    want = F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], t.argmax(-1))
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    assert torch.allclose(logits, (out[0] + out[1]) / 2)


def test_bad_distillation_setups_are_one_line_errors():
    teacher = tiny("vit", num_classes=7)
    with pytest.raises(VitCompressError, match="teacher has 7 classes but the student has 10"):
        TrainLoss(tiny("vit"), teacher, DistillConfig())
    with pytest.raises(VitCompressError, match="distillation token"):
        TrainLoss(tiny("vit"), tiny("vit"), DistillConfig(kind="hard"))
    with pytest.raises(VitCompressError, match="unknown distillation kind"):
        TrainLoss(tiny("vit"), tiny("vit"), DistillConfig(kind="medium"))


def test_fit_with_hard_distillation_trains_a_distilled_deit(tmp_path):
    from vitcompress.artifact import load
    from vitcompress.training import TrainConfig, fit

    student = tiny("deit_distilled", seed=2)
    before = student.head_dist.weight.clone()
    cfg = TrainConfig(data="digits", epochs=1, batch_size=16, max_steps_per_epoch=3, progress=False)
    res = fit(student, cfg, tmp_path / "d", teacher=tiny("vit"), distill=DistillConfig(kind="auto"))
    assert not torch.equal(before, res.model.head_dist.weight)  # the distillation head was trained
    assert res.val["agreement"] is not None
    back = load(tmp_path / "d")
    out = back(_x())
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)  # inference averages the two heads
    assert not student.blocks[0]._forward_hooks
