"""Fuzzing as a standing check: generated command lines, token schedules and artifact records.

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.fuzz --cases 10000 --seed 0 --json runs/fuzz.json

Cases are drawn by hypothesis strategies over three surfaces:

- ``cli``: every command with a cheap valid invocation on a tiny model, then one to three changes:
  an option of the command set to a value from its type's pool (negative, zero, huge, NaN,
  infinite, empty, not a number, paths inside or around the inputs, the working folder...), a
  base option dropped, or the positional argument replaced. Options come from the commands
  themselves (click), so a new option is fuzzed with no edit here;
- ``schedule``: ``vitcompress tokens`` with generated schedule strings (keep, rate and merge forms,
  out-of-range and malformed numbers, unknown blocks, random text) and reducers;
- ``record``: a copy of the tiny artifact with one change to ``vitcompress.json`` (a field deleted,
  or replaced by a value of another type: null, booleans, huge or negative integers, NaN,
  infinities, strings, lists, deeply nested values) or to ``model.safetensors`` (fp16 or NaN
  weights, a tensor dropped or added, a truncated or foreign file), then read by ``info``, ``eval``,
  ``prune`` or ``tokens``.

``cli`` covers ``profile`` and ``compress`` too (their valid runs are cut), outputs set to the
positional input (the same path, with and without ``--force``), huge counts and deeply nested JSON
files as configs and latency tables.

Each case runs in process through the installed ``vitcompress`` entry point, in a fresh working
folder next to the shared inputs, and is classified: ``accepted`` (exit 0), ``rejected`` (exit 2
with an ``error: ...`` line last on stderr), ``traceback`` (any other exception or exit), ``dirty``
(rejected, but a file under the working folder or the shared inputs changed), ``cut`` (a valid
request that ran past ``--timeout`` seconds and was stopped; valid runs of huge sizes). The
script prints the counts per surface and in total, and the time. Whatever the outcome, every input
a case names (a path given to anything but ``-o``/``--output``/``--plot``/``--report``, inside the
sandbox and not a folder around the case) is hashed before and after: a change is counted as
``inputs modified``. The exit status is 1 when tracebacks, dirty rejections or modified inputs
occurred. ``export --trt`` is not generated: without TensorRT it
writes the ONNX file before it fails, by design (docs/export.md).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from vitcompress.artifact import META, WEIGHTS, save
from vitcompress.cli import cli
from vitcompress.cli import main as cli_main
from vitcompress.models import create_source_model

SURFACES = ("cli", "schedule", "record")
KINDS = ("accepted", "rejected", "traceback", "dirty", "cut")
#: the tiny model every case works on (16 px images, 4 patches, 2 blocks)
TINY_NAME = "vit_tiny_patch16_224"
TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
TINY_ARGS = [
    "--img-size", "16", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
    "--num-classes", "10",
]  # fmt: skip
QUICK_TRAIN = ["--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--quiet"]
#: options whose value is written, not read: every other path in a command line is an input
OUTPUT_FLAGS = {"-o", "--output", "--plot", "--report"}
#: options never generated (see the module docstring)
SKIPPED_OPTIONS = {"--trt", "--help", "-h", "--version"}


@dataclass
class Outcome:
    """One case: what ran and how it ended."""

    surface: str
    argv: list
    kind: str
    detail: str
    seconds: float
    inputs_modified: bool = False


# ------------------------------------------------------------------------------------------ sandbox
class Sandbox:
    """The shared inputs of every case, built once under ``root``: the tiny artifact ``art``, a second
    artifact ``other``, an ImageFolder ``imgs`` with one unreadable image, config files, a crafted
    pickle, a text file; and a fresh working folder per case (``case``)."""

    def __init__(self, root: Path):
        self.root = root
        shared = root / "shared"
        shared.mkdir(parents=True)
        torch.manual_seed(0)
        self.art = save(create_source_model(TINY_NAME, **TINY), shared / "art")
        self.other = save(create_source_model(TINY_NAME, **TINY), shared / "other")
        self.imgs = shared / "imgs"
        self._image_folder(self.imgs, TINY["num_classes"])
        self.imgs3 = shared / "imgs3"  # fewer classes than the artifact's classifier: refused
        self._image_folder(self.imgs3, 3)
        self.text = shared / "notes.txt"
        self.text.write_text("not a model\n")
        self.pickle = shared / "evil.pt"
        self.pickle.write_bytes(_crafted_pickle(root / "PWNED"))
        self.legacy = shared / "evil_legacy.pth"  # the same object in torch.save's non-zip format
        torch.save({"model": _Evil(f"touch {root / 'PWNED'}")}, self.legacy, _use_new_zipfile_serialization=False)
        self.configs = {}
        for name, body in {
            "good.json": {"flops_reduction": 0.4, "train": {"epochs": 1}},
            "types.json": {"train": {"epochs": "three"}, "depth_blocks": [1]},
            "unknown.json": {"speed": 11},
            "list.json": [1, 2],
            "nan.json": {"flops_reduction": float("nan")},
        }.items():
            p = shared / name
            p.write_text(json.dumps(body))
            self.configs[name] = p
        (shared / "bad.yaml").write_text("train: {epochs: [\n")
        self.configs["bad.yaml"] = shared / "bad.yaml"
        for name, n in (("deep.json", 100_000), ("deep300.json", 300)):  # nested JSON: configs and tables
            (shared / name).write_text('{"a":' * n + "1" + "}" * n)
            self.configs[name] = shared / name
        self.table = shared / "table.json"
        _tiny_table(self.art, self.table)
        self.shared = shared
        self.n = 0

    @staticmethod
    def _image_folder(root: Path, classes: int) -> None:
        """``classes`` class folders of two images each, one more unreadable image in ``b``."""
        from PIL import Image

        for k in range(classes):
            c = "abcdefghijklmnopqrstuvwxyz"[k]
            (root / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (40 * i, 20 * k, 120)).save(root / c / f"{i}.png")
        (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")

    def case(self) -> Path:
        """A fresh working folder holding a file and a folder with content."""
        self.n += 1
        d = self.root / "cases" / f"{self.n:05d}"
        (d / "dir").mkdir(parents=True)
        (d / "dir" / "keep.txt").write_text("x")
        (d / "file.txt").write_text("x")
        return d

    def snapshot(self, case: Path) -> dict:
        """Every file and folder under the case and the shared inputs: path -> (size, mtime, mode) of
        files, the mode of folders (a folder's mtime changes when a lock file comes and goes)."""
        out = {}
        for top in (case, self.shared):
            for p in [top, *top.rglob("*")]:
                try:
                    st_ = p.lstat()
                except FileNotFoundError:
                    continue
                is_dir = p.is_dir() and not p.is_symlink()
                out[str(p)] = (0, 0, st_.st_mode) if is_dir else (st_.st_size, st_.st_mtime_ns, st_.st_mode)
        return out

    # ------------------------------------------------------------------------------ value pools
    def paths(self) -> list[str]:
        a = str(self.art)
        return [
            a, f"{a}/model.safetensors", f"{a}/new.png", f"{a}/sub/x", str(self.other), f"{self.other}/x",
            ".", "..", "", "/", "out", "out/deeper/x.onnx", "file.txt", "dir", "dir/x", "nope/missing.onnx",
            str(self.text), str(self.pickle), str(self.legacy), "m.onnx",
        ]  # fmt: skip

    def tables(self) -> list[str]:
        return [str(self.table), str(self.configs["deep.json"]), str(self.configs["deep300.json"]),
                str(self.configs["good.json"]), str(self.text), "nope.json", str(self.art)]  # fmt: skip

    def data(self) -> list[str]:
        return ["digits", "mnist10k", str(self.imgs), str(self.imgs3), "nope", "", str(self.text), "dir"]


INTS = ["-1", "0", "1", "2", "3", "8", "1000000000", "2147483648", "99999999999999999999", "1.5", "x", "", "nan"]
FLOATS = ["-1", "-0.01", "0", "1e-9", "0.05", "0.3", "0.5", "0.99", "1", "1.5", "100", "1e308", "nan", "inf",
          "-inf", "x", ""]  # fmt: skip
STRINGS = ["", "x", "1", "0.5", "nan", "-1", "1:2:3", "a,b", "../up", "\u00e9\u00e8", "none"]
BY_NAME = {
    "workers": ["-1", "0", "1", "x", "1000000000"],
    "threads": ["1", "0", "-1", "2", "x", "100000"],
    "device": ["cpu", "cuda", "cuda:1", "tpu", "", "CPU", "cpu:0"],
    "granularity": ["heads", "heads,mlp", "embed,depth", "rows", "", "qk,v", "depth", "mlp,mlp"],
    "width_granularity": ["heads,mlp", "embed", "rows", ""],
    "importance": ["l1", "taylor", "random", "fisher", "bogus", ""],
    "labels": ["auto", "true", "pseudo", "bogus"],
    "optimizer": ["adamw", "sgd", "bogus", ""],
    "amp": ["auto", "off", "bf16", "fp16", "bogus"],
    "backend": ["torch-cpu", "torch-cuda", "trt", "bogus", "", "torch-cpu,torch-cpu"],
    "batch": ["1", "1,2", "0", "-1", "1:2:3", "2:1:3", "x", "", "1:8:1000000000", "1,,2"],
    "img_size": ["8:16:24", "16", "15", "0", "8:8:8", "x", "1:2"],
    "keep_permille": ["1:500:1000", "0:1:2", "1:1:2000", "x"],
    "precision": ["fp32", "fp16", "bf16", "int8", ""],
    "mode": ["eager", "compile", "graph", "foo"],
    "split": ["train", "val", "all", "foo", ""],
    "auto_augment": ["rand-m9-mstd0.5", "bogus-m", ""],
    "global_pool": ["token", "avg", "map"],
    "method_opts": ["steps=1", "steps=-1", "lr=nan", "bogus=1", "noequals", "=1", "steps=x"],
    "distill": ["soft", "hard", "auto", "none", "bogus"],
    "kind": ["soft", "hard", "auto", "none", "bogus"],
    "search_metric": ["top1", "agreement", "bogus"],
    "metric": ["top1", "agreement", "bogus"],
}
# methods of prune / tokens
PRUNE_METHODS = ["oneshot", "ihp", "gohsp", "amap", "bogus"]
REDUCERS = ["topk", "topk-vpa", "evit", "tome", "etps", "bogus"]


def schedules() -> st.SearchStrategy[str]:
    """Token schedule strings: the three forms with good and bad numbers and blocks, and random text."""
    num = st.sampled_from(["0.7", "1", "0", "0.5", "-0.3", "1.5", "nan", "inf", "1e-9", "x", "", "0.999999"])
    block = st.sampled_from(["0", "1", "2", "-1", "100", "a", "", " 1", "99999999999999999999"])
    blocks = st.lists(block, max_size=3).map(",".join)
    group = st.one_of(st.builds(lambda k, b: f"{k}@{b}", num, blocks), num)
    keep = st.lists(group, min_size=1, max_size=3).map(";".join)
    start = st.sampled_from(["", "@0", "@1", "@5", "@-1", "@x", "@"])
    rate = st.builds(lambda v, s: f"rate={v}{s}", num, start)
    merges = st.sampled_from(["0", "1", "2", "8", "100", "-1", "1.5", "nan", "x", "99999999999999999999"])
    merge = st.builds(lambda v, s: f"merge={v}{s}", merges, start)
    return st.one_of(keep, rate, merge, st.text(max_size=12))


# ------------------------------------------------------------------------------------------ cli
def base_invocation(name: str, sb: Sandbox) -> tuple[list[str], list[tuple[str, str | None]]]:
    """A cheap valid invocation of command ``name``: positional arguments and (option, value) pairs."""
    art = str(sb.art)
    quick = list(zip(QUICK_TRAIN[::2], QUICK_TRAIN[1::2]))
    train_opts = [(o, v) for o, v in quick if o != "--quiet"] + [("--quiet", None)]
    bases = {
        "prune": ([art], [("-o", "out"), ("--flops-reduction", "0.3"), ("--importance", "l1")]),
        "info": ([art], []),
        "models": (["vit_tiny*"], []),
        "tokens": ([art], [("-o", "out"), ("--method", "topk"), ("--schedule", "0.7@1")]),
        "quantize": ([art], [("-o", "out"), ("--calib-images", "8")]),
        "export": ([art], [("-o", "m.onnx"), ("--no-check", None)]),
        "bench": (
            [art],
            [("--backend", "torch-cpu"), ("--batch", "1"), ("--warmup", "0"), ("--iters", "1"), ("--rounds", "1")],
        ),
        "train": ([TINY_NAME], list(zip(TINY_ARGS[::2], TINY_ARGS[1::2])) + train_opts + [("-o", "out")]),
        "finetune": ([art], [("--teacher", str(sb.other))] + train_opts + [("-o", "out")]),
        "eval": ([art], [("--data", "digits"), ("--limit", "8")]),
        "pipeline": (
            [art],
            [("--flops-reduction", "0.4"), ("--calib-images", "8")] + train_opts + [("-o", "out")],
        ),
        "profile": ([art], [("--backend", "torch-cpu"), ("-o", "t.json")] + PROFILE_QUICK),
        "compress": (
            [art],
            [
                ("--latency-reduction", "0.3"),
                ("--latency-table", str(sb.table)),
                ("--calib-images", "8"),
                ("--search-images", "8"),
                ("--token-method", "none"),
            ]
            + train_opts
            + [("-o", "out")],
        ),  # fmt: skip
    }
    pos, opts = bases[name]
    return list(pos), list(opts)


#: how often each command is drawn (cheap validations more often than whole training runs)
WEIGHTS_BY_COMMAND = {
    "prune": 5, "info": 3, "models": 1, "tokens": 4, "quantize": 2, "export": 1, "bench": 2, "train": 4, "finetune": 3,
    "eval": 3, "pipeline": 2, "profile": 2, "compress": 2,
}  # fmt: skip
#: a profile of the smallest grid (one probe per structure)
PROFILE_QUICK = [("--warmup", "0"), ("--iters", "1"), ("--rounds", "1"), ("--sweep", "1"), ("--heads-points", "1"),
                 ("--dim-points", "1"), ("--mlp-points", "1"), ("--embed-points", "1"), ("--token-points", "1")]  # fmt: skip


def option_values(opt: click.Option, sb: Sandbox, command_name: str) -> list[str]:
    """The value pool of one option (by name where the name says more than the type)."""
    name = opt.name or ""
    if name in BY_NAME:
        return BY_NAME[name]
    if name in ("data", "search_data"):
        return sb.data()
    if name == "teacher":
        return [str(sb.art), str(sb.other), TINY_NAME, "nope", str(sb.text), ""]
    if name in ("checkpoint", "teacher_checkpoint"):
        return [str(sb.text), str(sb.pickle), str(sb.legacy), f"{sb.art}/model.safetensors", "nope.pt", ""]
    if name == "latency_table":
        return sb.tables()
    if name in ("config_file",):
        return [str(p) for p in sb.configs.values()] + ["nope.json"]
    if name == "method":
        return REDUCERS if command_name == "tokens" else PRUNE_METHODS
    if name == "schedule":
        return ["0.7@1", "rate=0.1", "merge=1", "0.7@5", "x"]
    if isinstance(opt.type, click.Choice):
        return [*opt.type.choices, "bogus"]
    if isinstance(opt.type, click.Path):
        return sb.paths()
    if isinstance(opt.type, click.types.IntParamType):
        return INTS
    if isinstance(opt.type, click.types.FloatParamType):
        return FLOATS
    return STRINGS + sb.paths()[:4]


def command(name: str) -> click.Command:
    cmd = cli.get_command(None, name)
    assert cmd is not None
    return cmd


@st.composite
def cli_cases(draw, sb: Sandbox) -> list[str]:
    """``[command, args...]``: a base invocation with one to three changes."""
    names = [n for n, w in WEIGHTS_BY_COMMAND.items() for _ in range(w)]
    name = draw(st.sampled_from(names))
    pos, opts = base_invocation(name, sb)
    cmd = command(name)
    options = [
        p for p in cmd.params if isinstance(p, click.Option) and not set(p.opts) & SKIPPED_OPTIONS and not p.hidden
    ]
    ops = ["set", "set", "set", "drop", "positional", "same"]
    for op in draw(st.lists(st.sampled_from(ops), min_size=1, max_size=3)):
        if op == "set" and options:
            o = draw(st.sampled_from(options))
            flag = max(o.opts, key=len)
            if o.is_flag:
                opts.append((flag, None))
            else:
                value = draw(st.sampled_from(option_values(o, sb, name)))
                if o.name == "schedule":
                    value = draw(st.one_of(st.just(value), schedules()))
                opts.append((flag, value))
        elif op == "drop" and opts:
            opts.pop(draw(st.integers(0, len(opts) - 1)))
        elif op == "positional" and pos:
            pos[0] = draw(st.sampled_from([*sb.paths(), TINY_NAME, "resnet18", "vit_tiny_patch16_22", "*"]))
        elif op == "same" and pos:  # an output at the path of the input (or of a file input), --force or not
            outs = [i for i, (flag, _) in enumerate(opts) if flag in OUTPUT_FLAGS]
            reads = [v for f, v in opts if v is not None and f not in OUTPUT_FLAGS and os.path.exists(v)]
            target = draw(st.sampled_from([pos[0], *reads]))
            if outs:
                i = draw(st.sampled_from(outs))
                opts[i] = (opts[i][0], target)
            else:
                opts.append(("--report" if name == "bench" else "--plot" if name == "info" else "-o", target))
            if draw(st.booleans()):
                opts.append(("--force", None))
    argv = [name, *pos]
    for flag, value in opts:
        argv += [flag] if value is None else [flag, value]
    return argv


@st.composite
def schedule_cases(draw, sb: Sandbox) -> list[str]:
    """``tokens ART --method M --schedule S -o out`` (sometimes with --flops-reduction or --search)."""
    method = draw(st.sampled_from(REDUCERS))
    argv = ["tokens", str(sb.art), "--method", method, "--schedule", draw(schedules()), "-o", "out"]
    extra = draw(st.sampled_from([[], [], ["--flops-reduction", "0.2"], ["--search", "--search-images", "8"]]))
    return argv + extra


# ------------------------------------------------------------------------------------------ records
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.sampled_from([0, -1, 1, 2, 2**31, 2**63, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)  # fmt: skip
DEEP = st.integers(2, 200).map(lambda n: json.loads("[" * n + "1" + "]" * n))
WEIGHT_CHANGES = ("fp16", "nan", "drop", "extra", "truncate", "foreign")
KWARG_KEYS = (*TINY, "mlp_ratio", "reg_tokens", "class_token")
KWARG_VALUES = (0, 1, 2, 3, 8, 16, 32, 100, 1024, 1025, 10**6, 2**24, 2**24 + 1, 1e6, 1e30, 4.0, -1, True, None, "x")


@st.composite
def record_changes(draw) -> dict:
    """A change to an artifact: a JSON path and what happens there, or a change of the weights."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return {"weights": draw(st.sampled_from(WEIGHT_CHANGES))}
    if roll == 1:  # a creation option in or out of its range: it must still describe the recorded source
        return {"kwarg": draw(st.sampled_from(KWARG_KEYS)), "value": draw(st.sampled_from(KWARG_VALUES))}
    return {
        "steps": draw(st.lists(st.integers(0, 10**6), min_size=0, max_size=6)),
        "op": draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "empty"])),
        "value": draw(st.one_of(VALUES, DEEP)),
    }


@st.composite
def record_cases(draw, sb: Sandbox) -> tuple[dict, list[str]]:
    """(a change to the artifact copy ``art``, the command that reads it)."""
    change = draw(record_changes())
    reader = draw(
        st.sampled_from(
            [["info", "art"]] * 5
            + [["info", "art", "--json"], ["eval", "art", "--data", "digits", "--limit", "8"]]
            + [["prune", "art", "--flops-reduction", "0.3", "--importance", "l1", "-o", "out"]] * 2
            + [["tokens", "art", "--method", "topk", "--schedule", "0.7@1", "-o", "out"]]
        )
    )
    return change, reader


def apply_change(art: Path, change: dict) -> str:
    """Change the artifact folder ``art`` as ``change`` says; returns a description."""
    if "weights" in change:
        w = art / WEIGHTS
        state = load_file(str(w))
        kind = change["weights"]
        first = next(iter(state))
        if kind == "fp16":
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        elif kind == "nan":
            state[first] = state[first].clone().fill_(float("nan"))
        elif kind == "drop":
            del state[first]
        elif kind == "extra":
            state["extra.weight"] = torch.zeros(3)
        if kind in ("truncate", "foreign"):
            data = w.read_bytes()
            w.write_bytes(data[: len(data) // 2] if kind == "truncate" else b"PK\x03\x04 not safetensors")
        else:
            save_file(state, str(w))
        return f"weights: {kind}"
    path = art / META
    record = json.loads(path.read_text())
    if "kwarg" in change:
        record["source"]["kwargs"][change["kwarg"]] = change["value"]
        path.write_text(json.dumps(record))
        return f"source.kwargs.{change['kwarg']} = {change['value']!r}"
    node, where = record, []
    for step in change["steps"]:
        if isinstance(node, dict) and node:
            key = sorted(node)[step % len(node)]
        elif isinstance(node, list) and node:
            key = step % len(node)
        else:
            break
        where.append(key)
        node = node[key]
    parent = record
    for key in where[:-1]:
        parent = parent[key]
    op, value = change["op"], change["value"]
    if not where:
        record = value if op == "replace" else {}
    elif op == "replace":
        parent[where[-1]] = value
    elif op == "delete":
        del parent[where[-1]]
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(parent[where[-1]])
    elif op == "empty":
        parent[where[-1]] = type(parent[where[-1]])() if isinstance(parent[where[-1]], (dict, list, str)) else None
    path.write_text(json.dumps(record))
    return f"{op} {'.'.join(map(str, where)) or '<root>'}"


# ------------------------------------------------------------------------------------------ running
class _Cut(BaseException):
    """Raised by the alarm: a case ran past its time limit."""


_IMPORTING = {"depth": 0, "cut": False}  # imports in progress; a cut that arrived during one
_ARMED = {"on": False}  # a case is running under its time limit
#: the alarm repeats at this interval after the limit: a cut raised where Python ignores exceptions
#: (a garbage-collector callback, a ``__del__``) is not lost, the next one stops the case
RECUT_S = 0.5


#: code a cut must not interrupt: the ONNX exporter and the tracers call Python from C++, where an
#: exception raised by the alarm ends the process; the repeating alarm cuts the case once it is out
NO_CUT_IN = tuple(
    f"{os.sep}{p}{os.sep}" for p in ("torch/onnx", "torch/_dynamo", "torch/export", "torch/_export", "torch/fx",
                                     "torch/_functorch", "torch/_subclasses", "torch/_higher_order_ops", "onnxscript")
)  # fmt: skip


def _in_native_callback(frame) -> bool:
    while frame is not None:
        if any(p in frame.f_code.co_filename for p in NO_CUT_IN):
            return True
        frame = frame.f_back
    return False


def _alarm(_signum, frame):
    if not _ARMED["on"] or _in_native_callback(frame):
        return
    if _IMPORTING["depth"]:
        _IMPORTING["cut"] = True  # raised when the import is over (``_imports_not_cut``)
        return
    raise _Cut


#: modules the commands import lazily; imported before the first case (``warm_up``)
LAZY_MODULES = (
    "sklearn.datasets", "scipy.ndimage", "PIL.Image", "matplotlib.pyplot", "onnx", "onnxruntime",
    "onnx_graphsurgeon", "onnxscript", "torch.onnx", "torch._dynamo", "torch.utils.flop_counter",
)  # fmt: skip


def warm_up(sb: Sandbox) -> None:
    """Import what the commands import lazily and run every command's base invocation once, untimed,
    so that no case pays for a first import against its time limit."""
    for name in LAZY_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    for name in WEIGHTS_BY_COMMAND:
        pos, opts = base_invocation(name, sb)
        argv = [name, *pos, *[a for o, v in opts for a in ([o] if v is None else [o, v])]]
        run_argv(argv, sb.case(), sb, "warm-up", timeout=0)


@contextlib.contextmanager
def _imports_not_cut() -> Iterator[None]:
    """Hold a cut back while a module is being imported and raise it right after: a cut that landed
    inside an import would leave a half-initialised module behind for every later case."""
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def guard(fn):
        def guarded(*args, **kwargs):
            _IMPORTING["depth"] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                _IMPORTING["depth"] -= 1
                if not _IMPORTING["depth"] and _IMPORTING["cut"]:
                    _IMPORTING["cut"] = False
                    raise _Cut

        return guarded

    builtins.__import__ = guard(real_import)
    importlib.import_module = guard(real_import_module)
    try:
        yield
    finally:
        builtins.__import__, importlib.import_module = real_import, real_import_module
        _IMPORTING["depth"], _IMPORTING["cut"] = 0, False


def input_paths(argv: list[str], case: Path, root: Path) -> list[Path]:
    """The paths a command line reads: every argument naming an existing path inside the sandbox
    ``root``, except the values of ``OUTPUT_FLAGS`` and folders holding the case (``.``, ``..``)."""
    out = []
    for prev, arg in zip(["", *argv], argv):
        if prev in OUTPUT_FLAGS or not arg or arg.startswith("-"):
            continue
        try:
            p = Path(os.path.realpath(case / arg))
            if p.exists() and p.is_relative_to(root) and not case.resolve().is_relative_to(p):
                out.append(p)
        except (ValueError, OSError):  # a NUL byte or an over-long name: not a path that exists
            continue
    return out


def digest(path: Path) -> str:
    """A hash of a file's bytes, or of every file (names and bytes) and folder under a folder."""
    h = hashlib.sha256()
    items = [path] if path.is_file() else sorted(path.rglob("*"))
    for p in items:
        h.update(os.fsencode(p.relative_to(path) if p != path else p.name) + b"\0")
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
        h.update(b"\1")
    return h.hexdigest()


def _digests(paths: list[Path]) -> dict[str, str | None]:
    return {str(p): digest(p) if p.exists() else None for p in paths}


def run_argv(argv: list[str], case: Path, sb: Sandbox, surface: str, timeout: float) -> Outcome:
    """Run one command line in process in ``case`` and classify the outcome."""
    before = sb.snapshot(case)
    inputs = input_paths([str(a) for a in argv], case, sb.root)
    hashed = _digests(inputs)
    cwd, threads, grad = os.getcwd(), torch.get_num_threads(), torch.is_grad_enabled()
    out, err = io.StringIO(), io.StringIO()
    kind = detail = ""
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    os.chdir(case)
    try:
        if timeout > 0:
            _ARMED["on"] = True
            signal.setitimer(signal.ITIMER_REAL, timeout, RECUT_S)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _imports_not_cut():
            code = cli_main(list(argv))
        _ARMED["on"] = False
    except _Cut:
        _ARMED["on"] = False
        code, kind = None, "cut"
    except SystemExit as e:
        _ARMED["on"] = False
        code = e.code
    except BaseException as e:  # a traceback: what the check is for
        _ARMED["on"] = False
        code, kind = None, "traceback"
        detail = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()[-1][:300]
    finally:
        _ARMED["on"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
        torch.set_num_threads(threads)
        # a cut that lands while a ``no_grad`` block unwinds (the alarm repeats) leaves gradients off
        # for the next case of this process; a real process that is stopped takes its state with it
        torch.set_grad_enabled(grad)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if not kind:
        if code == 0:
            kind = "accepted"
        elif code == 2 and lines and lines[-1].startswith("error: "):
            kind, detail = "rejected", lines[-1]
            if sb.snapshot(case) != before:
                kind = "dirty"
                changed = sorted(set(sb.snapshot(case).items()) ^ set(before.items()))
                detail += f" | changed: {changed[0][0] if changed else '?'}"
        else:
            kind, detail = "traceback", f"exit {code}: {lines[-1] if lines else ''}"[:300]
    modified = _digests(inputs) != hashed
    if modified:
        changed = [p for p, h in _digests(inputs).items() if h != hashed[p]]
        detail += f" | input modified: {changed[0] if changed else '?'}"
    return Outcome(surface, [str(a) for a in argv], kind, detail, seconds, modified)


def run_record(change: dict, reader: list[str], sb: Sandbox, timeout: float) -> Outcome:
    """Copy the tiny artifact into a fresh case folder, change it, read it."""
    case = sb.case()
    shutil.copytree(sb.art, case / "art")
    what = apply_change(case / "art", change)
    res = run_argv(reader, case, sb, "record", timeout)
    res.detail = f"[{what}] {res.detail}"
    return res


def run_case(surface: str, case, sb: Sandbox, timeout: float) -> Outcome:
    if surface == "record":
        return run_record(*case, sb, timeout)
    return run_argv(case, sb.case(), sb, surface, timeout)


def strategy(surface: str, sb: Sandbox) -> st.SearchStrategy:
    return {"cli": cli_cases, "schedule": schedule_cases, "record": record_cases}[surface](sb)


def fuzz(
    cases: int, seed_: int, timeout: float, root: Path, shares: dict[str, float] | None = None, warm: bool = True
) -> list[Outcome]:
    """Run ``cases`` generated cases (split over the surfaces by ``shares``) under ``root``, after
    ``warm_up`` unless ``warm`` is False."""
    shares = shares or {"cli": 0.5, "schedule": 0.2, "record": 0.3}
    sb = Sandbox(root)
    if warm:
        warm_up(sb)
    outcomes: list[Outcome] = []
    for surface in SURFACES:
        n = round(cases * shares.get(surface, 0))
        if n:
            run_surface(surface, n, seed_, sb, timeout, outcomes)
            shutil.rmtree(root / "cases", ignore_errors=True)
    return outcomes


def run_surface(surface: str, n: int, seed_: int, sb: Sandbox, timeout: float, outcomes: list[Outcome]) -> None:
    """Draw and run ``n`` cases of one surface (hypothesis, seeded), appending to ``outcomes``."""
    cases_of = strategy(surface, sb)

    @seed(seed_)
    @settings(max_examples=n, database=None, deadline=None, derandomize=False, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        outcome = run_case(surface, data.draw(cases_of), sb, timeout)
        outcomes.append(outcome)
        if outcome.kind in ("traceback", "dirty") or outcome.inputs_modified:  # shown at once
            print(f"  {outcome.kind}: {' '.join(outcome.argv)} -> {outcome.detail}", file=sys.stderr, flush=True)
        if len(outcomes) % 200 == 0:
            print(f"  {len(outcomes)} cases, {summary(outcomes)['total']}", file=sys.stderr, flush=True)

    one()


def summary(outcomes: list[Outcome]) -> dict:
    """Counts per surface and in total."""
    out: dict = {s: dict(Counter(o.kind for o in outcomes if o.surface == s)) for s in SURFACES}
    out["total"] = dict(Counter(o.kind for o in outcomes))
    for s in SURFACES:
        out[s]["inputs modified"] = sum(o.inputs_modified for o in outcomes if o.surface == s)
    out["total"]["inputs modified"] = sum(o.inputs_modified for o in outcomes)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000, help="Generated cases in all (default 10000).")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed.")
    ap.add_argument("--timeout", type=float, default=3.0, help="Seconds before a valid run is cut.")
    ap.add_argument("--json", help="Write every outcome and the summary here.")
    ap.add_argument("--keep", help="Work in this folder and keep it (default: a temporary folder).")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    _offline()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="vitcompress-fuzz-"))
    t0 = time.perf_counter()
    try:
        outcomes = fuzz(a.cases, a.seed, a.timeout, root)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - t0
    s = summary(outcomes)
    print(f"{len(outcomes)} cases in {seconds:.0f} s (seed {a.seed}, cut after {a.timeout:g} s)")
    for surface in (*SURFACES, "total"):
        counts = s[surface]
        print(f"{surface:>9s}: " + "  ".join(f"{k} {counts.get(k, 0)}" for k in (*KINDS, "inputs modified")))
    bad = [o for o in outcomes if o.kind in ("traceback", "dirty") or o.inputs_modified]
    for o in bad[:30]:
        print(f"{o.kind}: {' '.join(o.argv)} -> {o.detail}")
    print(
        f"tracebacks: {s['total'].get('traceback', 0)}  dirty rejections: {s['total'].get('dirty', 0)}  "
        f"inputs modified: {s['total']['inputs modified']}"
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps({"summary": s, "seconds": seconds, "outcomes": [asdict(o) for o in outcomes]}, indent=1)
        )
    return 1 if bad else 0


def _offline() -> None:
    """No model hub: ``--pretrained`` then fails at once, in one line, instead of retrying a download
    until the case is cut (the hub library reads its offline switch at import, so set it there too)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    with contextlib.suppress(ImportError, AttributeError):
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


class _Evil:
    """Unpickled, it runs a shell command: what a hostile checkpoint would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _tiny_table(art: Path, path: Path) -> None:
    """A latency table of the tiny artifact on torch-cpu, on the smallest grid (a second or two)."""
    from vitcompress.latency_search.profile import ProfileConfig, profile_latency

    cfg = ProfileConfig(backend="torch-cpu", batch=2, warmup=0, iters=1, rounds=1, sweep=1, heads_points=1,
                        dim_points=1, mlp_points=1, embed_points=1, token_points=1, threads=1)  # fmt: skip
    profile_latency(str(art), cfg, progress=False).save(path)


def _crafted_pickle(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when unpickled."""
    return pickle.dumps({"model": _Evil(f"touch {marker}")})


__all__ = ["Outcome", "Sandbox", "fuzz", "main", "run_case", "strategy", "summary"]

if __name__ == "__main__":
    sys.exit(main())
