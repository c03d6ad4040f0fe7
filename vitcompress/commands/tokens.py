"""``vitcompress tokens``: apply dynamic token reduction, choosing its amount as written, by MACs or by search."""

from __future__ import annotations

import click

from vitcompress.config import merge_config
from vitcompress.errors import VitCompressError
from vitcompress.token_reduction import reduce_tokens
from vitcompress.token_search import SearchConfig
from vitcompress.tokens.schedule import parse_schedule

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


#: the smallest rate=R a schedule takes: below it no block removes a token
MIN_RATE = 1e-3


def check_combination(method: str, schedule: str, no_vpa: bool, search: bool, search_options: dict) -> None:
    """Options that would have no effect are errors naming what they need; so is a schedule that
    removes no token (``rate=0``, ``merge=0``)."""
    if no_vpa and method != "topk-vpa":
        raise VitCompressError(f"--no-vpa applies to --method topk-vpa only, not {method}; drop it")
    if search_options and not search:
        flag = "--" + next(iter(search_options)).replace("_", "-")
        raise VitCompressError(
            f"{SEARCH_FLAGS.get(next(iter(search_options)), flag)} is used with --search only; pass --search or drop it"
        )
    sched = parse_schedule(schedule, method)
    if (sched.kind == "rate" and (sched.rate or 0.0) < MIN_RATE) or (sched.kind == "merge" and not sched.merge):
        amount = f"rate={sched.rate:g}" if sched.kind == "rate" else "merge=0"
        raise VitCompressError(
            f"token schedule {schedule!r} removes no token ({amount}); use rate >= {MIN_RATE:g} or merge >= 1"
        )


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
    search_options = given(SearchConfig, kw)
    check_combination(method, schedule, no_vpa, search, search_options)
    search_cfg = merge_config(SearchConfig(), search_options, "search")
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
