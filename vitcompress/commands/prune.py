"""``vitcompress prune``, ``info`` and ``models``."""

from __future__ import annotations

import dataclasses
import json

import click

import vitcompress
from vitcompress.artifact import check_output, read_meta
from vitcompress.config import merge_config
from vitcompress.errors import VitCompressError
from vitcompress.families import FAMILIES, list_models, refused_models
from vitcompress.io import output_lock
from vitcompress.latency_search.prune import prune_to_latency
from vitcompress.methods import ONESHOT, parse_option_pairs
from vitcompress.plots import plot_widths
from vitcompress.pruner import PruneConfig
from vitcompress.report import format_info, format_prune_summary

from .options import FLAGS_ATTR, config_options, given

# why the default scorer is the default: docs/methods.md, scorer study (tests check it against the record)
SCORER_TABLE = """\b
Why taylor-abs is the default scorer: mean mnist10k val top-1 (%) over 3 calibration seeds of the
reference teacher (98.80%) at -46.2% MACs, one shot / after a 2-epoch fine-tune (docs/methods.md):
  taylor-abs  98.03 / 98.52     fisher      97.32 / 98.35     taylor-sum  93.40 / 97.53
  taylor-act  97.75 / 98.52     l1          96.50 / 98.07     random      57.97 / 96.47
  taylor-sq   97.43 / 98.40     l2          96.05 / 98.08
"""


@click.command("prune", epilog=SCORER_TABLE)
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@config_options(PruneConfig, exclude=("labels",))
@click.option("--pretrained", is_flag=True, help="Load hub weights for a model name.")
@click.option("--checkpoint", type=click.Path(), help="Load weights from a .safetensors/.pth file.")
@click.option("--num-classes", type=int, help="Classifier size when creating a model by name.")
@click.option("--img-size", type=int, help="Input size when creating a model by name.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
@click.option(
    "--method",
    default=ONESHOT,
    show_default=True,
    help=f"{ONESHOT} (score with --importance and cut), ihp, gohsp or amap (docs/methods.md).",
)
@click.option(
    "--method-opt",
    "method_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A hyperparameter of --method, e.g. steps=50 (repeatable).",
)
@click.option("--backend", help="With --latency-reduction: measure the latency table now, on this backend.")
@click.option("--latency-batch", type=int, default=8, show_default=True, help="Batch size of --backend's table.")
@click.option("--latency-precision", default="fp32", show_default=True, help="Precision of --backend's table.")
def prune(
    model,
    output,
    pretrained,
    checkpoint,
    num_classes,
    img_size,
    force,
    method,
    method_opts,
    backend,
    latency_batch,
    latency_precision,
    **kw,
):
    """Prune MODEL (a timm name or an artifact folder) to a MACs, params or latency budget."""
    cfg = merge_config(PruneConfig(), given(PruneConfig, kw, exclude=("labels",)), "prune")
    if cfg.latency_reduction is not None:
        if method != ONESHOT or method_opts:
            raise VitCompressError("--latency-reduction selects with the one-shot method; drop --method")
        res = prune_to_latency(
            model,
            cfg,
            backend=backend,
            latency_batch=latency_batch,
            latency_precision=latency_precision,
            pretrained=pretrained,
            checkpoint=checkpoint,
            num_classes=num_classes,
            img_size=img_size,
            output=output,
            force=force,
            progress=True,
        )
        click.echo(format_prune_summary(res.result.meta))
        if res.check is not None:
            click.echo(res.check.format())
            if res.check.warning():
                click.echo(f"warning: {res.check.warning()}")
        click.echo(f"wrote {output}" + (f" (latency table {res.table_path})" if res.table_path else ""))
        return
    if backend is not None:
        raise VitCompressError("--backend measures a latency table for --latency-reduction; add --latency-reduction R")
    result = vitcompress.prune(
        model,
        **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
        pretrained=pretrained,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        method=method,
        method_options=parse_option_pairs(method_opts),
        output=output,
        force=force,
        progress=True,
    )
    click.echo(format_prune_summary(result.meta))
    click.echo(f"wrote {output}")


@click.command("info")
@click.argument("artifact")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact's JSON record.")
@click.option("--plot", type=click.Path(), help="Also write a PNG of the kept share per block.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
def info(artifact, as_json, plot, force):
    """Per-block table (heads, q/k dim, v dim, MLP width) and totals of an artifact."""
    if plot is not None:
        check_output(plot, force=force, inputs=(artifact,), kind="file", what="plot")
    meta = read_meta(artifact)
    click.echo(json.dumps(meta.to_dict(), indent=1) if as_json else format_info(meta))
    if plot is not None:
        with output_lock(plot):
            check_output(plot, force=force, inputs=(artifact,), kind="file", what="plot")
            plot_widths(meta, plot)
        click.echo(f"wrote {plot}")


@click.command("models")
@click.argument("pattern", default="*")
@click.option("--refused", is_flag=True, help="List the names a family owns but refuses, each with the reason.")
def models(pattern, refused):
    """List supported model names matching a glob PATTERN, per model family."""
    if refused:
        for family, reasons in refused_models(pattern).items():
            click.echo(f"# {family} (refused): {FAMILIES.get(family).title}")
            for name, reason in sorted(reasons.items()):
                click.echo(f"{name}  # {reason}")
        return
    for family, names in list_models(pattern).items():
        click.echo(f"# {family}: {FAMILIES.get(family).title}")
        for name in names:
            click.echo(name)


# ``prune``'s keyword argument whose name differs from the option name (the error lines show the flag)
setattr(prune.callback, FLAGS_ATTR, {**getattr(prune.callback, FLAGS_ATTR, {}), "method_options": "--method-opt"})
