"""The training loop: learning, per-epoch atomic checkpoints, exact resume, NaN stop, torchrun/gloo, CLI."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import Kill

from vitcompress.artifact import load, read_meta
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.models import create_source_model
from vitcompress.training import Callback, TrainConfig, fit

ARCH = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
ARCH_CLI = [
    "--img-size",
    "16",
    "--patch-size",
    "4",
    "--in-chans",
    "1",
    "--num-classes",
    "10",
    "--embed-dim",
    "32",
    "--depth",
    "2",
    "--num-heads",
    "2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def small(seed=0, **kw):
    torch.manual_seed(seed)
    return create_source_model("vit_tiny_patch16_224", **{**ARCH, **kw})


def cfg(**kw):
    base = dict(
        data="digits",
        epochs=2,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.2,
        progress=False,
        max_steps_per_epoch=6,
        seed=1,
    )
    return TrainConfig(**{**base, **kw})


class Record(Callback):
    def __init__(self):
        self.losses, self.epochs = [], []

    def on_step(self, loss, step):
        self.losses.append((step, loss))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))


def test_loss_decreases_and_artifact_holds_the_trained_weights(tmp_path):
    rec = Record()
    out = tmp_path / "run"
    res = fit(
        small(),
        cfg(epochs=4, max_steps_per_epoch=None, lr=5e-3, min_lr=2e-3, warmup_epochs=0, shift=0, smoothing=0.0),
        out,
        callbacks=[rec],
    )
    losses = [l for _, l in rec.losses]
    assert [s for s, _ in rec.losses] == list(range(1, 4 * 44 + 1))  # 1438 train images, batch 32, drop_last
    assert sum(losses[-20:]) / 20 < 0.75 * sum(losses[:20]) / 20
    assert [e for e, _ in rec.epochs] == [1, 2, 3, 4]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.val["top1"] > 0.3  # well above chance (10%) after 176 steps
    # the artifact folder has the final weights, the checkpoint and the training record
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "model.safetensors", "train_log.json", "vitcompress.json"]
    assert [p for p in os.listdir(tmp_path) if p != "run"] == []  # no temporary leftovers
    again = load(out)
    for (k, a), b in zip(res.model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    meta = read_meta(out)
    assert meta.extra["training"]["epochs_done"] == 4
    assert meta.extra["training"]["val"]["top1"] == pytest.approx(res.val["top1"])
    assert meta.source.kwargs["patch_size"] == 4


def test_eval_every_sets_which_epochs_are_evaluated():
    res = fit(small(), cfg(epochs=3, eval_every=2, max_steps_per_epoch=2))
    assert ["val" in h for h in res.history] == [False, True, True]  # epoch 2, and the last
    res = fit(small(), cfg(epochs=2, eval_every=0, max_steps_per_epoch=2))
    assert res.val is None and not any("val" in h for h in res.history)


def test_resume_after_a_mid_epoch_kill_reproduces_the_uninterrupted_run(tmp_path):
    # augmentation (shift), mixup (numpy RNG) and dropout (torch RNG) all have to line up
    c = dict(epochs=3, mixup=0.4, shift=2)
    full = fit(small(drop_rate=0.1), cfg(**c), tmp_path / "full").model
    with pytest.raises(KeyboardInterrupt):
        fit(small(drop_rate=0.1), cfg(**c), tmp_path / "cut", callbacks=[Kill(at_step=9)])  # epoch 2 of 3
    assert read_meta(tmp_path / "cut").extra["training"]["epochs_done"] == 1  # lost only the running epoch
    rec = Record()
    resumed = fit(small(seed=5, drop_rate=0.1), cfg(**c), tmp_path / "cut", resume=True, callbacks=[rec]).model
    assert [s for s, _ in rec.losses][0] == 7  # continues after epoch 1's 6 steps
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # the schedule and optimizer continued too: the records agree epoch by epoch
    h1 = json.loads((tmp_path / "full" / "train_log.json").read_text())["history"]
    h2 = json.loads((tmp_path / "cut" / "train_log.json").read_text())["history"]
    assert [e["train_loss"] for e in h1] == [e["train_loss"] for e in h2]
    assert [e["lr"] for e in h1] == [e["lr"] for e in h2]


def test_resume_with_different_options_is_refused(tmp_path):
    fit(small(), cfg(epochs=1, max_steps_per_epoch=2), tmp_path / "r")
    with pytest.raises(VitCompressError, match="trained with lr="):
        fit(small(), cfg(epochs=1, max_steps_per_epoch=2, lr=0.1), tmp_path / "r", resume=True)


class Poison(Callback):
    def __init__(self, model, at_step):
        self.model, self.at = model, at_step

    def on_step(self, loss, step):
        if step == self.at:
            with torch.no_grad():
                self.model.head.weight.fill_(float("nan"))


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    m = small()
    out = tmp_path / "n"
    with pytest.raises(VitCompressError) as e:
        fit(m, cfg(epochs=3), out, callbacks=[Poison(m, at_step=8)])
    msg = str(e.value)
    assert "loss became nan at epoch 2 step 3" in msg and "epoch 1" in msg and "\n" not in msg
    meta = read_meta(out)
    assert meta.extra["training"]["epochs_done"] == 1
    assert all(torch.isfinite(t).all() for t in load(out).state_dict().values())


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from vitcompress.models import create_source_model
    from vitcompress.training import TrainConfig, fit
    out, sums = sys.argv[1], sys.argv[2]
    torch.manual_seed(int(os.environ["RANK"]))  # different init per rank: DDP must broadcast rank 0's
    m = create_source_model("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, num_classes=10,
                            embed_dim=32, depth=2, num_heads=2)
    cfg = TrainConfig(data="digits", epochs=2, batch_size=16, lr=3e-3, max_steps_per_epoch=4, progress=False)
    res = fit(m, cfg, out)
    s = sum(float(p.detach().double().sum()) for p in res.model.parameters())
    with open(os.path.join(sums, f"rank{os.environ['RANK']}.txt"), "w") as f:
        f.write(repr(s) + " " + repr(res.val["top1"]))
""")


def test_two_process_gloo_run_stays_in_sync_and_writes_one_checkpoint(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    sums = tmp_path / "sums"
    sums.mkdir()
    out = tmp_path / "runs" / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(script),
            str(out),
            str(sums),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the launcher and both workers
        p.communicate()
        pytest.fail("the 2-process run did not finish in 180 s")
    assert p.returncode == 0, stderr[-3000:]
    r0, r1 = (sums / "rank0.txt").read_text().split(), (sums / "rank1.txt").read_text().split()
    assert r0 == r1  # identical parameters and identical (all-reduced) validation top-1 on both ranks
    assert os.listdir(tmp_path / "runs") == ["ddp"]  # exactly one output, no temporary folders
    assert (out / "checkpoint.pt").is_file()
    rec = read_meta(out).extra["training"]
    assert rec["world_size"] == 2 and rec["epochs_done"] == 2
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert len(ck["rng"]) == 2  # every rank's random state, for an exact resume
    saved = sum(float(t.detach().double().sum()) for _, t in load(out).named_parameters())
    assert saved == pytest.approx(float(r0[0]), rel=1e-9)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "t"
    code, stdout, err = run(
        capsys,
        "train",
        "vit_tiny_patch16_224",
        *ARCH_CLI,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "3",
        "--quiet",
        "-o",
        out,
    )
    assert code == 0, err
    assert "val top-1" in stdout and f"wrote {out}" in stdout
    code, stdout, _ = run(capsys, "eval", out, "--data", "digits", "--json")
    assert code == 0
    r = json.loads(stdout)
    assert r["images"] == 359 and 0 <= r["top1"] <= r["top5"] <= 1
    code, _, err = run(capsys, "train", "vit_tiny_patch16_224", *ARCH_CLI, "--data", "digits", "-o", out)
    assert code == 2 and "already exists" in err and "--resume" in err


BAD = {
    "missing data folder": (
        ["train", "vit_tiny_patch16_224", *ARCH_CLI, "--data", "/nonexistent/imgs"],
        "does not exist",
    ),
    "classes do not fit": (
        ["train", "vit_tiny_patch16_224", *ARCH_CLI[:6], "--num-classes", "5", "--data", "digits"],
        "10 classes but the model's classifier has 5",
    ),
    "unknown option": (["train", "vit_tiny_patch16_224", "--data", "digits", "--speed", "3"], "No such option"),
    "bad amp": (
        ["train", "vit_tiny_patch16_224", *ARCH_CLI, "--data", "digits", "--amp", "fp8"],
        "'fp8' is not one of 'auto', 'bf16', 'fp16', 'off'",
    ),
    "eval missing data": (["eval", "vit_tiny_patch16_224", "--data", "/nonexistent/imgs"], "does not exist"),
    "resume from nothing": (
        ["train", "vit_tiny_patch16_224", *ARCH_CLI, "--data", "digits", "--resume"],
        "no checkpoint.pt",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    args, needle = BAD[case]
    out = tmp_path / "out"
    if case == "resume from nothing":
        out.mkdir()
    if args[0] == "train":
        args = [*args, "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet", "-o", out]
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert os.listdir(tmp_path) == (["out"] if case == "resume from nothing" else [])
    if out.exists():
        assert os.listdir(out) == []


def test_image_folder_training_with_randaugment_mixup_cutmix_and_erasing(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog", "eel"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    torch.manual_seed(0)
    m = create_source_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=3, embed_dim=32, depth=1, num_heads=2
    )
    c = TrainConfig(
        data=str(tmp_path / "imgs"),
        epochs=1,
        batch_size=4,
        auto_augment="rand-m9-mstd0.5",
        mixup=0.2,
        cutmix=0.2,
        re_prob=0.25,
        progress=False,
    )
    res = fit(m, c, tmp_path / "out")
    assert res.history[0]["epoch"] == 1 and res.val["images"] == 18
    assert read_meta(tmp_path / "out").extra["training"]["config"]["auto_augment"] == "rand-m9-mstd0.5"
    with pytest.raises(VitCompressError, match="even batch_size"):
        fit(m, TrainConfig(data=str(tmp_path / "imgs"), batch_size=3, mixup=0.2), tmp_path / "odd")


def test_cli_train_seed_fixes_the_initial_weights(tmp_path):
    from vitcompress.artifact import load

    args = [
        "train",
        "vit_tiny_patch16_224",
        *ARCH_CLI,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "1",
        "--batch-size",
        "16",
        "--quiet",
    ]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        torch.manual_seed(int(name.encode()[0]))  # whatever state the process is in
        assert main([*args, "--seed", seed, "-o", str(tmp_path / name)]) == 0
    a, b, c = (load(tmp_path / n).state_dict() for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
