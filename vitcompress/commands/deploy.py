"""``vitcompress export`` and ``bench``: the deployment stages.

The options' defaults are those of the functions and settings behind them (``export``'s keyword
arguments, ``BenchConfig``'s fields); their help texts are here, as those have no help metadata.
"""

from __future__ import annotations

import click

from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.benchmarks.report import to_markdown, write_report
from vitcompress.errors import VitCompressError
from vitcompress.exporters.pipeline import export

from .options import csv, default_of

_BENCH = BenchConfig()


def _profile(value) -> str:
    """A profile default ``(1, 8, 32)`` as the command line writes it, ``1:8:32``."""
    return ":".join(str(v) for v in value)


def _ints(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in csv(value)]
    except ValueError:
        raise VitCompressError(f"{what} must be comma-separated integers, got {value!r}; pass e.g. 1,8,32") from None


@click.command("export")
@click.argument("artifact")
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@click.option(
    "--batch",
    default=_profile(default_of(export, "batch")),
    show_default=True,
    help="Batch profile MIN:OPT:MAX (the axis is always dynamic).",
)
@click.option(
    "--dynamic-size", is_flag=True, help="Dynamic image height/width (position embeddings resampled in the graph)."
)
@click.option(
    "--img-size", help="Image side profile MIN:OPT:MAX, multiples of the patch (default 0.5x:1x:1.5x native)."
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default=default_of(export, "precision"),
    show_default=True,
)
@click.option("--opset", type=int, default=default_of(export, "opset"), show_default=True, help="ONNX opset.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime parity check.")
@click.option(
    "--tolerance", type=float, help="Relative error limit of the parity check (default 1e-4 fp32, 1e-2 fp16)."
)
@click.option("--trt", is_flag=True, help="Check the graph for TensorRT and build an engine.")
@click.option("--engine", type=click.Path(), help="Engine file (default OUTPUT with .engine).")
@click.option(
    "--workspace",
    type=float,
    default=default_of(export, "workspace_gib"),
    show_default=True,
    help="TensorRT workspace limit in GiB.",
)
@click.option("--timing-cache", type=click.Path(), help="TensorRT timing cache file (read and updated).")
@click.option(
    "--opt-level",
    type=int,
    default=default_of(export, "opt_level"),
    show_default=True,
    help="TensorRT builder optimisation level 0..5.",
)
@click.option(
    "--runtime-keep",
    is_flag=True,
    help="Token-reduced models (topk, topk-vpa, evit, etps): add the input keep_rate [1] float32 that sets "
    "every reducing block's keep rate at run time (docs/export.md).",
)
def export_cmd(
    artifact,
    output,
    batch,
    dynamic_size,
    img_size,
    precision,
    opset,
    no_check,
    tolerance,
    trt,
    engine,
    workspace,
    timing_cache,
    opt_level,
    runtime_keep,
):
    """Export ARTIFACT to ONNX (dynamic batch, optional dynamic size), check parity; --trt builds an engine."""
    export(
        artifact,
        output,
        batch=batch,
        dynamic_size=dynamic_size,
        img_size=img_size,
        precision=precision,
        opset=opset,
        check=not no_check,
        tolerance=tolerance,
        trt=trt,
        engine=engine,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        opt_level=opt_level,
        progress=True,
        runtime_keep=runtime_keep,
        echo=click.echo,
    )


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
@click.option("--report", "report_dir", type=click.Path(), help="Write report.md, report.json, report.png here.")
def bench(models, baseline, backend, batch, precision, mode, warmup, iters, rounds, threads, report_dir):
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
    ).validate()
    args = list(models) + ([baseline] if baseline and baseline not in models else [])
    variants = [load_variant(m, max_batch=max(cfg.batches)) for m in args]
    base = variants[args.index(baseline)].name if baseline else None
    result = run_bench(variants, cfg, baseline=base, progress=True)
    click.echo(to_markdown(result))
    if report_dir:
        paths = write_report(result, report_dir)
        click.echo(f"report: {paths['md']} {paths['json']} {paths['png']}")
