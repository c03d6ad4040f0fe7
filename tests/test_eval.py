"""Evaluation numbers against hand-computed ones; ImageFolder data; finetune/eval CLI errors."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny
from torch.utils.data import DataLoader, TensorDataset

from vitcompress.artifact import save
from vitcompress.cli import main
from vitcompress.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_matches_hand_computed_top1_top5_loss_and_agreement():
    model = tiny("vit")
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    order = logits.argsort(-1, descending=True)
    # labels by construction: 4 images right (rank 0), 3 in the top-5 (rank 3), 3 outside (rank 9)
    ranks = [0, 0, 0, 0, 3, 3, 3, 9, 9, 9]
    y = torch.stack([order[i, r] for i, r in enumerate(ranks)])
    loader = DataLoader(TensorDataset(x, y), batch_size=3)  # uneven last batch
    r = evaluate(model, loader, teacher=tiny("vit"))
    assert r.images == 10
    assert r.top1 == pytest.approx(0.4) and r.top5 == pytest.approx(0.7)
    assert r.loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert r.agreement == pytest.approx(1.0)  # same weights (seed 0) as the model
    other = evaluate(model, loader, teacher=tiny("vit", seed=4))
    with torch.no_grad():
        t = tiny("vit", seed=4)(x).argmax(-1)
    assert other.agreement == pytest.approx(float((t == logits.argmax(-1)).float().mean()))


def run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def image_folder(tmp_path):
    """3 classes x 4 images (val split) as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_cli_eval_on_an_image_folder_matches_the_library(tmp_path, capsys, image_folder):
    model = tiny("vit", num_classes=3)
    art = save(model, tmp_path / "art")
    code, stdout, err = run(capsys, "eval", art, "--data", image_folder, "--json", "--batch-size", "5")
    assert code == 0, err
    got = json.loads(stdout)
    # by hand: the same images through timm's eval transform, one at a time
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    from vitcompress.data import DataConfig

    cfg = DataConfig.from_model(model)
    ds = ImageFolder(
        str(image_folder / "val"),
        transform=create_transform(input_size=(3, 32, 32), is_training=False, mean=cfg.mean, std=cfg.std),
    )
    with torch.no_grad():
        correct = sum(int(model(ds[i][0][None]).argmax()) == ds[i][1] for i in range(len(ds)))
    assert got["images"] == 12 and got["top1"] == pytest.approx(correct / 12)


def test_finetune_with_distillation_from_the_cli(tmp_path, capsys):
    teacher = save(tiny("vit"), tmp_path / "teacher")
    student = tmp_path / "student"
    assert (
        run(
            capsys, "prune", teacher, "-o", student, "--flops-reduction", "0.3", "--importance", "l1", "--round-to", "1"
        )[0]
        == 0
    )
    out = tmp_path / "ft"
    code, stdout, err = run(
        capsys,
        "finetune",
        student,
        "--teacher",
        teacher,
        "--data",
        "digits",
        "--epochs",
        "1",
        "--max-steps-per-epoch",
        "2",
        "--batch-size",
        "8",
        "--hidden-weight",
        "0.5",
        "--quiet",
        "-o",
        out,
    )
    assert code == 0, err
    rec = json.loads((out / "train_log.json").read_text())
    assert rec["distill"]["hidden"] == 0.5 and rec["teacher"] == str(teacher)
    assert rec["val"]["agreement"] is not None  # agreement with the teacher is reported while training


BAD = {
    "mismatched classes": (["--teacher", "TEACHER7"], "teacher has 7 classes but the student has 10"),
    "missing data folder": (["--teacher", "TEACHER", "--data", "/nonexistent/imgs"], "does not exist"),
    "unknown option": (["--teacher", "TEACHER", "--kd-weigth", "1"], "No such option"),
    "hard without dist token": (["--teacher", "TEACHER", "--distill", "hard"], "distillation token"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_finetune_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    arts = tmp_path / "arts"
    arts.mkdir()
    student = save(tiny("vit"), arts / "s")
    teachers = {
        "TEACHER": save(tiny("vit", seed=1), arts / "t"),
        "TEACHER7": save(tiny("vit", num_classes=7), arts / "t7"),
    }
    extra, needle = BAD[case]
    extra = [str(teachers.get(a, a)) for a in extra]
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "finetune", student, *extra, "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet", "-o", out
    )
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert sorted(os.listdir(tmp_path)) == ["arts"]
