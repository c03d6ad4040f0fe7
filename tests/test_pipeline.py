"""The width-then-depth pipeline end to end on a tiny teacher, from the API and the CLI."""

import json
import os

import pytest
import torch
from helpers import tiny

from vitcompress.artifact import read_meta, save
from vitcompress.cli import main
from vitcompress.models import create_source_model
from vitcompress.recipe import STAGES, PipelineConfig, run_pipeline
from vitcompress.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pipeline_writes_every_stage_and_reaches_the_target(tmp_path):
    teacher = save(tiny("vit"), tmp_path / "teacher")
    cfg = PipelineConfig(
        flops_reduction=0.5,
        calib_images=16,
        round_to=4,
        train=TrainConfig(data="digits", epochs=1, batch_size=16, max_steps_per_epoch=2, progress=False),
    )
    out = tmp_path / "pipe"
    summary = run_pipeline(str(teacher), cfg, out, progress=False)
    assert [r["stage"] for r in summary["rows"]] == list(STAGES)
    for stage in STAGES[1:]:
        assert (out / stage / "vitcompress.json").is_file()
    w, d = read_meta(out / "width_distilled"), read_meta(out / "depth_distilled")
    assert w.spec.depth == 4 and d.spec.depth < 4  # width stage keeps every block, depth stage removes some
    assert [b.source_index for b in d.spec.blocks] == d.plan.blocks  # block provenance kept for the mapping
    assert [h["method"] for h in d.history][:2] == ["oneshot", "depth-loss"]  # (+ a width trim if blocks fell short)
    assert d.history[0]["config"]["granularity"] == ["heads", "mlp"] and d.history[1]["config"]["granularity"] == [
        "depth"
    ]
    removed = d.history[1]["removed_blocks"]
    imp = d.history[1]["block_importance"]
    assert sorted(imp)[: len(removed)] == sorted(imp[b] for b in removed)  # the least important blocks went
    assert sorted(set(range(4)) - set(removed)) == d.plan.blocks
    assert d.extra["training"]["stage"] == "depth_distilled"
    m0 = summary["rows"][0]["macs"]
    assert summary["achieved"] == pytest.approx(1 - summary["rows"][-1]["macs"] / m0)
    assert abs(summary["achieved"] - 0.5) <= 0.015  # whole blocks, then a width trim: within 1.5 points
    table = (out / "summary.md").read_text()
    assert sum(l.startswith("| ") for l in table.splitlines()) == 6 and "depth_distilled" in table  # header + 5 stages
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text())["rows"][1]["stage"] == "width_pruned"


def _config_file(tmp_path, batch_size: int = 16, **settings):
    """A pipeline config file of a quick run: 40% of MACs, one block dropped, one training step."""
    conf = tmp_path / "pipe.json"
    train = {"data": "digits", "epochs": 1, "batch_size": batch_size, "max_steps_per_epoch": 1}
    conf.write_text(
        json.dumps({"flops_reduction": 0.4, "calib_images": 8, "depth_blocks": 1, **settings, "train": train})
    )
    return conf


def test_pipeline_cli_with_a_config_file_and_bad_input(tmp_path, capsys):
    teacher = save(tiny("vit"), tmp_path / "teacher")
    conf = _config_file(tmp_path)
    out = tmp_path / "p"
    code = main(["pipeline", str(teacher), "--config", str(conf), "--quiet", "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "| depth_pruned |" in cap.out and "target: remove 40.0% of macs" in cap.out
    assert read_meta(out / "depth_pruned").spec.depth == 3
    conf.write_text(json.dumps({"flops_reduction": 0.4, "speed": 3}))
    code = main(["pipeline", str(teacher), "--config", str(conf), "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown pipeline config key 'speed'" in err and len(err.strip().splitlines()) == 1
    code = main(["pipeline", str(teacher), "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 2 and "exactly one final budget" in err
    assert sorted(os.listdir(tmp_path)) == ["p", "pipe.json", "teacher"]


def test_block_importance_is_the_loss_change_when_a_block_is_skipped():
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from vitcompress.recipe import block_importance

    model = tiny("vit")
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    ds = TensorDataset(x, y)
    ds.num_classes = 10
    imp = block_importance(model, DataLoader(ds, batch_size=4))
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        blocks = model.blocks
        model.blocks = nn.Sequential(blocks[0], blocks[1], blocks[3])
        skip2 = F.cross_entropy(model(x), y)
        model.blocks = blocks
    assert float(imp[2]) == pytest.approx(float(skip2 - base), rel=1e-4, abs=1e-6)
    assert len(model.blocks) == 4


def test_a_swin_teacher_is_refused_in_one_line(tmp_path, capsys):
    """The depth stage ranks the blocks of one residual stream: a Swin teacher (two stages) is
    refused by its family's spec, before any stage is written."""
    from vitcompress.errors import VitCompressError

    torch.manual_seed(0)
    swin = create_source_model(
        "swin_tiny_patch4_window7_224",
        in_chans=1,
        num_classes=10,
        embed_dim=16,
        num_heads=(2, 4),
        img_size=32,
        patch_size=2,
        window_size=4,
        depths=(2, 2),
    )
    cfg = PipelineConfig(flops_reduction=0.4, train=TrainConfig(data="digits", epochs=1, progress=False))
    with pytest.raises(VitCompressError, match="this swin model has 2 stages") as e:
        run_pipeline(swin, cfg, tmp_path / "api", progress=False)
    assert "\n" not in str(e.value)
    teacher = save(swin, tmp_path / "teacher")
    code = main(["pipeline", str(teacher), "--flops-reduction", "0.4", "--quiet", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the pipeline ranks the blocks of one residual stream, and this swin model has 2 stages" in err
    assert sorted(os.listdir(tmp_path)) == ["teacher"]


def test_a_cct_teacher_runs_the_pipeline(tmp_path, capsys):
    """A CCT teacher (blocks under ``classifier.blocks``) goes through its family: every stage is
    written and the depth stage removes the block its importance ranks last."""
    pytest.importorskip("vit_pytorch.cct")

    torch.manual_seed(0)
    cct = create_source_model("cct_7_3x1_32", img_size=16, embed_dim=32, depth=3, num_heads=2)
    teacher = save(cct, tmp_path / "teacher")
    conf = _config_file(tmp_path, round_to=4, batch_size=8)
    out = tmp_path / "p"
    code = main(["pipeline", str(teacher), "--config", str(conf), "--quiet", "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["stage"] for r in summary["rows"]] == list(STAGES)
    assert [r["depth"] for r in summary["rows"]] == [3, 3, 3, 2, 2]
    d = read_meta(out / "depth_pruned")
    assert d.source.name == "cct_7_3x1_32" and d.spec.depth == 2
    step = d.history[1]
    assert step["method"] == "depth-loss" and len(step["block_importance"]) == 3
    assert step["removed_blocks"] == [min(range(3), key=lambda b: step["block_importance"][b])]


def test_block_importance_of_a_cct_skips_its_blocks():
    """The family slices a block out: the loss change equals the CCT run with that block removed
    from its own module list (an independent reference)."""
    pytest.importorskip("vit_pytorch.cct")
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from vitcompress.recipe import block_importance

    torch.manual_seed(0)
    model = create_source_model("cct_7_3x1_32", img_size=16, embed_dim=32, depth=3, num_heads=2).eval()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    ds = TensorDataset(x, y)
    ds.num_classes = 10
    imp = block_importance(model, DataLoader(ds, batch_size=4))
    blocks = model.classifier.blocks
    with torch.no_grad():
        base = F.cross_entropy(model(x), y)
        model.classifier.blocks = nn.ModuleList([blocks[0], blocks[2]])
        skip1 = F.cross_entropy(model(x), y)
        model.classifier.blocks = blocks
    assert float(imp[1]) == pytest.approx(float(skip1 - base), rel=1e-4, abs=1e-6)
    assert len(imp) == 3 and len(model.classifier.blocks) == 3
