"""The one output rule (docs/guarantees.md): never the same path as, inside or containing an input,
--force or not; the old output replaced only by a complete new one (compress too); disk errors in
one line naming the path; counts capped at what finishes, checked before anything is written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from helpers import synthetic_table, tiny
from test_reliability import PRUNE, QUICK, TINY_KW, one_line, run, tree

import vitcompress
import vitcompress.artifact
from vitcompress.errors import VitCompressError
from vitcompress.io import DiskError, atomic_dir, disk_errno
from vitcompress.latency_search import compress as compress_mod
from vitcompress.latency_search.compress import CompressConfig, compress
from vitcompress.training import TrainConfig

TOKENS = ["--method", "topk", "--schedule", "0.7@1"]


@pytest.fixture
def art(tmp_path):
    """A tiny artifact (16 px, 2 blocks) in its own folder."""
    return vitcompress.save(
        vitcompress.create_source_model("vit_tiny_patch16_224", **TINY_KW), tmp_path / "arts" / "art"
    )


# ------------------------------------------------------------------------ same path as an input
@pytest.mark.parametrize(
    "args, needle",
    [
        (["prune", "ART", *PRUNE, "-o", "ART", "--force"], "is the input"),
        (["tokens", "ART", *TOKENS, "-o", "ART", "--force"], "is the input"),
        (["finetune", "ART", *QUICK, "-o", "ART", "--force"], "is the input"),
        (["train", "ART", *QUICK, "-o", "ART", "--force"], "is the input"),
        (["finetune", "OTHER", "--teacher", "ART", *QUICK, "-o", "ART", "--force"], "is the input"),
        (["pipeline", "ART", "--flops-reduction", "0.4", *QUICK, "-o", "ART", "--force"], "is the input"),
        (["pipeline", "ART", "--config", "CONFIG", *QUICK, "-o", "CONFIG", "--force"], "is the input"),
        (["bench", "ART", "--backend", "torch-cpu", "--report", "ART", "--force"], "is the input"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "T", "--plot", "T", "--force"], "another output"),
    ],
    ids=["prune", "tokens", "finetune", "train", "teacher", "pipeline", "config", "bench", "profile plot"],
)
def test_an_output_is_never_an_input_even_with_force(args, needle, art, tmp_path, capsys):
    other = vitcompress.save(tiny("vit"), tmp_path / "other")
    (tmp_path / "pipe.json").write_text('{"flops_reduction": 0.4}')
    (tmp_path / "t.json").write_text("{}")
    names = {"ART": str(art), "OTHER": str(other), "CONFIG": str(tmp_path / "pipe.json"), "T": str(tmp_path / "t.json")}
    before = tree(tmp_path)
    code, _, err = run(capsys, *[names.get(a, a) for a in args])
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


def test_a_symlinked_output_is_replaced_without_leftovers(art, tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    code, _, err = run(capsys, "prune", art, *PRUNE, "-o", tmp_path / "link", "--force")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["arts", "link", "real"]  # no .link.tmp-XXXXXXXX
    assert vitcompress.artifact.is_artifact(tmp_path / "link") and not (tmp_path / "link").is_symlink()


# ------------------------------------------------------------------------ compress: the old output survives
@pytest.fixture
def table(tmp_path):
    return synthetic_table(tiny("vit"), head_ms=0.01).save(tmp_path / "table.json")


def _cfg(table, **kw):
    train = TrainConfig(data="digits", epochs=1, max_steps_per_epoch=1, batch_size=8, progress=False)
    return CompressConfig(latency_reduction=0.3, latency_table=str(table), calib_images=8, search_images=8,
                          token_method="none", train=train, **kw)  # fmt: skip


def test_compress_force_keeps_the_old_output_when_the_new_run_fails(table, tmp_path, monkeypatch):
    model = vitcompress.save(tiny("vit"), tmp_path / "art")
    old = tmp_path / "out"
    old.mkdir()
    (old / "report.md").write_text("the old run")

    def no_mix(*args, **kwargs):
        raise VitCompressError("no mix of depth, tokens and widths reaches a 30.0% latency cut")

    monkeypatch.setattr(compress_mod, "search", no_mix)
    before = tree(tmp_path)
    with pytest.raises(VitCompressError, match="no mix"):
        compress(model, _cfg(table), old, force=True, progress=False)
    assert tree(tmp_path) == before  # the old output whole, no temporary sibling, no lock
    with pytest.raises(VitCompressError, match="no mix"):  # a new output: no half-made folder either
        compress(model, _cfg(table), tmp_path / "new", progress=False)
    assert tree(tmp_path) == before
    # compress ART -o ART --force: refused before any work, the artifact intact
    with pytest.raises(VitCompressError, match="is the input"):
        compress(model, _cfg(table), model, force=True, progress=False)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"latency_batch": 0}, "latency_batch must be in [1, 65536]"),
        ({"latency_batch": 99999999999999999999}, "latency_batch must be in [1, 65536]"),
        ({"max_depth_drop": -1}, "max_depth_drop must be in [0, 1024]"),
        ({"max_depth_drop": 2000}, "max_depth_drop must be in [0, 1024]"),
        ({"max_depth_drop": 99}, "max_depth_drop must be at most 3 (the model has 4 blocks)"),
        ({"latency_table": None, "backend": "trt"}, "backend trt cannot measure here"),
        ({"latency_table": None, "backend": "torch-cpu", "latency_precision": "fp16"}, "cannot measure here"),
    ],
)
def test_compress_checks_everything_before_writing(options, needle, table, tmp_path, monkeypatch):
    model = vitcompress.save(tiny("vit"), tmp_path / "art")
    cfg = _cfg(table)
    for k, v in options.items():
        setattr(cfg, k, v)
    before = tree(tmp_path)
    with pytest.raises(VitCompressError) as e:
        compress(model, cfg, tmp_path / "out", progress=False)
    assert needle in str(e.value), str(e.value)
    assert tree(tmp_path) == before  # no out/compress.json: the next run is not refused as existing


def test_compress_checks_the_teacher_before_the_search(table, tmp_path, monkeypatch):
    model = vitcompress.save(tiny("vit"), tmp_path / "art")
    teacher = vitcompress.save(
        vitcompress.create_source_model("vit_tiny_patch16_224", **{**TINY_KW, "img_size": 24}),
        tmp_path / "teacher",
    )
    monkeypatch.setattr(compress_mod, "search", lambda *a, **k: pytest.fail("searched"))
    before = tree(tmp_path)
    with pytest.raises(VitCompressError, match="the teacher takes 3x24x24 images"):
        compress(model, _cfg(table), tmp_path / "out", teacher=str(teacher), progress=False)
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------ disk errors
class SafetensorError(Exception):
    """What safetensors raises (its Rust IO error in the text)."""


@pytest.mark.parametrize(
    "error, code",
    [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), errno.EDQUOT),
        (OSError(errno.EROFS, "Read-only file system"), errno.EROFS),
        (
            SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            ),
            errno.ENOSPC,
        ),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"), errno.ENOSPC),
    ],
    ids=["ENOSPC", "EDQUOT", "EROFS", "safetensors", "torch.save"],
)
def test_a_disk_error_names_the_output_and_the_bytes_and_leaves_nothing(
    error, code, art, tmp_path, capsys, monkeypatch
):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(vitcompress.artifact, "save_file", fail)
    before = tree(tmp_path)
    got, _, err = run(capsys, "prune", art, *PRUNE, "-o", tmp_path / "out")
    assert got == 2 and one_line(err), err
    assert f"error: cannot write '{tmp_path / 'out'}': {os.strerror(code)} (" in err and " kB needed)" in err, err
    assert tree(tmp_path) == before


def test_a_disk_error_inside_a_training_write_names_the_output(art, tmp_path, capsys, monkeypatch):
    import vitcompress.training

    def fail(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")

    monkeypatch.setattr(vitcompress.training.torch, "save", fail)
    before = tree(tmp_path)
    got, _, err = run(capsys, "finetune", art, *QUICK, "-o", tmp_path / "out")
    assert got == 2 and one_line(err) and f"cannot write '{tmp_path / 'out'}': No space left on device" in err, err
    assert tree(tmp_path) == before


def test_disk_errno_reads_every_writer_and_nothing_else():
    assert disk_errno(OSError(errno.ENOENT, "x")) is None
    assert disk_errno(ValueError("code: 28")) == errno.ENOSPC
    assert disk_errno(ValueError("code: 2")) is None
    assert disk_errno(KeyboardInterrupt()) is None
    assert disk_errno(VitCompressError("No space left on device")) is None


def test_an_atomic_folder_on_a_full_disk_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("old")
    with pytest.raises(DiskError, match=r"'.*out': No space left on device \(2.0 MB needed\)"):
        with atomic_dir(out, force=True, need=2_000_000) as tmp:
            (tmp / "f").write_text("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert os.listdir(tmp_path) == ["out"] and (out / "f").read_text() == "old"


# ------------------------------------------------------------------------ counts capped at what finishes
HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["bench", "ART", "--backend", "torch-cpu", "--iters", HUGE], "--iters must be in [1, 100000]"),
        (["bench", "ART", "--backend", "torch-cpu", "--warmup", HUGE], "--warmup must be in [0, 10000]"),
        (["bench", "ART", "--backend", "torch-cpu", "--rounds", HUGE], "--rounds must be in [1, 1000]"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--iters", HUGE], "--iters must be at most"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--warmup", HUGE], "--warmup must be at most"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--sweep", HUGE], "--sweep must be at most"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--batch", HUGE], "--batch must be at most"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--threads", "-5"], "--threads must be in"),
        (["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--threads", "0"], "--threads must be in"),
        (["eval", "ART", "--limit", "2147483648"], "--limit must be in [1, 2147483647]"),
    ],
)
def test_counts_are_capped_at_what_finishes(args, needle, art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    code, _, err = run(capsys, *[str(art) if a == "ART" else a for a in args])
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------ inputs that used to be tracebacks
@pytest.mark.parametrize(
    "body, needle",
    [
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('{"a":' * 100000 + "1" + "}" * 100000, "nested too deeply"),
        ("[" * 300 + "1" + "]" * 300, None),
    ],
    ids=["list 100000", "dict 100000", "list 300"],
)
@pytest.mark.parametrize("where", ["latency table", "pipeline config"])
def test_deeply_nested_json_is_one_line(where, body, needle, art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deep.json").write_text(body)
    if where == "latency table":
        argv = ["compress", art, "--latency-reduction", "0.3", "--latency-table", "deep.json", *QUICK, "-o", "c"]
        needle = needle or "not a latency table"
    else:
        argv = ["pipeline", art, "--config", "deep.json", "--flops-reduction", "0.3", *QUICK, "-o", "p"]
        needle = needle or "holds a list, not a mapping"
    before = tree(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


def test_long_output_and_model_names_are_one_line(art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    code, _, err = run(capsys, "prune", art, *PRUNE, "-o", "x" * 300)
    assert code == 2 and one_line(err) and "is 300 bytes long, longer than the 241" in err, err
    code, _, err = run(capsys, "prune", "x" * 5000, *PRUNE, "-o", "out")
    assert code == 2 and one_line(err) and "name too long" in err, err
    assert tree(tmp_path) == before


def test_a_bare_assertion_of_the_model_code_gets_its_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "prune", "vit_tiny_r_s16_p8_384", "--img-size", "112", *PRUNE, "-o", "o")
    assert code == 2 and one_line(err), err
    assert "cannot create 'vit_tiny_r_s16_p8_384': the model's check `assert " in err and "img_size=112" in err, err
    assert os.listdir(tmp_path) == []


def test_a_failed_hub_download_is_one_line(tmp_path, monkeypatch, capsys):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection\nor set offline mode.")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "prune", "vit_tiny_patch16_224", "--pretrained", *PRUNE, "-o", "o")
    assert code == 2 and one_line(err) and "cannot load pretrained weights" in err and "--checkpoint" in err, err


# what the hub client does without a connection: it logs each retry, then raises
NOISY_HUB = """
import logging, sys
import timm.models._builder as builder
real = builder.load_pretrained
def load_pretrained(*args, **kwargs):
    log = logging.getLogger("huggingface_hub.utils._http")
    log.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://huggingface.co/x")
    log.warning("Retrying in 1s [Retry 1/5].")
    return real(*args, **kwargs)
builder.load_pretrained = load_pretrained
from vitcompress.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_pretrained_weights_without_the_hub_are_exactly_one_error_line(tmp_path):
    """A real ``--pretrained`` run in a fresh process, the hub forced offline and its cache empty:
    stderr is the error line alone (the hub client's retry log and warnings do not reach it), naming
    the local-file fix."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONWARNINGS": "default"}
    argv = ["prune", "deit_tiny_patch16_224", "--pretrained", *PRUNE, "-o", str(tmp_path / "o")]
    proc = subprocess.run(
        [sys.executable, "-c", NOISY_HUB, *argv], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "cannot load pretrained weights for 'deit_tiny_patch16_224' (the model hub cannot be reached" in lines[0]
    assert "--checkpoint FILE" in lines[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ bench: nothing measured is an error
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine measures on torch-cuda")
def test_bench_that_measures_nothing_fails_unless_allow_skip(art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["bench", art, "--backend", "torch-cuda", "--batch", "1", "--warmup", "0", "--iters", "1", "--rounds", "1"]
    before = tree(tmp_path)
    code, _, err = run(capsys, *args, "--report", "rep")
    assert code == 2 and one_line(err) and "nothing was measured (torch-cuda: " in err and "--allow-skip" in err, err
    assert tree(tmp_path) == before
    code, out, err = run(capsys, *args, "--allow-skip")
    assert code == 0 and "skipped `torch-cuda`" in out, err


def test_a_bench_report_on_a_full_disk_leaves_the_folder_as_it_was(art, tmp_path, monkeypatch, capsys):
    import vitcompress.benchmarks.report as report

    real = report.to_markdown
    calls = []

    def full_on_the_second_file(result):  # report.json is written, report.md meets a full disk
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(result)

    monkeypatch.setattr(report, "to_markdown", full_on_the_second_file)
    monkeypatch.chdir(tmp_path)
    for existing in (False, True):
        if existing:
            (tmp_path / "rep").mkdir()
            (tmp_path / "rep" / "report.md").write_text("old")
        calls.clear()
        before = tree(tmp_path)
        code, _, err = run(capsys, "bench", art, "--backend", "torch-cpu", "--batch", "1", "--warmup", "0",
                           "--iters", "1", "--rounds", "1", "--report", "rep", "--force")  # fmt: skip
        last = err.strip().splitlines()[-1]  # after the progress bar
        assert code == 2 and last.startswith("error: cannot write 'rep': No space left on device"), err
        assert tree(tmp_path) == before


# ------------------------------------------------------------------------ options with no effect, nonsense schedules
@pytest.mark.parametrize(
    "args, needle",
    [
        (["tokens", "ART", "--method", "topk", "--schedule", "0.9@1;0.7@1", "-o", "t"], "block 1 is given twice"),
        (["tokens", "ART", "--method", "topk", "--schedule", "0.7@1,1", "-o", "t"], "block 1 is given twice"),
        (["tokens", "ART", "--method", "topk", "--schedule", "0.７@1", "-o", "t"], "is not a number"),
        (["tokens", "ART", "--method", "topk", "--schedule", "0.7@１", "-o", "t"], "is not integers"),
        (["tokens", "ART", "--method", "tome", "--schedule", "merge=0", "-o", "t"], "removes no token (merge=0)"),
        (["tokens", "ART", "--method", "topk", "--schedule", "rate=0", "-o", "t"], "removes no token (rate=0)"),
        (["tokens", "ART", "--method", "topk", "--schedule", "rate=1e-300", "-o", "t"], "removes no token"),
        (["tokens", "ART", "--method", "tome", "--schedule", "merge=1", "--no-vpa", "-o", "t"], "--no-vpa applies to"),
        (
            ["tokens", "ART", "--method", "topk", "--schedule", "0.7@1", "--search-images", "8", "-o", "t"],
            "--search-images is used with --search only",
        ),
        (["finetune", "ART", *QUICK, "--ce-weight", "0", "-o", "o"], "--ce-weight has no effect without --teacher"),
        (["finetune", "ART", *QUICK, "--distill", "soft", "-o", "o"], "--distill has no effect without --teacher"),
        (["finetune", "ART", *QUICK, "--hidden-weight", "1", "-o", "o"], "--hidden-weight has no effect without"),
        (
            ["finetune", "ART", *QUICK, "--teacher-checkpoint", "ART/model.safetensors", "-o", "o"],
            "--teacher-checkpoint has no effect without --teacher",
        ),
        (
            ["finetune", "ART", "--teacher", "ART", "--teacher-checkpoint", "ART/model.safetensors", *QUICK, "-o", "o"],
            "drop --teacher-checkpoint",
        ),
        (["finetune", "ART", *QUICK, "--gas-gain", "2", "-o", "o"], "--gas-gain has no effect without --gas-target"),
        (["train", "ART", *QUICK, "-o", "o", "--resume"], "nothing to resume: output 'o' does not exist"),
        (["train", "ART", *QUICK, "-o", "o", "--resume", "--force"], "pass one of them"),
        (["export", "ART", "-o", "m.onnx", "--opt-level", "99"], "--opt-level has no effect without --trt"),
        (["export", "ART", "-o", "m.onnx", "--workspace", "nan"], "--workspace has no effect without --trt"),
        (["export", "ART", "-o", "m.onnx", "--keep-permille", "1:5:9"], "has no effect without --runtime-keep"),
        (
            ["profile", "ART", "--backend", "torch-cpu", "-o", "t.json", "--token-keep", "0"],
            "--token-keep has no effect without --token-method",
        ),
    ],
)
def test_options_with_no_effect_and_nonsense_schedules_are_refused(args, needle, art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("ART", str(art)) for a in args]
    before = tree(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 2 and one_line(err) and needle in err, err
    assert tree(tmp_path) == before


# ------------------------------------------------------------------------ no noise before the error line
def test_a_non_finite_reference_gives_no_numpy_warning():
    import warnings

    import numpy as np

    from vitcompress.exporters.precision import relative_error

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert relative_error(np.array([1.0, np.inf]), np.array([1.0, np.inf])) == (float("inf"), float("inf"))
        assert relative_error(np.array([1.0, 2.0]), np.array([1.0, -np.inf])) == (float("inf"), float("inf"))
        assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == (2.0, 0.5)


def test_eval_on_a_folder_holding_a_fifo_does_not_hang(art, tmp_path, capsys):
    from PIL import Image

    for c in "abcdefghij":  # the artifact's 10 classes
        (tmp_path / "imgs" / c).mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / c / "0.png")
    os.mkfifo(tmp_path / "imgs" / "b" / "1.png")
    code, _, err = run(capsys, "eval", art, "--data", tmp_path / "imgs", "--workers", "0")
    assert code == 2 and one_line(err) and "1.png' is not a regular file" in err, err


def test_tokens_search_options_with_search_are_used(art, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["tokens", art, "--method", "topk", "--schedule", "0.7@1", "--search", "--search-images", "8", "-o", "t"]
    code, out, err = run(capsys, *args)
    assert code == 0 and "wrote t" in out, err
