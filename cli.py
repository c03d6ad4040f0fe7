"""The ``vitcompress`` command line: argument parsing and error reporting over the library API.

No logic lives here beyond turning options into API calls and printing results. Every error a user
can cause is a ``VitCompressError``: printed as one ``error: ...`` line with exit code 2.
"""
from __future__ import annotations

import json
import sys

import click

from vitcompress.errors import VitCompressError


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vitcompress")
def cli() -> None:
    """Prune, token-reduce, export and benchmark Vision Transformers."""


# ----------------------------------------------------------------------------------- prune / info
@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--flops-reduction", type=float, help="Fraction of MACs to remove, 0 < R < 1.")
@click.option("--params-reduction", type=float, help="Fraction of parameters to remove, 0 < R < 1.")
@click.option("--importance", default="taylor", show_default=True, help="Scorer: taylor, l1, l2, random.")
@click.option("--granularity", default="heads,qk,v,mlp", show_default=True,
              help="Comma list of heads, qk, v, mlp, embed, depth.")
@click.option("--uniform", is_flag=True, help="Remove the same fraction in every layer instead of ranking globally.")
@click.option("--round-to", type=int, default=8, show_default=True, help="Keep pruned widths multiples of N (1 = off).")
@click.option("--pretrained", is_flag=True, help="Load hub weights for a model name.")
@click.option("--checkpoint", type=click.Path(), help="Load weights from a .safetensors/.pth file.")
@click.option("--num-classes", type=int, help="Classifier size when creating a model by name.")
@click.option("--img-size", type=int, help="Input size when creating a model by name.")
@click.option("--data", default="digits", show_default=True, help="digits, mnist10k or an ImageFolder directory.")
@click.option("--calib-images", type=int, default=64, show_default=True, help="Calibration images for scoring.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
def prune(model, output, flops_reduction, params_reduction, importance, granularity, uniform, round_to,
          pretrained, checkpoint, num_classes, img_size, data, calib_images, batch_size, seed, force):
    """Prune MODEL (a timm name or an artifact folder) to a MACs or params budget."""
    import vitcompress
    from vitcompress.report import format_prune_summary

    result = vitcompress.prune(
        model, flops_reduction=flops_reduction, params_reduction=params_reduction,
        importance=importance, granularity=_csv(granularity), uniform=uniform, round_to=round_to,
        pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size,
        data=data, calib_images=calib_images, batch_size=batch_size, seed=seed,
        output=output, force=force, progress=True)
    click.echo(format_prune_summary(result.meta))
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("artifact")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact's JSON record.")
@click.option("--plot", type=click.Path(), help="Also write a PNG of the kept share per block.")
def info(artifact, as_json, plot):
    """Per-block table (heads, q/k dim, v dim, MLP width) and totals of an artifact."""
    from vitcompress.artifact import read_meta
    from vitcompress.report import format_info

    meta = read_meta(artifact)
    click.echo(json.dumps(meta.to_dict(), indent=1) if as_json else format_info(meta))
    if plot:
        from vitcompress.plots import plot_widths

        plot_widths(meta, plot)
        click.echo(f"wrote {plot}")


@cli.command("models")
@click.argument("pattern", default="*")
def models_cmd(pattern):
    """List supported timm model names matching a glob PATTERN."""
    from vitcompress.models import list_models

    for name in list_models(pattern):
        click.echo(name)


# ---------------------------------------------------------------------------- export (issue: export)

# ------------------------------------------------------------------------------ bench (issue: bench)

# ------------------------------------------------- train / finetune / eval / pipeline (issue: recovery)

# --------------------------------------------------------------------------- tokens (issue: tokens)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turn every user error into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="vitcompress", standalone_mode=False)
    except VitCompressError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see `vitcompress {_cmd(argv)}--help`)", err=True)
        return 2
    return 0


def _cmd(argv) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return f"{argv[0]} " if argv and not argv[0].startswith("-") else ""


if __name__ == "__main__":
    sys.exit(main())
