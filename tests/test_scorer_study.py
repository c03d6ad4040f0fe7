"""The scorer study script at a tiny scale, its default rule, and the default it committed."""

import json
from pathlib import Path

import pytest

from vitcompress.benchmarks.studies import scorer_study
from vitcompress.pruner import PruneConfig, prune
from vitcompress.scorers import ALIASES, SCORERS

STUDY = Path(__file__).resolve().parents[1] / "docs" / "study" / "scorer_study.json"


def test_smoke_writes_json_table_and_plot_and_resumes(tmp_path, one_thread):
    out = tmp_path / "study"
    args = ["--smoke", "--out", str(out), "--reductions", "0.462", "--scorers", "l1,taylor-abs", "--methods", "ihp"]
    assert scorer_study.main([*args, "--seeds", "0"]) == 0
    rec = json.loads((out / "scorer_study.json").read_text())
    assert rec["complete"] and rec["command"].startswith(
        "python -m vitcompress.benchmarks.studies.scorer_study --smoke"
    )
    runs = {(r["criterion"], r["seed"]): r for r in rec["runs"]}
    assert set(runs) == {("l1", 0), ("taylor-abs", 0), ("ihp", 0)}
    for r in runs.values():
        assert abs(r["achieved"] - 0.462) <= 0.015
        assert 0 <= r["top1_pruned"] <= 1 and 0 <= r["top1_finetuned"] <= 1
        assert set(r["kept"]) == {"heads", "qk", "v", "mlp"} and all(0 < v <= 1 for v in r["kept"].values())
    assert runs[("taylor-abs", 0)]["labels_used"] == "true" and runs[("l1", 0)]["labels_used"] is None
    md = (out / "scorer_study.md").read_text()
    assert "### -46.2% MACs" in md and "| taylor-abs |" in md and "| ihp |" in md
    assert "Default by the rule" in md
    assert (out / "scorer_study.png").read_bytes()[:4] == b"\x89PNG"
    # a second seed added with --resume keeps the first runs as they were
    assert scorer_study.main([*args, "--seeds", "0,1", "--resume"]) == 0
    rec2 = json.loads((out / "scorer_study.json").read_text())
    assert rec2["runs"][:3] == rec["runs"] and len(rec2["runs"]) == 6
    assert rec2["command"] == rec["command"] and "--resume" in rec2["resumed_with"][0]


def test_missing_teacher_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="not an artifact folder"):
        scorer_study.main(["--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def _summ(ft, os_, cost=1):
    return {"finetuned": (ft, ft, ft), "pruned": (os_, os_, os_), "cost": cost}


def test_default_rule_fine_tuned_then_one_shot_then_cost():
    t = 0.462
    summ = {("a", t): _summ(98.0, 95.0), ("b", t): _summ(97.6, 96.0), ("c", t): _summ(96.0, 99.0, cost=0)}
    assert scorer_study.pick_default(summ, t, ["a", "b", "c"], 0.5)[0] == "b"  # a and b tie; b is better one-shot
    assert scorer_study.pick_default(summ, t, ["a", "b", "c"], 0.1)[0] == "a"  # no tie
    summ[("b", t)] = _summ(97.6, 95.2, cost=0)
    assert scorer_study.pick_default(summ, t, ["a", "b", "c"], 0.5)[0] == "b"  # tie twice: the cheaper one
    summ[("b", t)] = _summ(97.6, 95.2)
    assert scorer_study.pick_default(summ, t, ["a", "b", "c"], 0.5)[0] == "b"  # same cost: the better one-shot


def test_plot_takes_spreads_of_identical_values(tmp_path):
    """A mean of equal values can exceed them by a rounding error: the error bars must not go negative."""
    m = sum([98.55] * 3) / 3
    summ = {("l1", 0.3): {"achieved": 0.3, "pruned": (m, 98.55, 98.55), "finetuned": (m, 98.55, 98.55)}}
    summ[("l1", 0.462)] = {"achieved": 0.46, "pruned": (98.55 + 1e-13, 98.55, 98.55), "finetuned": (97.0, 96.9, 97.1)}
    scorer_study.plot(summ, tmp_path / "p.png", 0.988, ["l1"])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_the_default_scorer_is_the_one_the_committed_study_picked():
    rec = json.loads(STUDY.read_text())
    assert rec["complete"]
    s = rec["settings"]
    summ = scorer_study.summarise(rec["runs"])
    candidates = [c for c in s["scorers"] if c not in scorer_study.METHODS]
    pick, _ = scorer_study.pick_default(summ, s["pick_at"], candidates, s["noise"])
    default = PruneConfig().importance
    assert default == pick
    assert "importance" not in (prune.__kwdefaults__ or {})  # prune's settings default to PruneConfig's
    assert ALIASES["taylor"] == default  # the name users type for Taylor is the measured best formula
    assert SCORERS.get(default).needs_data
    # the targets on the reference teacher at -46.2% MACs (mean over the seeds)
    best = summ[(default, s["pick_at"])]
    assert best["n"] == len(s["seeds"]) == 3
    assert best["pruned"][0] >= 95.5 and best["finetuned"][0] >= 97.8


def test_prune_help_shows_the_committed_study_at_the_default_budget():
    import re

    from click.testing import CliRunner

    from vitcompress.cli import cli

    rec = json.loads(STUDY.read_text())
    summ = scorer_study.summarise(rec["runs"])
    text = CliRunner().invoke(cli, ["prune", "--help"], terminal_width=200).output
    assert "[default: taylor-abs]" in text.replace("\n", " ").replace("  ", " ") or "taylor-abs]" in text
    shown = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"([a-z0-9-]+)\s+(\d+\.\d\d) / (\d+\.\d\d)", text)}
    assert set(shown) == set(rec["settings"]["scorers"])
    for name, (one_shot, tuned) in shown.items():
        s = summ[(name, rec["settings"]["pick_at"])]
        assert (one_shot, tuned) == (round(s["pruned"][0], 2), round(s["finetuned"][0], 2)), name
