"""The reliability guarantees (docs/guarantees.md): no code from a file, no write inside an input or
over an existing file without --force, one writer per output, every bad value one line before
anything is written, records checked field by field, no leftovers, ordinary file modes."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import tiny
from safetensors.torch import load_file, save_file

import vitcompress
from vitcompress.artifact import META, WEIGHTS, read_meta, save
from vitcompress.cli import main
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate_data
from vitcompress.io import lock_path, output_lock, remove_stale
from vitcompress.methods import METHODS
from vitcompress.methods import get as get_method
from vitcompress.training import CHECKPOINT, TrainConfig, read_checkpoint

TINY_ARGS = ["--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2"]
TINY = ["vit_tiny_patch16_224", *TINY_ARGS, "--num-classes", "10"]
BY_NAME = ["vit_tiny_patch16_224", "--img-size", "16", "--num-classes", "10"]  # prune/tokens: no width options
QUICK = ["--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--quiet"]
PRUNE = ["--flops-reduction", "0.3", "--importance", "l1"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> bool:
    """One ``error:`` line (after whatever a progress bar drew on the terminal line before it, or the
    line break click writes after a Ctrl-C)."""
    err = err.rsplit("\r", 1)[-1].lstrip("\n")
    return err.startswith("error: ") and len(err.strip().splitlines()) == 1


def tree(root) -> dict:
    """Every file under ``root`` with its bytes (folders with None)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.join(dirpath, d)] = None
        for f in files:
            p = os.path.join(dirpath, f)
            out[p] = open(p, "rb").read()
    return out


class Evil:
    """Unpickled, it creates a marker file: what a hostile checkpoint would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def art(tmp_path):
    """A tiny artifact (16 px, 2 blocks) in its own folder."""
    torch.manual_seed(0)
    return save(vitcompress.create_source_model("vit_tiny_patch16_224", **TINY_KW), tmp_path / "arts" / "art")


TINY_KW = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


# ------------------------------------------------------------------------ 1. no code from a file
@pytest.mark.parametrize("how", ["pickle protocol 2", "pickle protocol 5", "torch.save"])
def test_resume_refuses_a_crafted_pickle_without_running_it(how, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    out.mkdir()
    if how == "torch.save":
        torch.save({"model": Evil(marker)}, out / CHECKPOINT)
    else:
        (out / CHECKPOINT).write_bytes(pickle.dumps({"model": Evil(marker)}, protocol=int(how[-1])))
    code, _, err = run(capsys, "train", *TINY, *QUICK, "-o", out, "--resume")
    assert code == 2 and one_line(err), err
    assert f"pickles the Python object {os.system.__module__}.system" in err, err
    assert "never loaded" in err and "--force" in err
    assert not marker.exists()  # the pickle's code did not run
    assert os.listdir(out) == [CHECKPOINT]


PICKLES = {  # non-zip files torch.load reads with its pickle reader
    "legacy torch.save": lambda obj, f: torch.save(obj, f, _use_new_zipfile_serialization=False),
    "pickle protocol 4": lambda obj, f: f.write_bytes(pickle.dumps(obj, protocol=4)),
    "pickle protocol 5": lambda obj, f: f.write_bytes(pickle.dumps(obj, protocol=5)),
}


@pytest.mark.parametrize("how", sorted(PICKLES))
def test_a_non_zip_pickle_is_one_error_line_for_every_file_option(how, art, tmp_path, capsys):
    """torch warns about a pickle protocol it did not write before refusing the file: nothing but
    the error line reaches the user, for every option that reads a checkpoint."""
    marker, ck, out = tmp_path / "PWNED", tmp_path / "evil.pth", tmp_path / "res"
    PICKLES[how]({"state_dict": Evil(marker)}, ck)
    out.mkdir()
    PICKLES[how]({"model": Evil(marker)}, out / CHECKPOINT)
    cases = {
        "prune --checkpoint": ["prune", *BY_NAME, "--checkpoint", ck, *PRUNE, "-o", tmp_path / "o"],
        "tokens --checkpoint": [
            "tokens",
            *BY_NAME,
            "--checkpoint",
            ck,
            "--method",
            "topk",
            "--schedule",
            "0.7@1",
            "-o",
            tmp_path / "o",
        ],
        "train --checkpoint": ["train", *TINY, "--checkpoint", ck, *QUICK, "-o", tmp_path / "o"],
        "--teacher-checkpoint": [
            "finetune",
            art,
            "--teacher",
            BY_NAME[0],
            "--teacher-checkpoint",
            ck,
            *QUICK,
            "-o",
            tmp_path / "o",
        ],
        "--resume": ["train", *TINY, *QUICK, "-o", out, "--resume"],
    }
    before = tree(tmp_path)
    for name, argv in cases.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and not caught, (name, err, [str(w.message)[:80] for w in caught])
        assert f"pickles the Python object {os.system.__module__}.system" in err, (name, err)
    assert not marker.exists() and tree(tmp_path) == before


def test_checkpoints_load_without_unpickling_and_foreign_files_are_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, "train", *TINY, *QUICK, "-o", out)[0] == 0
    ck = torch.load(out / CHECKPOINT, weights_only=True)  # tensors and plain containers only
    assert ck["format"] == "vitcompress-checkpoint" and ck["epoch"] == 1
    assert read_checkpoint(out / CHECKPOINT)["step"] == 1
    # a state dict saved by another tool: not a training checkpoint
    torch.save(ck["model"], out / CHECKPOINT)
    code, _, err = run(capsys, "train", *TINY, *QUICK, "--epochs", "2", "-o", out, "--resume")
    assert code == 2 and one_line(err) and "not a vitcompress training checkpoint" in err


def test_resume_with_another_architecture_or_missing_tensors_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(capsys, "train", *TINY, *QUICK, "-o", out)[0] == 0
    before = tree(out)
    args = ["vit_tiny_patch16_224", *TINY_ARGS[:-4], "--depth", "3", "--num-heads", "2", "--num-classes", "10"]
    code, _, err = run(capsys, "train", *args, *QUICK, "-o", out, "--resume")
    assert code == 2 and one_line(err) and "does not fit this model" in err, err
    assert tree(out) == before
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    del ck["model"]["head.bias"]
    torch.save(ck, out / CHECKPOINT)
    before = tree(out)
    code, _, err = run(capsys, "train", *TINY, *QUICK, "-o", out, "--resume")
    assert code == 2 and one_line(err) and "does not fit this model" in err and "'head.bias' is missing" in err, err
    assert tree(out) == before


# ------------------------------------------------------------------------ 2. inputs and existing files
@pytest.mark.parametrize(
    "args, needle",
    [
        (["export", "ART", "-o", "ART/model.safetensors"], "inside the input"),
        (["export", "ART", "-o", "ART/model.safetensors", "--force"], "inside the input"),
        (["export", "ART", "-o", "ART/new.onnx", "--force"], "inside the input"),
        (["info", "ART", "--plot", "ART/model.safetensors"], "inside the input"),
        (["info", "ART", "--plot", "ART/w.png", "--force"], "inside the input"),
        (["info", "ART", "--plot", "ART"], "is the input"),
        (["prune", "ART", "-o", "ART/sub", "--force", *PRUNE], "inside the input"),
        (["prune", "ART", "-o", "ARTS", "--force", *PRUNE], "contains the input"),
        (["tokens", "ART", "--method", "topk", "--schedule", "0.7@1", "-o", "ART/t", "--force"], "inside the input"),
        (["bench", "ART", "--report", "ART/report", "--backend", "torch-cpu"], "inside the input"),
        (["bench", "ART", "--report", "ART/vitcompress.json", "--backend", "torch-cpu"], "inside the input"),
        (["prune", "OTHER", "-o", "ART/sub", *PRUNE], "inside the artifact folder"),
        (["export", "ART", "-o", "FILE"], "already exists; pass --force"),
        (["info", "ART", "--plot", "FILE"], "already exists; pass --force"),
        (["bench", "ART", "--report", "REPORT", "--backend", "torch-cpu"], "already holds report.md; pass --force"),
        (["bench", "ART", "--report", "FILE", "--backend", "torch-cpu"], "is a file, not a folder"),
    ],
)
def test_no_write_inside_an_input_or_over_a_file_without_force(args, needle, art, tmp_path, capsys):
    other = save(tiny("vit"), tmp_path / "other")
    (tmp_path / "file.png").write_bytes(b"keep")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("keep")
    names = {"ART": str(art), "ARTS": str(art.parent), "OTHER": str(other), "FILE": str(tmp_path / "file.png")}
    names["REPORT"] = str(tmp_path / "report")
    argv = [names.get(a, a) for a in args]
    argv = [a.replace("ART/", f"{art}/") if a.startswith("ART/") else a for a in argv]
    before = tree(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


def test_force_writes_inside_another_artifact_and_over_a_file(art, tmp_path, capsys):
    other = save(tiny("vit"), tmp_path / "other")
    code, _, err = run(capsys, "prune", art, "-o", other / "sub", *PRUNE, "--force")
    assert code == 0, err
    (tmp_path / "w.png").write_bytes(b"old")
    code, _, err = run(capsys, "info", art, "--plot", tmp_path / "w.png", "--force")
    assert code == 0, err
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.export
def test_export_over_an_existing_file_needs_force(art, tmp_path, capsys):
    onnx_path = tmp_path / "m.onnx"
    assert run(capsys, "export", art, "-o", onnx_path, "--no-check")[0] == 0
    before = onnx_path.read_bytes()
    code, _, err = run(capsys, "export", art, "-o", onnx_path, "--no-check")
    assert code == 2 and "--force" in err and onnx_path.read_bytes() == before
    assert run(capsys, "export", art, "-o", onnx_path, "--no-check", "--force")[0] == 0


# ------------------------------------------------------------------------ 3. one writer per output
HOLD = """
import sys, time
from pathlib import Path
from vitcompress.io import output_lock
with output_lock(sys.argv[1]):
    Path(sys.argv[1]).parent.joinpath(".out.tmp-live1234").mkdir()
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_fails_in_one_line_until_the_first_exits(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, "prune", *BY_NAME, "-o", out, *PRUNE)
        assert code == 2 and one_line(err), err
        assert f"is being written by another run (process {holder.pid})" in err
        assert not out.exists()
        assert (tmp_path / ".out.tmp-live1234").is_dir()  # the live run's temporary folder is not touched
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill releases the lock
        holder.wait()
    code, _, err = run(capsys, "prune", *BY_NAME, "-o", out, *PRUNE)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["out"]  # its stale temporary folder and lock file are gone


LOCKED = {
    "prune": ["prune", "ART", *PRUNE, "-o", "OUT"],
    "tokens": ["tokens", "ART", "--method", "topk", "--schedule", "0.7@1", "-o", "OUT"],
    "train": ["train", *TINY, *QUICK, "-o", "OUT"],
    "finetune": ["finetune", "ART", *QUICK, "-o", "OUT"],
    "pipeline": ["pipeline", "ART", "--flops-reduction", "0.3", *QUICK, "-o", "OUT"],
    "export": ["export", "ART", "-o", "OUT", "--no-check"],
    "info --plot": ["info", "ART", "--plot", "OUT"],
    "bench --report": ["bench", "ART", "--report", "OUT", "--backend", "torch-cpu", "--threads", "1"],
    "profile": ["profile", "ART", "--backend", "torch-cpu", "-o", "OUT"],
    "compress": ["compress", "ART", "--latency-reduction", "0.3", "--backend", "torch-cpu", *QUICK, "-o", "OUT"],
    "prune --latency-reduction": ["prune", "ART", "--latency-reduction", "0.3", "--backend", "torch-cpu", "-o", "OUT"],
}


@pytest.mark.parametrize("command", sorted(LOCKED))
def test_every_writing_command_takes_the_output_lock(command, art, tmp_path, capsys):
    """The lock file held by another open file (what a second process holds): every command that
    writes refuses the output in one line and writes nothing."""
    out = tmp_path / "out"
    lock = lock_path(out)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4711")
        argv = [{"ART": str(art), "OUT": str(out)}.get(a, a) for a in LOCKED[command]]
        before = tree(tmp_path)
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err), err
        assert "is being written by another run (process 4711)" in err, err
        assert tree(tmp_path) == before
    finally:
        os.close(fd)


@pytest.mark.slow
def test_two_training_processes_one_output(tmp_path):
    """Two real writers started together: exactly one succeeds, the other fails in one line."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vitcompress.cli", "train", *TINY, *QUICK, "--epochs", "2", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    err = next(e for c, e in results if c == 2)
    assert "is being written by another run" in err or "already exists" in err
    assert read_meta(out).extra["training"]["epochs_done"] == 2


def test_the_lock_is_reentrant_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with output_lock(out):
        with output_lock(out):  # the same process may take it again (a pipeline and its stages)
            assert lock_path(out).exists()
        assert lock_path(out).exists()
    assert not (tmp_path / "new").exists()  # nor the folders it created (nothing was written there)
    with pytest.raises(RuntimeError):
        with output_lock(out):
            raise RuntimeError("failed")
    assert not (tmp_path / "new").exists()
    with output_lock(out):
        out.mkdir()  # what a run writes stays
    assert out.is_dir() and os.listdir(out.parent) == ["out"]


# ------------------------------------------------------------------------ 4/6. ranges: one line, nothing written
CUDA = torch.cuda.is_available()
RANGES = {
    "clip-grad -1": (["train", *TINY, *QUICK, "--clip-grad", "-1"], "--clip-grad must be >= 0"),
    "min-lr -0.01": (["train", *TINY, *QUICK, "--min-lr", "-0.01"], "--min-lr must be >= 0"),
    "min-lr above lr": (["train", *TINY, *QUICK, "--min-lr", "0.1", "--lr", "0.01"], "is above --lr"),
    "smoothing 1": (["train", *TINY, *QUICK, "--smoothing", "1"], "--smoothing must be in [0, 1)"),
    "smoothing -0.1": (["train", *TINY, *QUICK, "--smoothing", "-0.1"], "--smoothing must be in [0, 1)"),
    "lr inf": (["train", *TINY, *QUICK, "--lr", "inf"], "--lr must be a finite number"),
    "warmup nan": (["train", *TINY, *QUICK, "--warmup-epochs", "nan"], "--warmup-epochs must be a finite number"),
    "hflip 2": (["train", *TINY, *QUICK, "--hflip", "2"], "--hflip must be in [0, 1]"),
    "epochs 0": (["train", *TINY, *QUICK, "--epochs", "0"], "--epochs must be >= 1"),
    "seed -1": (["train", *TINY, *QUICK, "--seed", "-1"], "--seed must be in [0, 4294967296)"),
    "batch huge": (
        ["finetune", "ART", *QUICK, "--batch-size", "99999999999999999999"],
        "--batch-size must be at most 2147483647",
    ),
    "max-steps 0": (["train", *TINY, *QUICK, "--max-steps-per-epoch", "0"], "--max-steps-per-epoch must be >= 1"),
    "workers -1": (["train", *TINY, *QUICK, "--workers", "-1"], "--workers must be in [0, 256]"),
    "device tpu": (["train", *TINY, *QUICK, "--device", "tpu"], "unknown --device 'tpu'"),
    "device cuda:7": (["train", *TINY, *QUICK, "--device", "cuda:7"], "is not available"),
    "num-classes -5": (["train", *TINY[:-2], "--num-classes", "-5", *QUICK], "--num-classes is -5"),
    "num-classes 0": (["train", *TINY[:-2], "--num-classes", "0", *QUICK], "the model's classifier has 0"),
    "img-size 12": (["train", *TINY[:1], "--img-size", "12", *TINY[3:], *QUICK], "multiple of its patch 8"),
    "img-size 4": (["prune", *TINY[:1], "--img-size", "4", *PRUNE, "-o", "p"], "smaller than the patch (16 px)"),
    "depth 0": (["train", *TINY[:9], "--depth", "0", *TINY[9:], *QUICK], "--depth is 0"),
    "kd nan": (["finetune", "ART", "--teacher", "ART", *QUICK, "--kd-weight", "nan"], "--kd-weight must be a finite"),
    "ce 0 kd 0": (
        ["finetune", "ART", "--teacher", "ART", *QUICK, "--ce-weight", "0", "--kd-weight", "0"],
        "--ce-weight, --kd-weight and --hidden-weight are all 0",
    ),
    "temperature 0": (["finetune", "ART", *QUICK, "--temperature", "0"], "--temperature must be in (0, "),
    "gas gain nan": (["finetune", "ART", *QUICK, "--gas-target", "0.3", "--gas-gain", "nan"], "--gas-gain must be"),
    "eval limit 0": (["eval", "ART", "--limit", "0"], "--limit must be in [1, 2147483647]"),
    "eval limit -3": (["eval", "ART", "--limit", "-3"], "--limit must be in [1, 2147483647]"),
    "eval batch 0": (["eval", "ART", "--batch-size", "0"], "--batch-size must be in [1, "),
    "eval split": (["eval", "ART", "--split", "test"], "unknown --split 'test'"),
    "eval device": (["eval", "ART", "--device", "gpu"], "unknown --device 'gpu'"),
    "bench mode": (["bench", "ART", "--mode", "foo"], "unknown mode 'foo'"),
    "bench threads 0": (["bench", "ART", "--threads", "0"], "--threads must be >= 1"),
    "export tolerance 0": (["export", "ART", "-o", "m.onnx", "--tolerance", "0"], "--tolerance must be in (0, "),
    "export tolerance nan": (["export", "ART", "-o", "m.onnx", "--tolerance", "nan"], "--tolerance must be a finite"),
    "export workspace inf": (["export", "ART", "-o", "m.onnx", "--trt", "--workspace", "inf"], "--workspace inf"),
    "merge=nan": (["tokens", "ART", "--method", "tome", "--schedule", "merge=nan", "-o", "t"], "is not a number"),
    "keep=inf": (["tokens", "ART", "--method", "topk", "--schedule", "inf@1", "-o", "t"], "is not a number"),
    "tokens flops nan": (
        ["tokens", "ART", "--method", "topk", "--schedule", "0.7@1", "--flops-reduction", "nan", "-o", "t"],
        "--flops-reduction must be a finite number",
    ),
    "search tolerance": (
        ["tokens", "ART", "--method", "topk", "--schedule", "0.7@1", "--search", "--tolerance", "2", "-o", "t"],
        "tolerance must be in [0, 1]",
    ),
    "prune calib 0": (["prune", "ART", *PRUNE, "--calib-images", "0", "-o", "p"], "--calib-images must be"),
    "prune seed": (["prune", "ART", *PRUNE, "--seed", "99999999999", "-o", "p"], "--seed must be in"),
    "prune method-opt nan": (
        ["prune", "ART", *PRUNE[:2], "--method", "ihp", "--method-opt", "lr=nan", "-o", "p"],
        "method option lr of ihp must be a finite number",
    ),
    "prune method-opt huge": (
        ["prune", "ART", *PRUNE[:2], "--method", "amap", "--method-opt", "steps=99999999999999999999", "-o", "p"],
        "method option steps of amap must be a finite number of at most 2147483647",
    ),
    "prune data": (["prune", "ART", *PRUNE, "--data", "nope", "-o", "p"], "data folder 'nope' does not exist"),
    "empty output": (["prune", "ART", *PRUNE, "-o", ""], "output path is empty"),
    "dot output": (["prune", "ART", *PRUNE, "-o", ".", "--force"], "is the working folder or contains it"),
    "compress dot output": (
        ["compress", "ART", "--latency-reduction", "0.3", "--backend", "torch-cpu", *QUICK, "-o", ".", "--force"],
        "is the working folder or contains it",
    ),
    "profile inside the input": (
        ["profile", "ART", "--backend", "torch-cpu", "-o", "ART/table.json", "--force"],
        "is inside the input",
    ),
    "parent output": (["train", *TINY, *QUICK, "-o", "..", "--force"], "is the working folder or contains it"),
    "pipeline depth-blocks 0": (
        ["pipeline", "ART", "--flops-reduction", "0.4", *QUICK, "--depth-blocks", "0", "-o", "p"],
        "--depth-blocks must be in [1, 1024]",
    ),
    "pipeline depth-blocks -1": (
        ["pipeline", "ART", "--flops-reduction", "0.4", *QUICK, "--depth-blocks", "-1", "-o", "p"],
        "--depth-blocks must be in [1, 1024]",
    ),
    "pipeline depth-blocks 2": (
        ["pipeline", "ART", "--flops-reduction", "0.4", *QUICK, "--depth-blocks", "2", "-o", "p"],
        "--depth-blocks must be between 1 and 1 (the teacher has 2 blocks)",
    ),
    "pipeline depth-share nan": (
        ["pipeline", "ART", "--flops-reduction", "0.4", *QUICK, "--depth-share", "nan", "-o", "p"],
        "--depth-share must be a finite number",
    ),
    "pipeline config types": (
        ["pipeline", "ART", "--config", "CONFIG", *QUICK, "-o", "p"],
        "pipeline config key 'train.epochs' must be an integer, got 'three'",
    ),
}


@pytest.mark.parametrize("case", sorted(RANGES))
def test_every_bad_value_is_one_line_before_anything_is_written(case, art, tmp_path, monkeypatch, capsys):
    if case == "device cuda:7" and CUDA and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    args, needle = RANGES[case]
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "pipe.json").write_text(json.dumps({"flops_reduction": 0.4, "train": {"epochs": "three"}}))
    monkeypatch.chdir(work)
    argv = [{"ART": str(art), "CONFIG": str(tmp_path / "pipe.json")}.get(a, a) for a in args]
    argv = [a.replace("ART/", f"{art}/") if a.startswith("ART/") else a for a in argv]
    if argv[0] in ("train", "finetune") and "-o" not in argv:
        argv += ["-o", "out"]
    before = tree(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


def test_a_rejected_dot_output_leaves_no_moved_aside_folder(art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "prune", art, *PRUNE, "-o", ".", "--force")
    assert code == 2 and one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["arts"]  # no ..old-* nor .tmp-* left


def test_a_link_to_the_working_folder_is_refused(art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "up").symlink_to(tmp_path.parent, target_is_directory=True)
    for name in ("here", "up"):
        code, _, err = run(capsys, "prune", art, *PRUNE, "-o", name, "--force")
        assert code == 2 and one_line(err) and "is the working folder or contains it" in err, err
    assert sorted(os.listdir(tmp_path)) == ["arts", "here", "up"] and (tmp_path / "here").is_symlink()


# ------------------------------------------------------------------------ 6. inputs that used to crash
def test_a_teacher_with_another_input_size_is_one_line(art, tmp_path, capsys):
    teacher = save(
        vitcompress.create_source_model("vit_tiny_patch16_224", **{**TINY_KW, "img_size": 24}), tmp_path / "t"
    )
    code, _, err = run(capsys, "finetune", art, "--teacher", teacher, *QUICK, "-o", tmp_path / "out")
    assert code == 2 and one_line(err) and "the teacher takes 3x24x24 images, the student 3x16x16" in err
    code, _, err = run(capsys, "eval", art, "--teacher", teacher, "--limit", "4")
    assert code == 2 and one_line(err) and "the teacher takes 3x24x24 images" in err
    assert not (tmp_path / "out").exists()


CLASSES = "abcdefghij"  # as many class folders as the tiny models' classifier has outputs


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder of 10 classes (the tiny artifact's), 3 images each."""
    from PIL import Image

    root = tmp_path / "imgs"
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (60 * i, 20 * k, 30)).save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "error, needle, code",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "error: cannot write", 2),
        (OSError(errno.EROFS, "Read-only file system"), "error: cannot write", 2),
        (KeyboardInterrupt(), "error: interrupted", 130),
    ],
    ids=["disk full", "read-only", "ctrl-c"],
)
def test_a_full_disk_or_an_interrupt_is_one_line_and_leaves_nothing(
    error, needle, code, art, tmp_path, capsys, monkeypatch
):
    import vitcompress.artifact

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(vitcompress.artifact, "save_file", fail)
    before = tree(tmp_path)
    got, _, err = run(capsys, "prune", art, *PRUNE, "-o", tmp_path / "out")
    assert got == code and one_line(err) and err.rsplit("\r", 1)[-1].lstrip().startswith(needle), err
    assert tree(tmp_path) == before  # no output, no temporary folder, no lock file


def test_an_unreadable_image_in_a_loader_worker_is_one_line(image_folder, art, capsys):
    """The worker's traceback, folded into the error the main process receives, is not shown."""
    (image_folder / "b" / "9.png").write_bytes(b"\x89PNG broken")
    code, _, err = run(capsys, "eval", art, "--data", image_folder, "--workers", "1")
    assert code == 2 and one_line(err) and "9.png' cannot be read" in err and "Traceback" not in err, err


def test_an_rgb_image_folder_feeds_a_grayscale_model(image_folder, tmp_path, capsys):
    gray = save(vitcompress.create_source_model("vit_tiny_patch16_224", **TINY_KW, in_chans=1), tmp_path / "g")
    code, out, err = run(capsys, "eval", gray, "--data", image_folder, "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 30


def test_image_folder_problems_are_one_line(image_folder, art, tmp_path, capsys):
    two = save(vitcompress.create_source_model("vit_tiny_patch16_224", **TINY_KW, in_chans=2), tmp_path / "two")
    code, _, err = run(capsys, "eval", two, "--data", image_folder)
    assert code == 2 and one_line(err) and "the model takes 2 channels" in err
    (image_folder / "b" / "9.png").write_bytes(b"\x89PNG broken")
    code, _, err = run(capsys, "eval", art, "--data", image_folder)
    assert code == 2 and one_line(err) and "9.png' cannot be read" in err
    code, _, err = run(capsys, "train", *TINY, *QUICK[2:], "--data", image_folder, "-o", tmp_path / "out")
    assert code == 2 and one_line(err) and "9.png' cannot be read" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_with_other_classes_than_the_model_is_one_line(image_folder, art, tmp_path, capsys):
    """Labels are the sorted class folders: with another number of classes than the classifier's,
    label i is not the model's class i (fewer) or not an output at all (more)."""
    three = tmp_path / "three"
    for c in CLASSES[:3]:
        shutil.copytree(image_folder / c, three / c)
    before = tree(tmp_path)
    need = "the data has 3 classes but the model's classifier has 10; pass data with 10 classes or use a model"
    for argv, fix in (
        (["eval", art, "--data", three], "num_classes=3"),
        (["finetune", art, *QUICK[2:], "--data", three, "-o", tmp_path / "out"], "num_classes=3"),
        (["train", *TINY, *QUICK[2:], "--data", three, "-o", tmp_path / "out"], "--num-classes 3"),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and need in err and err.rstrip().endswith(fix), (argv, err)
    assert tree(tmp_path) == before
    art3 = save(
        vitcompress.create_source_model("vit_tiny_patch16_224", **{**TINY_KW, "num_classes": 3}), tmp_path / "a3"
    )
    code, _, err = run(capsys, "eval", art3, "--data", image_folder)
    assert code == 2 and one_line(err) and "the data has 10 classes but the model's classifier has 3" in err, err
    code, out, err = run(capsys, "eval", art3, "--data", three, "--json")
    assert code == 0 and json.loads(out)["images"] == 9, err
    code, out, err = run(capsys, "train", *TINY[:-1], "3", *QUICK[2:], "--data", three, "-o", tmp_path / "t3")
    assert code == 0 and (tmp_path / "t3" / META).is_file(), err


def _edit(art, path, value=None, delete=False):
    record = json.loads((art / META).read_text())
    node = record
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    (art / META).write_text(json.dumps(record))


TOKENS_KEEP = {"method": "topk", "kind": "keep", "keep": {"1": 0.7}, "spec": "0.7@1"}
CORRUPT = {
    "counts.macs string": (["counts", "macs"], "x", "counts.macs is a string 'x', not an integer"),
    "counts missing": (["counts"], None, "counts.macs is missing"),
    "counts_source.macs zero": (["counts_source", "macs"], 0, "counts_source.macs is 0, outside"),
    "counts extra key": (["counts", "speed"], 3, "counts.speed is not a count"),
    "history not a list": (["history"], {}, "history is an object, not a list"),
    "history step a number": (["history", 0], 5, "history[0] is 5, not an object"),
    "history target null": (["history", 0, "target"], None, "history[0].target is null, not an object"),
    "history reduction string": (["history", 0, "target", "reduction"], "x", "history[0].target.reduction"),
    "history granularity": (["history", 0, "config", "granularity"], 5, "history[0].config.granularity"),
    "embed_dim negative": (["spec", "embed_dim"], -1, "spec.embed_dim is -1"),
    "embed_dim string": (["spec", "embed_dim"], "32", "spec.embed_dim is a string '32'"),
    "no blocks": (["spec", "blocks"], [], "spec.blocks is empty"),
    "scale nan": (["spec", "blocks", 0, "scale"], math.nan, "spec.blocks[0].scale is nan"),
    "scale negative": (["spec", "blocks", 0, "scale"], -1.0, "spec.blocks[0].scale is -1.0, not a positive number"),
    "heads 0": (["spec", "blocks", 0, "num_heads"], 0, "spec.blocks[0].num_heads is 0"),
    "mlp float": (["spec", "blocks", 0, "mlp_hidden"], 1.5, "spec.blocks[0].mlp_hidden is 1.5, not an integer"),
    "stage 3": (["spec", "blocks", 0, "stage"], 3, "spec.blocks[0].stage is 3, but the spec has 1 stage"),
    "widths disagree": (["spec", "blocks", 0, "mlp_hidden"], 100, "plan.layers.0.mlp keeps 128, the spec says 100"),
    "source name": (["source", "name"], 5, "source.name is 5, not a model name"),
    "source unknown name": (["source", "name"], "resnet18", "no model family rebuilds 'resnet18'"),
    "source kwargs list": (["source", "kwargs"], [], "source.kwargs is a list, not an object"),
    "source checkpoint_path": (["source", "kwargs", "checkpoint_path"], "/x.pth", "checkpoint_path is not a creation"),
    "source img_size": (["source", "kwargs", "img_size"], -3, "source.kwargs.img_size is -3"),
    "source depth huge": (["source", "kwargs", "depth"], 10**9, "source.kwargs.depth is 1000000000"),
    # creation options in range that describe another model than the recorded source counts
    "source depth 100": (["source", "kwargs", "depth"], 100, "source.kwargs (depth 100, width 32) give 1,277,162"),
    "source embed_dim 1e6": (["source", "kwargs", "embed_dim"], 10**6, "(depth 2, width 1000000) give 24,000,237"),
    "source embed_dim float": (["source", "kwargs", "embed_dim"], 1e6, "embed_dim is 1000000.0, not an integer"),
    "source num_classes": (["source", "kwargs", "num_classes"], 5, "counts_source 32,170 and 150,976: they are not"),
    "source img_size other": (["source", "kwargs", "img_size"], 64, "give 34,090 params and 2,531,776 MACs"),
    "source mlp_ratio huge": (["source", "kwargs", "mlp_ratio"], 1e30, "source.kwargs.mlp_ratio is 1e+30, above"),
    "plan repeated block": (["plan", "blocks"], [0, 0], "plan.blocks repeats an index"),
    "plan negative head": (["plan", "layers", "0", "heads"], [-1, 1], "plan.layers.0.heads[0] is -1"),
    "plan index beyond source": (["plan", "layers", "0", "mlp", 0], 10**6, "keeps index 1000000, the source block"),
    "plan embed beyond source": (["plan", "embed", 0], 999, "plan keeps channel 999 of stage 0"),
    "tokens keep 2": (["tokens"], {"method": "topk", "kind": "keep", "keep": {"0": 2}}, "tokens.keep.0 is 2"),
    "tokens block 9": (["tokens"], {"method": "topk", "kind": "keep", "keep": {"9": 0.5}}, "names block 9"),
    "tokens unknown field": (["tokens"], {"method": "topk", "kind": "rate", "x": 1}, "tokens.x is not a schedule"),
    "tokens number": (["tokens"], 5, "tokens is 5, not an object"),
    "tokens option": (["tokens"], {"method": "topk", "kind": "rate", "options": {"vpa": "no"}}, "tokens.options.vpa"),
    "format_version string": (["format_version"], "1", "format_version is a string '1'"),
    "extra list": (["extra"], [], "extra is a list, not an object"),
    "extra nan": (["extra", "x"], math.nan, "extra.x is nan, not a finite number"),
    "scale beyond float32": (
        ["spec", "blocks", 0, "scale"],
        1e308,
        "spec.blocks[0].scale is 1e+308, beyond the largest",
    ),
    "tokens spec other keep": (["tokens"], {**TOKENS_KEEP, "spec": "0.5@1"}, "tokens.spec '0.5@1' does not describe"),
    "tokens spec other kind": (["tokens"], {**TOKENS_KEEP, "spec": "rate=0.1"}, "tokens.spec 'rate=0.1' does not"),
    "tokens spec not a schedule": (["tokens"], {**TOKENS_KEEP, "spec": "x"}, "tokens.spec 'x' is not a schedule"),
    "tokens start of keep": (["tokens"], {**TOKENS_KEEP, "start": 99}, "tokens.start is 99, but a keep schedule"),
    "tokens rate of keep": (["tokens"], {**TOKENS_KEEP, "rate": 0.5}, "tokens.rate is 0.5, but a keep schedule"),
    "tokens options null": (["tokens"], {**TOKENS_KEEP, "options": None}, "tokens.options is null, not an object"),
    "tokens options list": (["tokens"], {**TOKENS_KEEP, "options": []}, "tokens.options is a list, not an object"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_record_is_one_line_for_every_reader(case, art, tmp_path, capsys):
    path, value, needle = CORRUPT[case]
    if case == "history step a number" or case.startswith("history"):
        _edit(art, ["history"], [{"method": "oneshot", "config": {}, "target": {"metric": "macs", "reduction": 0.3}}])
    _edit(art, path, value, delete=case == "counts missing")
    before = tree(tmp_path)
    for argv in (
        ["info", art],
        ["info", art, "--json"],
        ["eval", art, "--limit", "4"],
        ["prune", art, *PRUNE, "-o", tmp_path / "out"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and needle in err, (argv, err)
        assert "is corrupt" in err or "no model family" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("change", ["fp16", "nan", "missing", "extra", "shape"])
def test_weights_that_do_not_match_the_record_are_refused_at_load(change, art, tmp_path, capsys):
    state = load_file(str(art / WEIGHTS))
    if change == "fp16":
        state = {k: v.half() for k, v in state.items()}
    elif change == "nan":
        state["blocks.1.mlp.fc2.weight"][0, 0] = math.nan
    elif change == "missing":
        del state["head.bias"]
    elif change == "extra":
        state["head.extra"] = torch.zeros(2)
    else:
        state["head.bias"] = torch.zeros(11)
    save_file(state, str(art / WEIGHTS))
    needle = {
        "fp16": "is torch.float16, the model expects torch.float32",
        "nan": "'blocks.1.mlp.fc2.weight' holds NaN or infinite values",
        "missing": "tensor 'head.bias' is missing",
        "extra": "tensor 'head.extra' is not part of the model",
        "shape": "tensor 'head.bias' has shape (11,), the spec gives (10,)",
    }[change]
    with pytest.raises(VitCompressError, match="is corrupt"):
        vitcompress.load(art)
    code, _, err = run(capsys, "prune", art, *PRUNE, "-o", tmp_path / "out")  # not copied forward
    assert code == 2 and one_line(err) and needle in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ 7. source.kwargs
def test_source_kwargs_never_reach_the_model_constructor(art, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    ck = tmp_path / "evil.pth"
    ck.write_bytes(pickle.dumps({"state_dict": Evil(marker)}))
    _edit(art, ["source", "kwargs", "checkpoint_path"], str(ck))
    for argv in (["info", art], ["info", art, "--plot", tmp_path / "w.png"], ["eval", art, "--limit", "2"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and one_line(err) and "checkpoint_path is not a creation option the vit family" in err
    assert not marker.exists() and not (tmp_path / "w.png").exists()
    with pytest.raises(VitCompressError, match="checkpoint_path is not a creation option"):
        vitcompress.create_source_model("vit_tiny_patch16_224", checkpoint_path=str(ck))


def test_a_model_timm_created_beyond_its_named_widths_reloads(tmp_path):
    """The record's source describes the model (widths, depth, heads), so the plan check at load
    compares the plan with the model that was pruned, not with the named configuration's defaults."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=208, depth=13, num_heads=4, num_classes=10
    ).eval()
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1", output=tmp_path / "a")
    kwargs = read_meta(tmp_path / "a").source.kwargs
    assert (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]) == (208, 13, 4)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(vitcompress.load(tmp_path / "a")(x), res.model(x))


# ------------------------------------------------------------------------ 8. leftovers and modes
def test_stale_temporary_siblings_are_removed_by_the_next_run(art, tmp_path, capsys):
    out = tmp_path / "out"
    stale = [tmp_path / ".out.tmp-abcd1234", tmp_path / ".out.tmp-x_y_z_09"]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"\0" * 1000)
    stale[1].write_bytes(b"half an onnx file")
    unrelated = [tmp_path / ".out2.tmp-abcd1234", tmp_path / ".out.tmp-short", tmp_path / "out.tmp-abcd1234"]
    for p in unrelated:
        p.mkdir()
    code, _, err = run(capsys, "prune", art, *PRUNE, "-o", out)
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in unrelated)  # other outputs' and non-temporary names stay
    assert sorted(p.name for p in remove_stale(out)) == []


def test_remove_stale_keeps_what_recover_dir_needs(tmp_path):
    old = tmp_path / ".run.old-abcd1234"
    (old / "x").mkdir(parents=True)
    assert remove_stale(tmp_path / "run") == []  # ``run`` is missing: the moved-aside folder may be restored
    (tmp_path / "run").mkdir()
    assert remove_stale(tmp_path / "run") == [old]  # ``run`` exists: the moved-aside copy is stale


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_have_the_umask_modes(mask, tmp_path, capsys):
    old = os.umask(mask)
    try:
        assert run(capsys, "train", *TINY, *QUICK, "-o", tmp_path / "t")[0] == 0
        assert run(capsys, "prune", tmp_path / "t", *PRUNE, "-o", tmp_path / "p")[0] == 0
    finally:
        os.umask(old)
    for folder in (tmp_path / "t", tmp_path / "p"):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~mask
        for f in folder.iterdir():
            assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f


def test_an_empty_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import vitcompress.pruner

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(vitcompress.pruner, "resolve", no_model)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "prune", *BY_NAME, "-o", "", "--flops-reduction", "0.3", "--importance", "taylor")
    assert code == 2 and one_line(err) and "output path is empty" in err
    assert os.listdir(tmp_path) == []


def method_numbers():
    for name in METHODS.list():
        for f in dataclasses.fields(get_method(name).options):
            if f.type in ("int", "float"):
                yield name, f.name, f.type


@pytest.mark.parametrize("method, name, kind", list(method_numbers()))
def test_every_method_option_refuses_non_finite_and_huge_numbers(method, name, kind):
    """From the command line's strings and from an options object alike."""
    m = get_method(method)
    for bad in ["nan", "inf", "-inf", "1e300"] if kind == "float" else ["99999999999999999999", "1.5", "x"]:
        with pytest.raises(VitCompressError, match=f"option {name}"):
            m.parse_options({name: bad})
    for bad in [math.nan, math.inf, 10**12] if kind == "float" else [10**12, 2.0, True]:
        with pytest.raises(VitCompressError, match=f"option {name}"):
            m.parse_options(dataclasses.replace(m.options(), **{name: bad}))
    m.parse_options({name: str(getattr(m.options(), name))})  # the default is accepted


def test_library_settings_share_the_checks():
    """What the command line refuses, the library refuses: the checks live in the settings."""
    with pytest.raises(VitCompressError, match="unknown optimizer 'adamz'"):
        TrainConfig(optimizer="adamz").validate()
    with pytest.raises(VitCompressError, match="clip_grad must be >= 0"):
        TrainConfig(clip_grad=-1.0).validate()
    with pytest.raises(VitCompressError, match="smoothing must be a finite number"):
        TrainConfig(smoothing=float("nan")).validate()
    with pytest.raises(VitCompressError, match=r"limit must be in \[1, 2147483647\]"):
        evaluate_data(tiny("vit"), "digits", limit=0)
