"""Choosing how hard to reduce: MACs targets, the GAS rate controller, the calibration search, the CLI."""

import json
import logging
import re

import pytest
import torch
from helpers import Kill, tiny

import vitcompress
from vitcompress.callbacks import Callback
from vitcompress.callbacks.gas import GASConfig, GASController, gas_step
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.models import create_source_model
from vitcompress.token_reduction import reduce_tokens
from vitcompress.token_search import search_amount
from vitcompress.tokens import apply_tokens, parse_schedule, schedule_of, token_counts
from vitcompress.tokens.amount import amount_for_reduction, macs_reduction, with_amount
from vitcompress.training import TrainConfig, fit

ARCH = dict(img_size=16, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=3, num_heads=2)
ARCH_CLI = ["--img-size", "64", "--num-classes", "10"]  # 16 patches


def small(seed=0, schedule="rate=0.05", method="topk-vpa"):
    torch.manual_seed(seed)
    return apply_tokens(create_source_model("vit_tiny_patch16_224", **ARCH), schedule, method=method)


# ------------------------------------------------------------------------------- MACs targets
@pytest.mark.parametrize("method,spec", [("topk-vpa", "rate=0.1"), ("evit", "0.9@1,2"), ("tome", "merge=1")])
def test_amount_for_reduction_is_the_smallest_that_reaches_the_target(method, spec):
    model = tiny("vit", img_size=48)
    sched = parse_schedule(spec, method)
    a = amount_for_reduction(model, sched, 0.3)
    assert macs_reduction(model, with_amount(sched, a)) >= 0.3
    step = 1.0 if sched.kind == "merge" else 0.001
    assert macs_reduction(model, with_amount(sched, a - step)) < 0.3


TEACHER_ARCH = dict(
    img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4, global_pool="avg"
)  # the mnist10k reference teacher's shape (16 patch tokens): coarse token steps


def test_a_macs_target_lands_within_1_5_points_on_the_nearest_step(tmp_path, capsys):
    """The README's `tokens runs/teacher --method etps --schedule rate=0.1 --flops-reduction 0.3`: the
    step at or above 30% removes 31.74%, the one below 29.78%; the nearer one is chosen and printed."""
    model = create_source_model("vit_tiny_patch16_224", **TEACHER_ARCH)
    sched = parse_schedule("rate=0.1", "etps")
    hi = amount_for_reduction(model, sched, 0.3)
    up, down = (macs_reduction(model, with_amount(sched, a)) for a in (hi, hi - 0.001))
    assert up - 0.3 > 0.015 > 0.3 - down  # "at least R" would land outside 1.5 points here
    res = reduce_tokens(model, sched, flops_reduction=0.3)
    assert res.reduction == pytest.approx(down) and res.target == 0.3
    assert res.format().splitlines()[-1] == (
        f"target: remove 30.0% of MACs; achieved {down:.2%} ({(down - 0.3) * 100:+.2f} points, tolerance 1.5)"
    )
    vitcompress.save(model, tmp_path / "teacher")
    assert main(["tokens", str(tmp_path / "teacher"), "--method", "etps", "--schedule", "rate=0.1",
                 "--flops-reduction", "0.3", "-o", str(tmp_path / "etps30")]) == 0  # fmt: skip
    assert f"target: remove 30.0% of MACs; achieved {down:.2%} (-0.22 points, tolerance 1.5)" in capsys.readouterr().out


def test_a_macs_target_between_coarse_token_steps_is_an_error_naming_them(tmp_path, capsys):
    model = create_source_model("vit_tiny_patch16_224", **TEACHER_ARCH)
    sched = parse_schedule("0.5@0", "topk")  # one reducing block, the first: about 6% per token
    steps = sorted({round(macs_reduction(model, with_amount(sched, (k - 0.5) / 16)), 6) for k in range(1, 16)})
    gaps = [(b - a, a, b) for a, b in zip(steps, steps[1:])]
    width, lo, hi = gaps[len(gaps) // 2]
    assert width > 0.03  # wider than twice the tolerance
    target = round((lo + hi) / 2, 4)
    msg = (
        rf"schedule .* cannot remove within 1.5 points of {target:.1%} of the MACs: token counts move in whole "
        rf"tokens and the nearest steps remove {lo:.2%} and {hi:.2%}; pass flops_reduction={hi:.4g}"
    )
    with pytest.raises(VitCompressError, match=msg) as e:
        reduce_tokens(model, sched, flops_reduction=target)
    assert list(e.value.params) == ["flops_reduction", "schedule"]
    vitcompress.save(model, tmp_path / "m")
    out = tmp_path / "bad"
    args = ["tokens", str(tmp_path / "m"), "--method", "topk", "--schedule", "0.5@0", "--flops-reduction"]
    assert main([*args, str(target), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not out.exists()
    assert main([*args, f"{hi:.4g}", "-o", str(out)]) == 0  # the suggested target works


def test_an_unreachable_target_is_an_error():
    with pytest.raises(VitCompressError, match="removes at most .* short of the target 95.0%"):
        amount_for_reduction(tiny("vit"), parse_schedule("0.5@3", "topk"), 0.95)


# ------------------------------------------------------------------------------- GAS
def test_gas_step_moves_the_rate_with_the_loss_slope():
    cfg = GASConfig(target=0.5, gain=1.0, min_step=0.005, max_step=0.05)
    assert gas_step(0.1, -0.02, cfg, 0.4) == pytest.approx(0.12)  # falling 2%: up by 0.02
    assert gas_step(0.1, -0.5, cfg, 0.4) == pytest.approx(0.15)  # capped at max_step
    assert gas_step(0.1, 0.0, cfg, 0.4) == pytest.approx(0.105)  # flat: min_step up
    assert gas_step(0.1, 0.01, cfg, 0.4) == pytest.approx(0.105)  # rising within the 2% noise tolerance: up
    assert gas_step(0.1, 0.03, cfg, 0.4, rises=1) == 0.1  # rising 3% once: hold (patience 2)
    assert gas_step(0.1, 0.03, cfg, 0.4, rises=2) == pytest.approx(0.07)  # rising twice in a row: down by 0.03
    assert gas_step(0.39, -0.5, cfg, 0.4) == pytest.approx(0.4)  # never above the target's rate
    assert gas_step(0.002, 0.5, cfg, 0.4, rises=2) == 0.0  # never below 0


def test_gas_follows_a_synthetic_loss_curve():
    model = small()
    gas = GASController(model, GASConfig(target=0.4, interval=5, start=0.0))
    red = [r for r in model.blocks.reducers if r is not None]
    rates = []
    for step, loss in enumerate([2.0 * 0.985**i for i in range(200)], 1):  # loss keeps falling
        gas.on_step(loss, step)
        rates.append(gas.rate)
    assert rates[-1] > rates[10] > 0 and all(b >= a for a, b in zip(rates, rates[1:]))
    assert gas.rate <= gas.ceiling and all(abs(r.keep - (1 - gas.rate)) < 1e-6 for r in red)
    high = gas.rate
    for step, loss in enumerate([1.0 * 1.05**i for i in range(30)], 201):  # then rises
        gas.on_step(loss, step)
    assert gas.rate < high
    traj = gas.trajectory
    assert traj[0]["step"] == 5 and all(t["rate"] <= gas.ceiling for t in traj)
    assert max(t["macs_reduction"] for t in traj) >= 0.4  # it got to the target (loss fell long enough)
    assert traj[-1]["rate"] == pytest.approx(gas.rate, abs=1e-6)


def test_gas_refuses_tome_and_plain_models():
    with pytest.raises(VitCompressError, match="tome merges a fixed count"):
        GASController(small(schedule="merge=2", method="tome"), GASConfig(target=0.3))
    with pytest.raises(VitCompressError, match="needs a token-reduced model"):
        GASController(create_source_model("vit_tiny_patch16_224", **ARCH), GASConfig(target=0.3))
    with pytest.raises(VitCompressError, match="outside"):
        GASConfig(target=1.5).validate()


class _Rates(Callback):
    """Records the GAS rate at each epoch's end."""

    def __init__(self, gas):
        self.gas, self.rates = gas, []

    def on_epoch_end(self, epoch, metrics):
        self.rates.append(self.gas.rate)


@pytest.mark.usefixtures("one_thread")
def test_gas_shows_its_current_rate_on_the_bar_and_each_epoch_line(caplog, capsys):
    model = small()
    gas = GASController(model, GASConfig(target=0.4, interval=2, start=0.0, min_step=0.02))
    seen = _Rates(gas)
    cfg = TrainConfig(data="digits", epochs=2, batch_size=32, max_steps_per_epoch=6, seed=1, progress=True)
    with caplog.at_level(logging.INFO, logger="vitcompress"):
        fit(model, cfg, callbacks=[gas, seen])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and seen.rates[-1] > 0
    for line, rate in zip(lines, seen.rates):
        reduction = macs_reduction(model, with_amount(schedule_of(model), rate))
        assert line.endswith(f"img/s  token rate {rate:.3f}  MACs removed {reduction:.1%}")
    assert f"token rate={seen.rates[-1]:.3f}" in capsys.readouterr().err  # the progress bar's postfix


@pytest.mark.usefixtures("one_thread")
def test_gas_in_the_training_loop_is_checkpointed_and_resumes_exactly(tmp_path):
    cfg = dict(
        data="digits",
        epochs=2,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.2,
        progress=False,
        max_steps_per_epoch=6,
        seed=1,
    )
    gcfg = GASConfig(target=0.4, interval=2, start=0.0, min_step=0.02)

    full_model = small()
    full = GASController(full_model, gcfg)
    fit(full_model, TrainConfig(**cfg), tmp_path / "full", callbacks=[full], record={"gas": full.log})
    assert full.rate > 0 and len(full.trajectory) == 1 + 12 // 2
    log = json.loads((tmp_path / "full" / "train_log.json").read_text())
    assert log["gas"]["trajectory"][-1]["rate"] == pytest.approx(full.rate)
    # the artifact records the rate it settled on; loading it applies that rate
    saved = vitcompress.load(tmp_path / "full")
    assert schedule_of(saved).rate == pytest.approx(full.rate, abs=1e-6)

    one = small()
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 2 of 2
        fit(one, TrainConfig(**cfg), tmp_path / "cut", callbacks=[GASController(one, gcfg), Kill(at_step=9)])
    two = small(seed=3)
    resumed = GASController(two, gcfg)
    fit(two, TrainConfig(**cfg), tmp_path / "cut", resume=True, callbacks=[resumed])
    assert resumed.rate == pytest.approx(full.rate)
    assert [t["rate"] for t in resumed.trajectory] == [t["rate"] for t in full.trajectory]
    for a, b in zip(full_model.state_dict().values(), two.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------- calibration search
@pytest.fixture(scope="module")
def trained():
    """A 3-block ViT trained for 6 short epochs on digits (about 40% top-1: its predictions mean something)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = create_source_model("vit_tiny_patch16_224", **{**ARCH, "patch_size": 4})
    fit(
        m,
        TrainConfig(
            data="digits",
            epochs=6,
            batch_size=64,
            lr=2e-3,
            warmup_epochs=0.5,
            progress=False,
            seed=1,
            shift=0,
            smoothing=0.0,
        ),
    )
    torch.set_num_threads(n)
    return apply_tokens(m, "rate=0.1@0", method="topk-vpa")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("metric", ["top1", "agreement"])
def test_search_picks_the_largest_rate_within_the_tolerance(trained, metric):
    mid = {"top1": 0.04, "agreement": 0.2}[metric]
    runs = {
        tol: search_amount(trained, schedule_of(trained), data="digits", images=128, tolerance=tol, metric=metric)
        for tol in (mid, 2 * mid, 1.0)
    }
    assert runs[1.0].amount == pytest.approx(0.999)
    assert runs[mid].amount <= runs[2 * mid].amount <= runs[1.0].amount and runs[mid].amount < runs[1.0].amount
    for tol, res in runs.items():
        base = res.baseline_top1 if metric == "top1" else 1.0
        chosen = next(r for r in res.table if r["amount"] == res.amount)
        assert chosen["passed"] and base - chosen[metric] <= tol + 1e-12
        assert not any(r["passed"] for r in res.table if r["amount"] > res.amount)  # nothing above passed
        assert [r["amount"] for r in res.table] == sorted(r["amount"] for r in res.table)
        assert res.macs_reduction == pytest.approx(macs_reduction(trained, res.schedule))
    assert schedule_of(trained).rate == 0.1  # the input model is left alone


@pytest.mark.usefixtures("one_thread")
def test_a_search_where_nothing_that_removes_tokens_passes_is_an_error_naming_the_fix(trained, monkeypatch):
    """Every amount that removes a token changes the predictions: instead of a no-op schedule (the
    largest passing rate, which keeps every token), one line names the tolerance that would pass."""
    import vitcompress.token_search as ts

    real = ts.predict

    def predict(model, x, batch_size):  # wrong whenever the model drops a token
        pred = real(model, x, batch_size)
        counts = token_counts(model)
        return (pred + 1) % 10 if counts[-1] < counts[0] else pred

    monkeypatch.setattr(ts, "predict", predict)
    with pytest.raises(VitCompressError) as e:
        search_amount(trained, schedule_of(trained), data="digits", images=64, tolerance=0.05)
    msg = str(e.value)
    assert msg.startswith("calibration search: no amount that removes MACs stays within tolerance=0.05 of top1 on 64")
    assert "(the smallest tried, rate=0.07@0, removes " in msg  # the first rate that drops one of 16 tokens
    assert list(e.value.params) == ["tolerance", "flops_reduction"] and "\n" not in msg
    need = float(re.search(r"pass tolerance=([0-9.]+) or more", msg).group(1))
    res = search_amount(trained, schedule_of(trained), data="digits", images=64, tolerance=need)
    first = next(r for r in res.table if r["macs_reduction"] > 0)
    assert f"drops top1 by {-first['drop']:.2%}" in msg and need - 0.001 < -first["drop"] <= need
    assert res.macs_reduction > 0  # the suggested tolerance gives a schedule that removes tokens


@pytest.mark.usefixtures("one_thread")
def test_a_search_suggests_a_tolerance_that_then_removes_tokens(trained):
    """The real case: at tolerance 0 nothing that removes tokens passes; the suggested tolerance does."""
    with pytest.raises(VitCompressError, match=r"pass tolerance=([0-9.]+) or more") as e:
        search_amount(trained, schedule_of(trained), data="digits", images=128, tolerance=0.0)
    need = float(re.search(r"pass tolerance=([0-9.]+)", str(e.value)).group(1))
    res = search_amount(trained, schedule_of(trained), data="digits", images=128, tolerance=need)
    assert res.macs_reduction > 0 and res.baseline_top1 - res.top1 <= need + 1e-12


# ------------------------------------------------------------------------------- API and CLI
def test_reduce_tokens_with_a_macs_target_writes_an_artifact(tmp_path):
    res = reduce_tokens(
        tiny("vit", img_size=48), "rate=0.1@1", method="etps", flops_reduction=0.25, output=tmp_path / "a"
    )
    assert abs(res.reduction - 0.25) <= 0.015 and res.target == 0.25
    meta = vitcompress.read_meta(tmp_path / "a")
    assert meta.history[-1]["method"] == "tokens" and meta.tokens["rate"] == res.schedule.rate
    assert token_counts(vitcompress.load(tmp_path / "a")) == res.counts


def test_cli_tokens_then_info(tmp_path, capsys):
    out = tmp_path / "t"
    assert (
        main(
            [
                "tokens",
                "deit_tiny_patch16_224",
                *ARCH_CLI,
                "--method",
                "topk-vpa",
                "--schedule",
                "0.5@3,6,9",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "token reduction: topk-vpa 0.5@3,6,9" in text and "removed" in text
    assert vitcompress.read_meta(out).tokens["spec"] == "0.5@3,6,9"
    assert main(["info", str(out)]) == 0
    assert "17>9" in capsys.readouterr().out  # 16 patches + cls -> ceil(0.5 * 16) + cls


@pytest.mark.parametrize(
    "args,match",
    [
        (["--method", "topk", "--schedule", "0.7@12"], "names block 12, but the model has blocks 0..11"),
        (["--method", "topk", "--schedule", "rate=1.0"], r"outside \[0, 1\)"),
        (["--method", "tokenlearner", "--schedule", "0.7@3"], "unknown token reducer"),
        (["--method", "topk", "--schedule", "0.7@3", "--flops-reduction", "0.3", "--search"], "pass one of them"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, match):
    import re

    out = tmp_path / "bad"
    assert main(["tokens", "deit_tiny_patch16_224", *ARCH_CLI, *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(match, err) and err.startswith("error:") and "\n" not in err
    assert not out.exists()


def test_cli_refuses_windowed_attention(tmp_path, capsys):
    assert (
        main(
            [
                "tokens",
                "swin_tiny_patch4_window7_224",
                "--method",
                "topk",
                "--schedule",
                "0.7@1",
                "-o",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------- benchmark builders
def test_suite_token_variants_match_their_reference_in_macs():
    from vitcompress.benchmarks import suite
    from vitcompress.tokens.amount import closest_amount

    source = create_source_model("deit_small_patch16_224")
    vpa = suite._with_tokens(source, suite.VARIANTS["vpa70"]["tokens"], source)
    tome = suite._with_tokens(source, suite.VARIANTS["tome-m70"]["tokens"], source)
    assert token_counts(vpa)[4] == 1 + 138  # ceil(0.7 * 196) tokens enter block 4
    red_vpa, red_tome = (1 - vitcompress.count(m).macs / vitcompress.count(source).macs for m in (vpa, tome))
    assert abs(red_vpa - red_tome) < 0.01
    sched = parse_schedule("merge=1", "tome")
    best = closest_amount(source, sched, red_vpa)
    for other in (best - 1, best + 1):
        assert abs(macs_reduction(source, with_amount(sched, best)) - red_vpa) <= abs(
            macs_reduction(source, with_amount(sched, other)) - red_vpa
        )


def test_vitl_table_reads_the_rate_both_ways():
    from vitcompress.benchmarks.tokens_bench import vitl_table

    rows = {r["variant"]: r for r in vitl_table()}
    ceil0, floor0 = rows["topk-vpa rate=0.06@0"], rows["rate=0.06@0, floor"]
    assert floor0["reduction"] > ceil0["reduction"] > rows["topk-vpa rate=0.06@1"]["reduction"] > 0.4
    assert floor0["last_tokens"] < ceil0["last_tokens"]  # floor drops a token more wherever 0.94 n is fractional
    with torch.device("meta"):
        assert rows["dense"]["macs"] == vitcompress.count(create_source_model("vit_large_patch16_224")).macs


@pytest.mark.usefixtures("one_thread")
def test_tokens_study_smoke_writes_table_json_and_plot(trained, tmp_path):
    from vitcompress.benchmarks.studies import tokens_study

    teacher = vitcompress.save(trained, tmp_path / "teacher")
    out = tmp_path / "study"
    assert (
        tokens_study.main(
            [
                "--teacher",
                str(teacher),
                "--out",
                str(out),
                "--data",
                "digits",
                "--images",
                "64",
                "--rates",
                "0,0.3",
                "--epochs",
                "1",
                "--gas-target",
                "0.2",
                "--gas-interval",
                "2",
                "--batch-size",
                "64",
            ]
        )
        == 0
    )
    rec = json.loads((out / "tokens_study.json").read_text())
    assert {r["method"] for r in rec["curves"]} == set(tokens_study.REDUCERS)
    at0 = [r["top1"] for r in rec["curves"] if r["schedule"] in ("rate=0.0@1", "merge=0@1")]
    assert len(set(at0)) == 1  # no reduction: every reducer gives the teacher's predictions
    assert rec["gas"]["trajectory"][0]["rate"] == pytest.approx(0.05)
    assert all(p["rate"] <= rec["gas"]["ceiling"] for p in rec["gas"]["trajectory"])
    assert "| tome | merge=0@1 |" in (out / "tokens_study.md").read_text()
    assert (out / "tokens_study.png").read_bytes()[:4] == b"\x89PNG"
