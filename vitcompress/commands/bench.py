"""``vitcompress bench``: latency and throughput of models on several backends, and the report.

The options' defaults are ``BenchConfig``'s fields; their help texts are here (``BenchConfig``
carries no help metadata).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import click

from vitcompress.artifact import check_output
from vitcompress.benchmarks.backends import get_runner
from vitcompress.benchmarks.bench import BenchConfig, BenchInterrupted, load_variant, run_bench
from vitcompress.benchmarks.report import REPORT_FILES, to_markdown, write_report
from vitcompress.errors import VitCompressError
from vitcompress.io import check_writable_dir, disk_error, missing_parents, output_lock, remove_empty

from .options import FLAGS_ATTR, csv

_BENCH = BenchConfig()


def check_report_dir(report_dir, force: bool, inputs) -> None:
    """The --report folder: a folder (new or existing), never inside or around the models measured;
    report files already there are replaced only with --force."""
    check_output(report_dir, force=force, inputs=inputs, exists_ok=True, what="report folder")
    if not force:
        old = [n for n in REPORT_FILES if os.path.lexists(os.path.join(report_dir, n))]
        if old:
            raise VitCompressError(
                f"report folder {report_dir!r} already holds {old[0]}; pass force=True to overwrite it or choose "
                "another folder",
                params=["force"],
            )


def unavailable(backend: str, cfg: BenchConfig) -> str | None:
    """Why ``backend`` cannot measure here with ``cfg``'s precision and mode, or None."""
    return get_runner(backend).unavailable(cfg.precision, cfg.mode)


def nothing_measured(skipped: list[dict]) -> str:
    """The error of a run that measured nothing: every backend's reason."""
    why = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped) or "no backend ran"
    return (
        f"nothing was measured ({why}); choose a --backend, --precision or --mode this machine runs, or pass "
        "--allow-skip to accept an empty result"
    )


def write_report_or_nothing(result: dict, report_dir) -> dict:
    """``write_report`` into a temporary sibling of ``report_dir``, then each file renamed into it:
    a failure (a full disk) leaves the folder as it was, and no folder where there was none."""
    out = Path(report_dir)
    made = missing_parents(out)
    check_writable_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        paths = write_report(result, tmp)
        out.mkdir(exist_ok=True)
        for key, p in paths.items():
            if p is not None:
                os.replace(p, out / p.name)
                paths[key] = out / p.name
        return paths
    except BaseException as e:
        remove_empty(made)
        err = disk_error(e, report_dir)
        if err is not None:
            raise err from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ints(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in csv(value)]
    except ValueError:
        raise VitCompressError(f"{what} must be comma-separated integers, got {value!r}; pass e.g. 1,8,32") from None


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--baseline", help="Artifact folder or timm model name to compare against (default: the first MODEL).")
@click.option(
    "--backend",
    default=",".join(_BENCH.backends),
    show_default=True,
    help="Comma list of torch-cpu, ort-cpu, torch-cuda, ort-cuda, ort-trt, trt.",
)
@click.option(
    "--batch", default=",".join(map(str, _BENCH.batches)), show_default=True, help="Comma list of batch sizes."
)
@click.option("--precision", default=_BENCH.precision, show_default=True, help="fp32, fp16 or bf16.")
@click.option("--mode", default=_BENCH.mode, show_default=True, help="torch runners: eager, compile or graph (CUDA).")
@click.option("--warmup", type=int, default=_BENCH.warmup, show_default=True, help="Untimed passes per variant.")
@click.option("--iters", type=int, default=_BENCH.iters, show_default=True, help="Timed passes per variant per round.")
@click.option("--rounds", type=int, default=_BENCH.rounds, show_default=True, help="Interleaved rounds (A,B,A,B...).")
@click.option(
    "--threads", type=int, help="CPU threads (torch.set_num_threads / ORT intra-op); default: all usable cores."
)
@click.option(
    "--until-stable",
    is_flag=True,
    help="Add interleaved rounds until every latency ratio's 95% CI is within +-2% (or --max-time is up).",
)
@click.option(
    "--max-time", type=float, help="Seconds the run may take with --until-stable (default 600); said in the report."
)
@click.option(
    "--time-limit",
    type=float,
    help="Stop after S seconds and write what was measured so far (marked partial); Ctrl-C does the same.",
)
@click.option("--report", "report_dir", type=click.Path(), help="Write report.md, report.json, report.png here.")
@click.option("--force", is_flag=True, help="Overwrite the report files of an existing --report folder.")
@click.option(
    "--allow-skip",
    is_flag=True,
    help="Exit 0 even when no backend could measure here (CI matrices over mixed machines); by default a run "
    "that measured nothing is an error.",
)
def bench(
    models,
    baseline,
    backend,
    batch,
    precision,
    mode,
    warmup,
    iters,
    rounds,
    threads,
    until_stable,
    max_time,
    time_limit,
    report_dir,
    force,
    allow_skip,
):
    """Measure latency/throughput of MODELS (artifact folders or timm names) and report FLOPs-vs-latency."""
    cfg = BenchConfig(
        backends=csv(backend),
        batches=_ints(batch, "--batch"),
        precision=precision,
        mode=mode,
        warmup=warmup,
        iters=iters,
        rounds=rounds,
        threads=threads,
        until_stable=until_stable,
        max_time=max_time,
        time_limit=time_limit,
    ).validate()
    args = list(models) + ([baseline] if baseline and baseline not in models else [])
    if not allow_skip:
        reasons = [unavailable(b, cfg) for b in cfg.backends]
        if all(reasons):
            raise VitCompressError(
                nothing_measured([{"backend": b, "reason": r} for b, r in zip(cfg.backends, reasons)])
            )
    if report_dir is not None:
        check_report_dir(report_dir, force, args)
    # the report folder is locked for the whole run, so a second run to it fails before measuring
    with output_lock(report_dir, what="report folder") if report_dir is not None else contextlib.nullcontext():
        if report_dir is not None:
            check_report_dir(report_dir, force, args)  # again, now that the folder is ours
        variants = [load_variant(m, max_batch=max(cfg.batches)) for m in args]
        base = variants[args.index(baseline)].name if baseline else None
        try:
            result = run_bench(variants, cfg, baseline=base, progress=True)
        except BenchInterrupted as e:  # Ctrl-C: what was measured so far is reported, then exit 130
            _finish(e.result, report_dir, allow_skip=True)
            raise
        _finish(result, report_dir, allow_skip)


def _finish(result: dict, report_dir, allow_skip: bool) -> None:
    """Print the table and write the report files (a partial result says so in both); a run that measured
    nothing is an error unless ``allow_skip``."""
    click.echo(to_markdown(result))
    if not result["measurements"] and not allow_skip:
        raise VitCompressError(nothing_measured(result["skipped"]))
    if report_dir is not None:
        paths = write_report_or_nothing(result, report_dir)
        click.echo(
            f"report{' (partial)' if result.get('partial') else ''}: {paths['md']} {paths['json']} "
            f"{paths['png'] or '(no PNG: matplotlib is missing)'}"
        )


# ``BenchConfig``'s field names that differ from the option names (the error lines show the flag)
setattr(
    bench.callback,
    FLAGS_ATTR,
    {**getattr(bench.callback, FLAGS_ATTR, {}), "backends": "--backend", "batches": "--batch"},
)
