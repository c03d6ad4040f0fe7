"""``vitcompress profile`` (a model's latency table on a backend) and ``compress`` (profile, search,
prune, distil, export and bench for a latency target)."""

from __future__ import annotations

import contextlib
import dataclasses

import click

from vitcompress.artifact import check_output
from vitcompress.config import merge_config
from vitcompress.io import output_lock
from vitcompress.latency_search.compress import CompressConfig, compress
from vitcompress.latency_search.profile import ProfileConfig, profile_latency
from vitcompress.latency_search.tables import format_table, plot_table

from .options import config_options, given, require
from .train import distill_config, distill_options, train_config, train_options


@click.command("profile")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Latency table (JSON) to write.")
@config_options(ProfileConfig)
@click.option("--plot", type=click.Path(), help="Also write a PNG of the step sweeps.")
@click.option("--force", is_flag=True, help="Overwrite an existing table.")
def profile(model, output, plot, force, **kw):
    """Measure MODEL's latency table on a backend: per-structure latency over a width grid."""
    cfg = merge_config(ProfileConfig(), given(ProfileConfig, kw), "profile")
    require(cfg.token_method is not None, "--token-method", "token_keep")
    check_output(output, force=force, inputs=(model,), kind="file")
    if plot:
        check_output(plot, force=force, inputs=(model,), kind="file", what="plot", others=(output,))
    with output_lock(output), output_lock(plot) if plot else contextlib.nullcontext():  # the whole measurement
        check_output(output, force=force, inputs=(model,), kind="file")
        table = profile_latency(model, cfg, progress=True)
        table.save(output)
        click.echo(format_table(table))
        click.echo(f"wrote {output} in {table.seconds:.0f} s")
        if plot:
            plot_table(table, plot)
            click.echo(f"wrote {plot}")


@click.command("compress")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder for the stages and report.md.")
@click.option("--teacher", default=None, help="Teacher to distil from (default: MODEL itself).")
@config_options(CompressConfig)
@distill_options
@train_options
def compress_cmd(model, output, teacher, **kw):
    """Compress MODEL to a latency target: profile, search depth/tokens/widths, prune, distil, export, bench."""
    top = given(CompressConfig, kw)
    cfg = dataclasses.replace(
        merge_config(CompressConfig(), top, "compress"),
        train=train_config(kw),
        distill=distill_config(kw),
    )
    res = compress(
        model,
        cfg,
        output,
        teacher=teacher,
        resume=kw["resume"],
        force=kw["force"],
        progress=cfg.train.progress,
    )
    click.echo((res.output / "report.md").read_text())
