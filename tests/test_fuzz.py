"""Property-based checks (hypothesis, fixed seed): generated command lines, token schedules,
artifact records and settings values are accepted or refused in one line, never a traceback, and a
refusal writes nothing. ``benchmarks/studies/fuzz.py`` runs the same generators over 10,000 cases."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitcompress.artifact import META, check_with_family
from vitcompress.benchmarks.studies import fuzz
from vitcompress.callbacks import GASConfig
from vitcompress.config import check_fields, merge_config
from vitcompress.distill import DistillConfig
from vitcompress.errors import VitCompressError
from vitcompress.exporters import BuildConfig, ExportConfig
from vitcompress.meta import ArtifactMeta
from vitcompress.pruner import PruneConfig
from vitcompress.quantization import QuantizeConfig
from vitcompress.recipe import PipelineConfig
from vitcompress.spec import RecordError
from vitcompress.token_search import SearchConfig
from vitcompress.tokens.schedule import TokenSchedule, parse_schedule
from vitcompress.training import TrainConfig

CONFIGS = (
    TrainConfig,
    DistillConfig,
    PruneConfig,
    PipelineConfig,
    SearchConfig,
    GASConfig,
    QuantizeConfig,
    ExportConfig,
    BuildConfig,
)
FAST = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return fuzz.Sandbox(tmp_path_factory.mktemp("fuzz"))


def check(outcome: fuzz.Outcome) -> None:
    assert outcome.kind not in ("traceback", "dirty"), f"{outcome.kind}: {' '.join(outcome.argv)} -> {outcome.detail}"
    assert not outcome.inputs_modified, f"input modified: {' '.join(outcome.argv)} -> {outcome.detail}"


def test_an_input_changed_by_a_case_is_counted_whatever_the_outcome(sandbox, monkeypatch):
    """Every path a command line reads is hashed before and after, accepted cases included; outputs
    and the folders around the case are not inputs."""
    case = sandbox.case()
    (case / "in.txt").write_text("x")
    argv = ["info", "in.txt", "-o", "file.txt", "--plot", "dir", "--data", ".."]
    assert fuzz.input_paths(argv, case, sandbox.root) == [case / "in.txt"]
    assert fuzz.input_paths([*argv, "--schedule", "\x00", "x" * 5000], case, sandbox.root) == [case / "in.txt"]

    def writes_its_input(args):
        (case / "in.txt").write_text("changed")
        return 0

    monkeypatch.setattr(fuzz, "cli_main", writes_its_input)
    out = fuzz.run_argv(argv, case, sandbox, "cli", timeout=0)
    assert out.kind == "accepted" and out.inputs_modified and "input modified" in out.detail
    assert fuzz.summary([out])["total"]["inputs modified"] == 1
    monkeypatch.setattr(fuzz, "cli_main", lambda args: 0)
    assert not fuzz.run_argv(argv, case, sandbox, "cli", timeout=0).inputs_modified


def test_a_case_that_leaves_gradients_off_does_not_change_the_next(sandbox, monkeypatch):
    import torch

    def grad_off(args):
        torch.set_grad_enabled(False)  # what a cut while a no_grad block unwinds leaves behind
        return 0

    monkeypatch.setattr(fuzz, "cli_main", grad_off)
    fuzz.run_argv(["info"], sandbox.case(), sandbox, "cli", timeout=0)
    assert torch.is_grad_enabled()


# ------------------------------------------------------------------------------ the command line
@settings(FAST, max_examples=40)
@given(data=st.data())
def test_generated_command_lines(sandbox, data, one_thread):
    check(fuzz.run_case("cli", data.draw(fuzz.strategy("cli", sandbox)), sandbox, timeout=2.0))


@settings(FAST, max_examples=60)
@given(data=st.data())
def test_generated_token_schedules_on_the_command_line(sandbox, data, one_thread):
    check(fuzz.run_case("schedule", data.draw(fuzz.strategy("schedule", sandbox)), sandbox, timeout=2.0))


@settings(FAST, max_examples=80)
@given(data=st.data())
def test_generated_corrupt_records(sandbox, data, one_thread):
    check(fuzz.run_case("record", data.draw(fuzz.strategy("record", sandbox)), sandbox, timeout=2.0))


def test_the_fuzz_script_counts_and_classifies(tmp_path, capsys):
    """The standing script on a small slice: every surface ran, nothing crashed or wrote on refusal."""
    outcomes = fuzz.fuzz(12, 3, 2.0, tmp_path / "work", {"cli": 0.25, "schedule": 0.25, "record": 0.5}, warm=False)
    s = fuzz.summary(outcomes)
    assert len(outcomes) == 12 and {o.surface for o in outcomes} == set(fuzz.SURFACES)
    assert s["total"].get("traceback", 0) == 0 and s["total"].get("dirty", 0) == 0
    assert s["total"]["inputs modified"] == 0
    assert s["total"].get("rejected", 0) > 0


def test_a_cut_never_lands_inside_an_import(sandbox, tmp_path, monkeypatch):
    """A case past its limit is cut, but only once the module it is importing is complete: a
    half-initialised module would break every later case."""
    (tmp_path / "slow_module_i14.py").write_text("import time\ntime.sleep(0.6)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def slow_command(argv):
        import slow_module_i14  # noqa: F401  (the cut arrives during this import)

        while True:
            time.sleep(0.01)

    monkeypatch.setattr(fuzz, "cli_main", slow_command)
    t0 = time.perf_counter()
    outcome = fuzz.run_argv(["slow"], sandbox.case(), sandbox, "cli", timeout=0.2)
    assert outcome.kind == "cut" and 0.5 < time.perf_counter() - t0 < 5
    assert sys.modules["slow_module_i14"].DONE


def test_a_cut_waits_until_the_case_leaves_code_called_from_cpp(sandbox, tmp_path, monkeypatch):
    """Inside the exporters and tracers (Python called from C++) a cut would end the process: it
    lands once the case is back in ordinary code."""
    native = tmp_path / "native_i14"
    native.mkdir()
    (native / "slow_export_i14.py").write_text("import time\n\ndef run():\n    time.sleep(0.8)\n    return 1\n")
    monkeypatch.syspath_prepend(str(native))
    monkeypatch.setattr(fuzz, "NO_CUT_IN", (f"{os.sep}native_i14{os.sep}",))
    import slow_export_i14

    finished = []

    def command(argv):
        finished.append(slow_export_i14.run())  # the cut is due after 0.2 s, inside run()
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(fuzz, "cli_main", command)
    outcome = fuzz.run_argv(["export"], sandbox.case(), sandbox, "cli", timeout=0.2)
    assert outcome.kind == "cut" and finished == [1]


# ------------------------------------------------------------------------------ token schedules
@settings(FAST, max_examples=400)
@given(spec=fuzz.schedules(), method=st.sampled_from(fuzz.REDUCERS))
def test_a_schedule_string_parses_or_is_refused_and_round_trips(spec, method):
    try:
        sched = parse_schedule(spec, method)
    except VitCompressError as e:
        assert "\n" not in str(e)
        return
    again = TokenSchedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert again == sched
    assert all(0 < k <= 1 for k in sched.keep.values()) and 0 <= sched.rate < 1 and sched.merge >= 0


# ------------------------------------------------------------------------------ artifact records
@pytest.fixture(scope="module")
def record(sandbox):
    return json.loads((sandbox.art / META).read_text())


@settings(FAST, max_examples=300)
@given(change=fuzz.record_changes())
def test_a_changed_record_is_read_or_refused_by_field(record, change, tmp_path_factory):
    if "weights" in change:
        return
    d = copy.deepcopy(record)
    path = tmp_path_factory.mktemp("rec")
    (path / META).write_text(json.dumps(d))
    (path / "model.safetensors").write_bytes(b"")
    fuzz.apply_change(path, change)
    d = json.loads((path / META).read_text())
    try:
        meta = ArtifactMeta.from_dict(d)
        check_with_family(meta)
    except RecordError as e:
        assert "\n" not in str(e) and len(str(e)) < 400
        return
    except VitCompressError:
        return
    # what is accepted is a record every reader can use
    assert meta.spec is not None and meta.plan is not None
    meta.plan.check(meta.spec)
    json.dumps(meta.to_dict())


# ------------------------------------------------------------------------------ settings values
def numeric_fields(cls):
    """The number fields (a field that also takes text, such as a ``1:8:32`` profile, is parsed
    from its text and is not one)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kinds = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        if kinds & {int, float} and str not in kinds and not dataclasses.is_dataclass(hints[f.name]):
            yield f, float in kinds


BASE = {GASConfig: {"target": 0.3}, PruneConfig: {"flops_reduction": 0.3}, PipelineConfig: {"flops_reduction": 0.3}}
FIELDS = [(cls, f.name, is_float) for cls in CONFIGS for f, is_float in numeric_fields(cls)]


@pytest.mark.parametrize("cls, name, is_float", FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _ in FIELDS])
def test_every_numeric_setting_refuses_nan_infinity_and_out_of_range(cls, name, is_float):
    cfg = cls(**BASE.get(cls, {}))
    for bad in [math.nan, math.inf, -math.inf] if is_float else [1.5, "3", True]:
        broken = dataclasses.replace(cfg, **{name: bad})
        with pytest.raises(VitCompressError, match=name):
            broken.validate()
    bounds = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("range", {})
    for key, edge in bounds.items():
        outside = {"ge": edge - 1, "gt": edge, "le": edge + 1, "lt": edge}[key]
        if not is_float:
            outside = int(outside)
        broken = dataclasses.replace(cfg, **{name: outside})
        with pytest.raises(VitCompressError):
            broken.validate()
    if not is_float and not {"le", "lt"} & set(bounds):  # no stated upper bound: still no C overflow
        with pytest.raises(VitCompressError, match=f"{name} must be at most 2147483647"):
            dataclasses.replace(cfg, **{name: 10**20}).validate()


@settings(FAST, max_examples=200)
@given(
    cls=st.sampled_from(CONFIGS),
    values=st.dictionaries(st.sampled_from(["epochs", "lr", "kd", "train", "images", "gain", "x"]), fuzz.VALUES),
)
def test_settings_from_a_file_are_accepted_or_refused_in_one_line(cls, values):
    base = cls(**BASE.get(cls, {}))
    try:
        cfg = merge_config(base, values, "test")
        cfg.validate()
        check_fields(cfg)
    except VitCompressError as e:
        assert "\n" not in str(e)
