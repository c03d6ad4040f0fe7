"""``vitcompress train``, ``finetune``, ``eval`` and ``pipeline``: the training loop, evaluation and the recipe."""

from __future__ import annotations

import dataclasses
import json
import os

import click

from vitcompress.artifact import check_output, is_artifact
from vitcompress.callbacks import GASConfig, GASController
from vitcompress.config import load_config, merge_config, parse_pairs
from vitcompress.datapipe import check_data
from vitcompress.distill import DistillConfig
from vitcompress.errors import VitCompressError
from vitcompress.evaluate import evaluate_data
from vitcompress.recipe import PipelineConfig, format_summary, run_pipeline
from vitcompress.resolve import resolve_model
from vitcompress.training import FitResult, TrainConfig, fit, seed_everything

from .options import config_options, default_of, given, require

TRAIN_EXCLUDE = ("optimizer", "progress", "eval_every")  # not command-line options
DISTILL_FLAGS = {"kind": "--distill", "ce": "--ce-weight", "kd": "--kd-weight", "hidden": "--hidden-weight"}
GAS_FIELDS = ("target", "start", "interval", "gain")


def train_options(f):
    """The training loop's options (``TrainConfig``) and the run's --quiet, --resume, --force."""
    f = click.option("--force", is_flag=True, help="Overwrite an existing output folder.")(f)
    f = click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.pt (same options).")(f)
    f = click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines.")(f)
    return config_options(TrainConfig, exclude=TRAIN_EXCLUDE)(f)


def distill_options(f):
    """The distillation loss's options (``DistillConfig``)."""
    return config_options(DistillConfig, flags=DISTILL_FLAGS)(f)


def train_config(kw: dict, base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with the training options the user gave; --quiet turns progress off."""
    cfg = merge_config(base or TrainConfig(), given(TrainConfig, kw, exclude=TRAIN_EXCLUDE), "train")
    return dataclasses.replace(cfg, progress=not kw["quiet"])


def distill_config(kw: dict, base: DistillConfig | None = None) -> DistillConfig:
    return merge_config(base or DistillConfig(), given(DistillConfig, kw), "distill")


def model_options(pairs) -> dict:
    """``['depths=[2,2]', 'window_size=7', 'norm=x']`` -> ``{'depths': [2, 2], 'window_size': 7, 'norm': 'x'}``."""
    return parse_pairs(pairs, "model option", "model_opts", "depths=[2,2]", json_values=True)


def check_fit_output(output, kw: dict, *inputs) -> None:
    """The output of a training command, before any model is built: never inside or around what the
    run reads (``inputs``), an existing folder only with --force or --resume."""
    if kw["resume"] and kw["force"]:
        raise VitCompressError(
            "--resume continues the run in the output and --force replaces it; pass one of them",
            params=["resume", "force"],
        )
    if kw["resume"] and output and not os.path.lexists(output):
        raise VitCompressError(
            f"nothing to resume: output {str(output)!r} does not exist; drop --resume to start the run"
        )
    check_output(output, force=kw["force"], exists_ok=kw["resume"], resumable=True, inputs=inputs)


def _print_fit(res: FitResult, output) -> None:
    if res.val:
        click.echo(f"val top-1 {res.val['top1']:.2%}  top-5 {res.val['top5']:.2%}  loss {res.val['loss']:.4f}")
    click.echo(f"wrote {output}")


@click.command("train")
@click.argument("model")
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Artifact folder to write (updated every epoch)."
)
@click.option("--pretrained", is_flag=True, help="Start from hub weights.")
@click.option("--checkpoint", type=click.Path(), help="Start from a .safetensors/.pth file.")
@click.option("--num-classes", type=int, help="Classifier size (model names only).")
@click.option("--img-size", type=int, help="Input size (model names only).")
@click.option("--patch-size", type=int, help="Patch size (model names only).")
@click.option("--in-chans", type=int, help="Input channels (model names only).")
@click.option("--embed-dim", type=int, help="Width (model names only).")
@click.option("--depth", type=int, help="Blocks (model names only).")
@click.option("--num-heads", type=int, help="Heads (model names only).")
@click.option(
    "--global-pool",
    type=click.Choice(["token", "avg"]),
    help="Classifier input: class token or mean of patch tokens (model names only).",
)
@click.option(
    "--model-opt",
    "model_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Another creation option of a model name, e.g. depths=[2,2] or window_size=7 for a Swin "
    "(the value is read as JSON, else as a string; repeatable).",
)
@train_options
def train(model, output, pretrained, checkpoint, model_opts, **kw):
    """Train MODEL (a timm name or an artifact folder) on --data; runs under torchrun too."""
    arch = {k: kw.pop(k) for k in ("num_classes", "img_size", "patch_size", "in_chans", "embed_dim", "depth")}
    arch.update(num_heads=kw.pop("num_heads"), global_pool=kw.pop("global_pool"))
    for key, value in model_options(model_opts).items():
        if arch.get(key) is not None:
            raise VitCompressError(f"model option {key} is given twice (--model-opt and its own flag); give it once")
        arch[key] = value
    cfg = train_config(kw)
    cfg.validate()
    check_fit_output(output, kw, model, checkpoint, kw.get("data"))
    seed_everything(cfg.seed)  # the initial weights of a model built by name follow --seed too
    net = resolve_model(model, pretrained=pretrained, checkpoint=checkpoint, **arch)
    res = fit(net, cfg, output, resume=kw["resume"], force=kw["force"], record={"command": "train"})
    _print_fit(res, output)


@click.command("finetune")
@click.argument("artifact")
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Artifact folder to write (updated every epoch)."
)
@click.option(
    "--teacher", default=None, help="Teacher: a timm name or an artifact folder (omit for plain fine-tuning)."
)
@click.option("--teacher-checkpoint", type=click.Path(), help="Weights for a teacher given by name.")
@config_options(GASConfig, only=GAS_FIELDS, prefix="gas")
@distill_options
@train_options
def finetune(artifact, output, teacher, teacher_checkpoint, **kw):
    """Fine-tune ARTIFACT, optionally distilling from --teacher (loss weights below)."""
    gas_values = given(GASConfig, kw, only=GAS_FIELDS, prefix="gas")
    cfg = train_config(kw)
    cfg.validate()
    dcfg = distill_config(kw)
    dcfg.validate()
    gas_cfg = GASConfig(**gas_values).validate() if gas_values.get("target") is not None else None
    require(
        teacher is not None, "--teacher", "teacher_checkpoint", *(f.name for f in dataclasses.fields(DistillConfig))
    )
    if teacher_checkpoint is not None and is_artifact(teacher):
        raise VitCompressError(
            "--teacher-checkpoint loads weights into a teacher given by name; the artifact teacher "
            f"{teacher!r} has its own, drop --teacher-checkpoint"
        )
    require(gas_values.get("target") is not None, "--gas-target", *(f"gas_{n}" for n in GAS_FIELDS if n != "target"))
    check_fit_output(output, kw, artifact, teacher, teacher_checkpoint, kw.get("data"))
    net = resolve_model(artifact)
    t = None
    if teacher is not None and dcfg.kind != "none":
        t = resolve_model(teacher, checkpoint=teacher_checkpoint)
    callbacks, record = [], {"command": "finetune", "teacher": teacher}
    gas = None
    if gas_cfg is not None:
        gas = GASController(net, gas_cfg)
        callbacks.append(gas)
        record["gas"] = gas.log
    res = fit(
        net,
        cfg,
        output,
        teacher=t,
        distill=dcfg if t is not None else None,
        resume=kw["resume"],
        force=kw["force"],
        record=record,
        callbacks=callbacks,
    )
    if gas is not None:
        last = gas.trajectory[-1]
        click.echo(
            f"GAS: pruning rate {last['rate']:.3f} after {last['step']} steps, {last['macs_reduction']:.1%} "
            f"of MACs removed (target {gas.cfg.target:.1%}, ceiling rate {gas.ceiling:.3f})"
        )
    _print_fit(res, output)


@click.command("eval")
@click.argument("artifact")
@click.option(
    "--data", default=TrainConfig.data, show_default=True, help="digits, mnist10k or an ImageFolder directory."
)
@click.option("--split", default=default_of(evaluate_data, "split"), show_default=True, help="train, val or all.")
@click.option("--teacher", default=None, help="Also report agreement with this model's predictions.")
@click.option("--batch-size", type=int, default=default_of(evaluate_data, "batch_size"), show_default=True)
@click.option("--workers", type=int, default=default_of(evaluate_data, "workers"), show_default=True)
@click.option("--device", default=None)
@click.option("--limit", type=int, default=None, help="Evaluate the first N images only.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def eval_cmd(artifact, data, split, teacher, batch_size, workers, device, limit, as_json):
    """Top-1, top-5 and loss of ARTIFACT (an artifact folder or a timm name) on --data."""
    check_data(data)
    net = resolve_model(artifact)
    t = resolve_model(teacher) if teacher else None
    res = evaluate_data(
        net,
        data,
        split=split,
        teacher=t,
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=not as_json,
        limit=limit,
    )
    click.echo(json.dumps(res.to_dict()) if as_json else res.format())


@click.command("pipeline")
@click.argument("teacher")
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Folder for the stage artifacts and the summary."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="PipelineConfig as a JSON or YAML file; options given on the command line override it.",
)
@config_options(PipelineConfig)
@distill_options
@train_options
def pipeline(teacher, output, config_file, **kw):
    """Width prune (taylor) -> distil -> depth prune -> distil from TEACHER, with a summary table."""
    check_fit_output(output, kw, teacher, config_file, kw.get("data"))
    base = load_config(PipelineConfig, config_file, "pipeline") if config_file else PipelineConfig()
    top = given(PipelineConfig, kw)
    for a, b in (("flops_reduction", "params_reduction"), ("params_reduction", "flops_reduction")):
        if a in top and b not in top:
            top[b] = None  # a budget on the command line replaces the file's
    cfg = dataclasses.replace(
        merge_config(base, top, "pipeline"),
        train=train_config(kw, base.train),
        distill=distill_config(kw, base.distill),
    )
    summary = run_pipeline(teacher, cfg, output, force=kw["force"], resume=kw["resume"], progress=cfg.train.progress)
    click.echo(format_summary(summary))
    click.echo(f"wrote {output}")
