"""``vitcompress tokens``: apply dynamic token reduction, choosing its amount as written, by MACs or by search."""

from __future__ import annotations

import click

from vitcompress.config import merge_config
from vitcompress.token_reduction import reduce_tokens
from vitcompress.token_search import SearchConfig

from .options import config_options, given

SEARCH_FLAGS = {"images": "--search-images", "metric": "--search-metric"}


def _reducer_options(no_vpa: bool, prop_attn: bool | None) -> dict:
    """Reducer options from the flags (only those given)."""
    options: dict = {}
    if no_vpa:
        options["vpa"] = False
    if prop_attn is not None:
        options["prop_attn"] = prop_attn
    return options


@click.command("tokens")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("--method", required=True, help="Reducer: topk, topk-vpa, evit, tome or etps (docs/tokens.md).")
@click.option(
    "--schedule",
    required=True,
    help="KEEP@BLOCKS (0.7@3,6,9; groups joined by ';'), rate=R[@START] (rate=0.06) or merge=N[@START] (tome).",
)
@click.option("--no-vpa", is_flag=True, help="topk-vpa ablation: plain Top-K, no token sizes.")
@click.option(
    "--prop-attn/--no-prop-attn", default=None, help="Add log(size) to later attention logits (default: per reducer)."
)
@click.option(
    "--flops-reduction",
    type=float,
    help="Choose the schedule's amount: the smallest removing at least this share of MACs (target and achieved are printed).",
)
@click.option(
    "--search", is_flag=True, help="Choose the amount by calibration search: the largest within --tolerance top-1."
)
@config_options(SearchConfig, flags=SEARCH_FLAGS)
@click.option("--pretrained", is_flag=True, help="Load hub weights for a model name.")
@click.option("--checkpoint", type=click.Path(), help="Load weights from a .safetensors/.pth file.")
@click.option("--num-classes", type=int, help="Classifier size when creating a model by name.")
@click.option("--img-size", type=int, help="Input size when creating a model by name.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
def tokens(
    model,
    output,
    method,
    schedule,
    no_vpa,
    prop_attn,
    flops_reduction,
    search,
    pretrained,
    checkpoint,
    num_classes,
    img_size,
    force,
    **kw,
):
    """Apply dynamic token reduction to MODEL (a timm name or an artifact folder)."""
    search_cfg = merge_config(SearchConfig(), given(SearchConfig, kw), "search")
    res = reduce_tokens(
        model,
        schedule,
        method,
        options=_reducer_options(no_vpa, prop_attn),
        flops_reduction=flops_reduction,
        search=search_cfg if search else None,
        pretrained=pretrained,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        output=output,
        force=force,
        progress=True,
    )
    if res.search is not None:
        click.echo(res.search.format())
    click.echo(res.format())
    click.echo(f"wrote {output}")
