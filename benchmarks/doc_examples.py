"""The documented examples' check: every command block of README.md and docs/*.md, run in order.

``python -m vitcompress.benchmarks.doc_examples [--pages README.md,docs/tokens.md] [--dry-run]``
extracts the shell commands of the ```console / ```bash / ```sh blocks (a ``$`` prompt is dropped,
``\\`` continuations joined, trailing ``# comments`` removed, output lines skipped), runs each
``vitcompress ...`` command through ``python -m vitcompress.cli`` in a fresh folder (the pages' paths
such as ``runs/teacher`` are relative to it), and checks its outcome: exit code 0 and the ``-o``
output written (a ``# ... error: ...`` comment, or an ``error: ...`` output line right after the
command, expects exit code 2 and that message instead).
Pages run in the order README.md, then docs/*.md by name; within a page in document order. A
command that reads a path no earlier command made runs the command that makes it first (the
README's token section reads ``runs/teacher``, which its "Recover accuracy" section trains).

Scale substitutions (the examples' commands as written, made small enough for CI; see ``scale``):

* training (``train``, ``finetune``, ``pipeline``, ``compress``): ``--epochs 1 --max-steps-per-epoch 2``;
* calibration: ``--calib-images 8``, ``--search-images 64``, method steps ``steps=2``
  (and ``--method-opt steps=2`` added to every ``--method ihp|gohsp|amap``);
* ``--search`` tolerances become 1 (the 2-step teacher is barely trained, so a real tolerance
  could leave nothing to choose; the search's own rules are tested in tests/test_tokens_rate.py);
* timing (``bench``, ``profile``): one warm-up pass, one iteration, one round, and for ``profile``
  batch 1 and two points per grid axis; ``compress`` reads a latency table profiled that way first
  (at its ``--precision`` when that is int8 or fp8);
* ``prune --latency-reduction`` with a table: as written (the table is the small one).

Skipped, with the reason printed: synopsis lines (placeholders such as ``MODEL`` or ``[...]``),
``pip install`` (no network in CI), ``make`` targets (CI runs them itself) and benchmark/study
scripts (their smoke tests are in tests/), commands that need a GPU or TensorRT (``--trt``,
``--device cuda``, CUDA backends), and hub weights (``--pretrained``).

Exit code 0 when every command that ran had its expected outcome, 1 otherwise; a summary line per
command (seconds, outcome) and the total time. CI (``.ci/run``) runs it on every page.

Duration, measured under load (2-core machine, load average 4 to 9 from other jobs, 2026-12-07):
every page, 54 commands (29 skipped), all as expected, in about 35 minutes (docs/methods.md and
docs/recovery.md 651 s; the other pages 1453 s). The slowest were the DeiT-S ``profile`` (212 s,
before it ran at batch 1) and DeiT-S prunes of up to 130 s while the load peaked (8 to 15 s when it
eased). It has not yet been timed on a quiet machine; the times once the load eased suggest a few
times less, but the 10-minute CI target is not verified.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout (benchmarks/ sits at its top)
TRAINING = {"train", "finetune", "pipeline", "compress"}
METHODS = {"ihp", "gohsp", "amap"}
GPU = ("--trt", "cuda", "ort-trt", "--backend trt")
PLACEHOLDER = re.compile(r"\b(MODEL|OUT|MODEL_OR_ARTIFACT|TABLE|PATTERN|SPEC|PNG|FILE)\b|\s\[[-A-Z]|\.\.\.| D |\bR\b")
TIMING = ["--warmup", "1", "--iters", "1", "--rounds", "1"]
GRID = ["--heads-points", "2", "--dim-points", "2", "--mlp-points", "2", "--embed-points", "2", "--token-points", "2"]


@dataclass
class Example:
    page: str
    line: int  # where the command starts on its page
    text: str  # the command as written (continuations joined, comment removed)
    comment: str = ""
    env: dict[str, str] = field(default_factory=dict)  # a leading NAME=value of the command
    argv: list[str] = field(default_factory=list)  # after scaling
    skip: str = ""  # why it is not run

    @property
    def output(self) -> str | None:
        a = self.argv
        for flag in ("-o", "--output", "--report"):
            if flag in a[:-1]:
                return a[a.index(flag) + 1]
        return None

    @property
    def reads(self) -> list[str]:
        """Relative paths the command reads (its positional arguments and --teacher / --latency-table)."""
        out = []
        for i, tok in enumerate(self.argv[1:], 1):
            prev = self.argv[i - 1]
            if "/" in tok and not tok.startswith("-") and prev not in ("-o", "--output", "--report"):
                if not prev.startswith("-") or prev in ("--teacher", "--latency-table"):
                    out.append(tok)
        return out


def blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every ```console/```bash/```sh block."""
    out, cur, start = [], None, 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if cur is None and re.match(r"^```(console|bash|sh|shell)\s*$", s):
            cur, start = [], n + 1
        elif cur is not None and s.startswith("```"):
            out.append((start, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
    return out


def commands(page: str, text: str) -> list[Example]:
    """The commands of a page's blocks, in order."""
    found = []
    for start, lines in blocks(text):
        i = 0
        while i < len(lines):
            n, line = start + i, lines[i].strip()
            i += 1
            if line.startswith("$ "):
                line = line[2:]
            elif line.startswith("error: ") and found and found[-1].line >= start and not found[-1].comment:
                found[-1].comment = line  # the output shown is the error the command promises
                continue
            elif not re.match(r"^(vitcompress|make|pip|python|bash|OMP_NUM_THREADS)\b", line):
                continue  # output, or a comment
            while line.endswith("\\") and i < len(lines):
                line = line[:-1].rstrip() + " " + lines[i].strip()
                i += 1
            text_, _, comment = line.partition(" #")
            found.append(Example(page, n, " ".join(text_.split()), comment.strip()))
    return found


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag value`` (replaced when present, appended otherwise)."""
    if flag in argv:
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    return [*argv, flag, value]


def scale(ex: Example, table: str) -> Example:
    """Classify ``ex`` (skip with a reason, or the argv to run at CI scale)."""
    t = ex.text
    if t.startswith("pip "):
        ex.skip = "pip install: no network in CI"
    elif t.startswith("make "):
        ex.skip = "make target: CI runs make lint/test/test-slow itself; the others are long studies"
    elif re.search(r"\bpython\b|^bash ", t):
        ex.skip = "benchmark or study script: smoke-tested in tests/"
    elif PLACEHOLDER.search(t.replace("--data D ", "--data digits ")) or "|" in t:
        ex.skip = "synopsis (placeholders)"
    elif any(g in t for g in GPU):
        ex.skip = "needs a GPU or TensorRT"
    elif "--pretrained" in t:
        ex.skip = "hub weights: no network in CI"
    if ex.skip:
        return ex
    words = shlex.split(t)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        name, _, value = words.pop(0).partition("=")
        ex.env[name] = value
    argv = words[1:]
    cmd = argv[0]
    if cmd in TRAINING:
        argv = _set(_set(argv, "--epochs", "1"), "--max-steps-per-epoch", "2")
    if "--calib-images" in argv or cmd in ("prune", "pipeline", "compress"):
        argv = _set(argv, "--calib-images", "8")
    if "--search-images" in argv or "--search" in argv or cmd == "compress":
        argv = _set(argv, "--search-images", "64")
    if "--search" in argv:
        argv = _set(argv, "--tolerance", "1")
    if "--method" in argv and argv[argv.index("--method") + 1] in METHODS:
        kept: list[str] = []
        for a in argv:  # drop the pages' own step counts, then run 2 steps
            if kept and kept[-1] == "--method-opt" and a.startswith("steps="):
                kept.pop()
            else:
                kept.append(a)
        method = argv[argv.index("--method") + 1]
        steps = {"gohsp": ["rounds=1", "steps_per_round=2"]}.get(method, ["steps=2"])
        argv = [*kept, *(x for v in steps for x in ("--method-opt", v))]
    if cmd == "bench":
        argv = [*argv, *TIMING]
    if cmd == "profile":
        argv = [*_set(argv, "--batch", "1"), *TIMING, *GRID]
    if cmd == "compress":
        quant = argv[argv.index("--precision") + 1] if "--precision" in argv[:-1] else "fp32"
        argv = _set(argv, "--latency-table", table if quant == "fp32" else table.replace(".json", f".{quant}.json"))
    ex.argv = argv
    return ex


def expected_error(ex: Example) -> str | None:
    """The message a ``# ... error: MESSAGE`` comment promises (the command must then exit 2)."""
    m = re.search(r"error: (.+)", ex.comment)
    return m.group(1).rstrip(". ").split(";")[0] if m else None


def run(ex: Example, cwd: Path, timeout: float) -> tuple[bool, str]:
    """Run one command; (outcome as expected, what was wrong or the key output line)."""
    env = {
        **os.environ,
        **ex.env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        p = subprocess.run(
            [sys.executable, "-m", "vitcompress.cli", *ex.argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"did not finish in {timeout:.0f} s"
    err = expected_error(ex)
    tail = (p.stdout.strip().splitlines() or [""])[-1]
    if err is not None:
        ok = p.returncode == 2 and err in p.stderr
        return ok, f"exit {p.returncode}: {p.stderr.strip()[:200]}"
    if p.returncode != 0:
        return False, f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:300]}"
    out = ex.output
    if out is not None and not (cwd / out).exists():
        return False, f"exit 0 but {out} was not written"
    if ex.argv[0] in ("prune", "tokens") and "--flops-reduction" in ex.argv and "target: remove" not in p.stdout:
        return False, "no 'target: remove ... achieved ...' line"
    return True, tail[:120]


def pages(root: Path, names: str | None) -> list[Path]:
    """README.md then docs/*.md by name (or the pages named, in that order)."""
    if names:
        return [root / n for n in names.split(",")]
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def run_page(own: list[Example], every: list[Example], work: Path, table: str, timeout: float, failed: list) -> int:
    """Run a page's commands in ``work``, each after the commands that make what it reads; returns how many ran."""
    makers: dict[str, Example] = {}  # a path's maker: the page's own first, then the other pages'
    for ex in [*own, *(ex for ex in every if not ex.skip and ex not in own)]:
        if ex.output and ex.output not in makers and expected_error(ex) is None:  # a refused run makes nothing
            makers[ex.output] = ex
    done: list[Example] = []

    def go(ex: Example, why: str = "") -> None:
        if any(ex is d for d in done):
            return
        done.append(ex)
        needs = list(ex.reads)
        if ex.argv[0] == "compress":  # its latency table: the model profiled at CI scale (at its precision)
            tab = ex.argv[ex.argv.index("--latency-table") + 1]
            needs.append(tab)
            if tab not in makers:
                prof = Example(ex.page, ex.line, "profile (for compress)")
                prof.argv = ["profile", ex.argv[1], "--backend", "ort-cpu", "--batch", "1"]
                if "--precision" in ex.argv[:-1]:
                    prof.argv += ["--precision", ex.argv[ex.argv.index("--precision") + 1]]
                prof.argv += ["--token-method", "topk-vpa", *TIMING, *GRID, "-o", tab]
                makers[tab] = prof
        for path in needs:
            if not (work / path).exists() and path in makers and makers[path] is not ex:
                go(makers[path], f" (first, for {ex.page}:{ex.line})")
        t0 = time.perf_counter()
        ok, note = run(ex, work, timeout)
        where = f"{ex.page}:{ex.line}{why}"
        print(
            f"{'ok' if ok else 'FAIL':4s}  {time.perf_counter() - t0:6.1f} s  {where}  vitcompress {shlex.join(ex.argv)}"
        )
        print(f"      {note}", flush=True)
        if not ok:
            failed.append(where)

    for ex in own:
        go(ex)
    return len(done)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", help="Comma-separated pages relative to the checkout (default: README.md, docs/*.md).")
    ap.add_argument("--dry-run", action="store_true", help="List the commands, scaled, and the skipped ones.")
    ap.add_argument("--timeout", type=float, default=300.0, help="Seconds one command may take.")
    ap.add_argument("--workdir", help="Run in this folder (default: a fresh temporary one), one subfolder per page.")
    args = ap.parse_args(argv)
    table = "runs/_doc_examples.latency.json"
    every = [
        scale(ex, table) for page in pages(ROOT, None) for ex in commands(str(page.relative_to(ROOT)), page.read_text())
    ]
    chosen = {str((ROOT / n).relative_to(ROOT)) for n in args.pages.split(",")} if args.pages else None
    examples = [ex for ex in every if chosen is None or ex.page in chosen]
    for ex in examples:
        if ex.skip:
            print(f"skip  {ex.page}:{ex.line}  {ex.text[:90]}  ({ex.skip})")
    todo = [ex for ex in examples if not ex.skip]
    if args.dry_run:
        for ex in todo:
            print(f"run   {ex.page}:{ex.line}  vitcompress {shlex.join(ex.argv)}")
        return 0
    root = Path(args.workdir or tempfile.mkdtemp(prefix="vitcompress-docs-"))
    failed: list[str] = []
    ran = 0
    t_all = time.perf_counter()
    for page in dict.fromkeys(ex.page for ex in todo):
        work = root / page.replace("/", "_").removesuffix(".md")
        work.mkdir(parents=True, exist_ok=True)
        ran += run_page([ex for ex in todo if ex.page == page], every, work, table, args.timeout, failed)
    skipped = sum(1 for ex in examples if ex.skip)
    print(
        f"{ran} commands run ({len(failed)} failed), {skipped} skipped, in {time.perf_counter() - t_all:.0f} s; "
        f"work folder {root}" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
