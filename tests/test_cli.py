"""The command line: a real prune + info run, and every bad input as one line with exit code 2."""

import json
import os

import pytest

from vitcompress.cli import main

TINY = ["vit_tiny_patch16_224", "--img-size", "32", "--num-classes", "10"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prune_then_info(tmp_path, capsys):
    out = tmp_path / "a"
    code, stdout, _ = run(
        capsys,
        "prune",
        *TINY,
        "-o",
        out,
        "--flops-reduction",
        "0.3",
        "--importance",
        "taylor",
        "--calib-images",
        "8",
        "--granularity",
        "heads,mlp,embed",
    )
    assert code == 0
    assert "achieved" in stdout and "MACs are multiply-accumulates" in stdout
    code, stdout, _ = run(capsys, "info", out)
    assert code == 0
    lines = [l for l in stdout.splitlines() if l.strip() and l.split()[0].isdigit()]
    assert len(lines) == 12  # one row per block
    code, stdout, _ = run(capsys, "info", out, "--json")
    assert json.loads(stdout)["source"]["name"] == "vit_tiny_patch16_224"


def test_models_lists_supported_names(capsys):
    code, stdout, _ = run(capsys, "models", "deit_small*")
    assert code == 0
    assert "deit_small_patch16_224" in stdout.split()


@pytest.fixture
def artifact(tmp_path, capsys):
    out = tmp_path / "art"
    assert run(capsys, "prune", *TINY, "-o", out, "--flops-reduction", "0.2", "--importance", "l1")[0] == 0
    return out


BAD = {
    "unknown model": (
        ["prune", "vit_tiny_patch16_22", "--flops-reduction", "0.3"],
        "did you mean vit_tiny_patch16_224",
    ),
    "unsupported architecture": (["prune", "resnet18", "--flops-reduction", "0.3"], "unsupported architecture"),
    "R above range": (["prune", *TINY, "--flops-reduction", "1.5"], "outside (0, 1)"),
    "R zero": (["prune", *TINY, "--params-reduction", "0"], "outside (0, 1)"),
    "two budgets": (["prune", *TINY, "--flops-reduction", "0.3", "--params-reduction", "0.3"], "exactly one budget"),
    "unreachable": (
        ["prune", *TINY, "--flops-reduction", "0.95", "--granularity", "depth", "--importance", "l1"],
        "budget unreachable",
    ),
    "unknown granularity": (
        ["prune", *TINY, "--flops-reduction", "0.3", "--granularity", "heads,rows"],
        "unknown granularity rows",
    ),
    "unknown scorer": (["prune", *TINY, "--flops-reduction", "0.3", "--importance", "tylor"], "did you mean taylor"),
    "bad round-to": (["prune", *TINY, "--flops-reduction", "0.3", "--round-to", "0"], "--round-to"),
    "missing artifact": (["info", "/nonexistent/artifact"], "does not exist"),
    "unknown option": (["prune", *TINY, "--flops-reduction", "0.3", "--speed"], "No such option"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    args, needle = BAD[case]
    out = tmp_path / "out"
    if args[0] == "prune":
        args = [*args, "-o", out]
    code, stdout, stderr = run(capsys, *args)
    assert code == 2
    assert needle in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_checkpoint_that_does_not_fit(tmp_path, capsys, artifact):
    code, _, err = run(
        capsys,
        "prune",
        *TINY,
        "-o",
        tmp_path / "x",
        "--flops-reduction",
        "0.3",
        "--checkpoint",
        artifact / "model.safetensors",
    )
    assert code == 2 and "does not fit the model" in err and not (tmp_path / "x").exists()


def test_matching_checkpoint_loads(tmp_path, capsys):
    import torch

    from vitcompress.models import create_source_model

    torch.manual_seed(3)
    m = create_source_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w.pth")
    code, _, err = run(
        capsys,
        "prune",
        *TINY,
        "-o",
        tmp_path / "x",
        "--flops-reduction",
        "0.3",
        "--importance",
        "l1",
        "--checkpoint",
        tmp_path / "w.pth",
    )
    assert code == 0, err
    import vitcompress
    from vitcompress.reference import mask_model

    loaded = vitcompress.load(tmp_path / "x")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), mask_model(m, loaded.vitcompress_meta.plan)(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("damage", ["json", "weights", "missing"])
def test_corrupt_artifact(damage, artifact, capsys):
    if damage == "json":
        (artifact / "vitcompress.json").write_text("{not json")
    elif damage == "weights":
        (artifact / "model.safetensors").write_bytes(b"garbage")
    else:
        (artifact / "model.safetensors").unlink()
    code, _, err = run(capsys, "prune", artifact, "-o", artifact.parent / "y", "--flops-reduction", "0.3")
    assert code == 2 and ("corrupt" in err or "missing" in err)
    assert len(err.strip().splitlines()) == 1


def test_existing_output_needs_force(artifact, capsys):
    code, _, err = run(capsys, "prune", *TINY, "-o", artifact, "--flops-reduction", "0.3")
    assert code == 2 and "--force" in err
    code, _, _ = run(
        capsys, "prune", *TINY, "-o", artifact, "--flops-reduction", "0.3", "--importance", "l1", "--force"
    )
    assert code == 0


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        capsys, "prune", *TINY, "-o", tmp_path / "x", "--flops-reduction", "0.3", "--data", tmp_path / "empty"
    )
    assert code == 2 and "no images" in err and not (tmp_path / "x").exists()


def test_info_plot_writes_a_png(artifact, tmp_path, capsys):
    code, _, err = run(capsys, "info", artifact, "--plot", tmp_path / "w.png")
    assert code == 0, err
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Opaque:
    """A pickled Python object that is not a state dict."""


@pytest.mark.parametrize("kind", ["random-bytes.pth", "random-bytes.safetensors", "object.pth", "list.pth"])
def test_corrupt_checkpoint_is_one_line_exit_2_and_writes_nothing(kind, tmp_path, capsys):
    import random

    import torch

    ck = tmp_path / kind
    if kind.startswith("random-bytes"):
        ck.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "object.pth":
        torch.save(Opaque(), ck)
    else:
        torch.save([torch.zeros(2), "not a state dict"], ck)
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "prune", *TINY, "-o", out, "--flops-reduction", "0.3", "--importance", "l1", "--checkpoint", ck
    )
    assert code == 2
    assert err.startswith(f"error: checkpoint {str(ck)!r} is not a readable state dict (")
    assert err.rstrip().endswith(
        "pass a .safetensors file or a .pth state dict saved with torch.save(model.state_dict())"
    )
    assert len(err.strip().splitlines()) == 1
    if kind == "object.pth":
        assert "Opaque" in err  # the reason names the pickled class
    elif kind == "list.pth":
        assert "list, not a dict of tensors" in err
    assert not out.exists() and os.listdir(tmp_path) == [kind]


@pytest.mark.parametrize(
    "given, needle",
    [
        ("w.pth", "'w.pth' is a file, not a vitcompress artifact folder"),
        ("runs/nope", "'runs/nope' does not exist"),
    ],
)
def test_model_path_that_is_not_an_artifact(given, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"weights")
    code, _, err = run(capsys, "prune", given, "-o", "out", "--flops-reduction", "0.3", "--importance", "l1")
    assert code == 2 and needle in err and "--checkpoint" in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert os.listdir(tmp_path) == ["w.pth"]
