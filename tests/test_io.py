"""Atomic outputs: a folder is replaced in one swap, and a crash mid-replacement is recoverable."""

import os

import pytest
import torch

from vitcompress.io import atomic_dir, exchange, recover_dir


def _folder(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


def test_exchange_swaps_two_folders(tmp_path):
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    assert exchange(a, b)
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


def test_atomic_dir_replaces_without_leftovers_and_keeps_the_old_on_failure(tmp_path):
    out = _folder(tmp_path / "out", "old")
    with atomic_dir(out, force=True) as tmp:
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new" and os.listdir(tmp_path) == ["out"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("killed")
    assert (out / "f").read_text() == "new" and os.listdir(tmp_path) == ["out"]


def test_a_crash_between_the_fallback_renames_is_recovered_on_resume(tmp_path, monkeypatch):
    import vitcompress.io as io
    from vitcompress.training import CHECKPOINT_FORMAT, prepare_output

    out = _folder(tmp_path / "run", "epoch 1")
    fields = dict(config={}, model={}, optimizer={}, scheduler={}, scaler={}, step=0, history=[], rng=[], callbacks=[])
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 1, "epoch": 1, **fields}, out / "checkpoint.pt")
    monkeypatch.setattr(io, "exchange", lambda a, b: False)  # a platform without renameat2
    calls = []
    real = os.rename

    def rename(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after moving the old folder aside
        return real(a, b)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "f").write_text("epoch 2")
    monkeypatch.setattr(io.os, "rename", real)
    assert not out.exists()
    assert prepare_output(out, resume=True, force=False)["epoch"] == 1  # resumes from epoch 1
    assert (out / "f").read_text() == "epoch 1"  # the previous epoch's folder is back
    assert not recover_dir(out)  # nothing left to recover
