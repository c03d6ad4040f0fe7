"""The ``vitcompress`` command line: argument parsing and error reporting over the library API.

No logic lives here beyond turning options into API calls and printing results. Every error a user
can cause is a ``VitCompressError``: printed as one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

if __name__ == "cli":  # linked into the package as vitcompress/cli.py: one file, one module name
    raise ImportError("import the command line as vitcompress.cli, not by its file name")

import json
import logging
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
@click.option(
    "--granularity", default="heads,qk,v,mlp", show_default=True, help="Comma list of heads, qk, v, mlp, embed, depth."
)
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
@click.option(
    "--method",
    default="oneshot",
    show_default=True,
    help="oneshot (score with --importance and cut), ihp, gohsp or amap (docs/methods.md).",
)
@click.option(
    "--method-opt",
    "method_opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A hyperparameter of --method, e.g. steps=50 (repeatable).",
)
def prune(
    model,
    output,
    flops_reduction,
    params_reduction,
    importance,
    granularity,
    uniform,
    round_to,
    pretrained,
    checkpoint,
    num_classes,
    img_size,
    data,
    calib_images,
    batch_size,
    seed,
    force,
    method,
    method_opts,
):
    """Prune MODEL (a timm name or an artifact folder) to a MACs or params budget."""
    import vitcompress
    from vitcompress.methods.base import parse_option_pairs
    from vitcompress.report import format_prune_summary

    result = vitcompress.prune(
        model,
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        importance=importance,
        granularity=_csv(granularity),
        uniform=uniform,
        round_to=round_to,
        pretrained=pretrained,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        data=data,
        calib_images=calib_images,
        batch_size=batch_size,
        seed=seed,
        method=method,
        method_options=parse_option_pairs(method_opts),
        output=output,
        force=force,
        progress=True,
    )
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
@cli.command("export")
@click.argument("artifact")
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write.")
@click.option(
    "--batch", default="1:8:32", show_default=True, help="Batch profile MIN:OPT:MAX (the axis is always dynamic)."
)
@click.option(
    "--dynamic-size", is_flag=True, help="Dynamic image height/width (position embeddings resampled in the graph)."
)
@click.option(
    "--img-size", help="Image side profile MIN:OPT:MAX, multiples of the patch (default 0.5x:1x:1.5x native)."
)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset.")
@click.option("--no-check", is_flag=True, help="Skip the ONNX Runtime parity check.")
@click.option(
    "--tolerance", type=float, help="Relative error limit of the parity check (default 1e-4 fp32, 1e-2 fp16)."
)
@click.option("--trt", is_flag=True, help="Check the graph for TensorRT and build an engine.")
@click.option("--engine", type=click.Path(), help="Engine file (default OUTPUT with .engine).")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="TensorRT workspace limit in GiB.")
@click.option("--timing-cache", type=click.Path(), help="TensorRT timing cache file (read and updated).")
@click.option("--opt-level", type=int, default=3, show_default=True, help="TensorRT builder optimisation level 0..5.")
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
    from vitcompress.exporters.pipeline import export

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


# ------------------------------------------------------------------------------ bench (issue: bench)
def _ints(value: str, what: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise VitCompressError(f"{what} must be comma-separated integers, got {value!r}; pass e.g. 1,8,32") from None


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--baseline", help="Artifact folder or timm model name to compare against (default: the first MODEL).")
@click.option(
    "--backend",
    default="ort-cpu,torch-cpu",
    show_default=True,
    help="Comma list of torch-cpu, ort-cpu, torch-cuda, ort-cuda, ort-trt, trt.",
)
@click.option("--batch", default="1,8", show_default=True, help="Comma list of batch sizes.")
@click.option("--precision", default="fp32", show_default=True, help="fp32, fp16 or bf16.")
@click.option("--mode", default="eager", show_default=True, help="torch runners: eager, compile or graph (CUDA).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed passes per variant.")
@click.option("--iters", type=int, default=10, show_default=True, help="Timed passes per variant per round.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved rounds (A,B,A,B...).")
@click.option(
    "--threads", type=int, help="CPU threads (torch.set_num_threads / ORT intra-op); default: all usable cores."
)
@click.option("--report", "report_dir", type=click.Path(), help="Write report.md, report.json, report.png here.")
def bench(models, baseline, backend, batch, precision, mode, warmup, iters, rounds, threads, report_dir):
    """Measure latency/throughput of MODELS (artifact folders or timm names) and report FLOPs-vs-latency."""
    from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
    from vitcompress.benchmarks.report import to_markdown, write_report

    cfg = BenchConfig(
        backends=_csv(backend),
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


# ------------------------------------------------- train / finetune / eval / pipeline (issue: recovery)
def _train_options(f):
    """Options shared by train, finetune and pipeline (defaults: vitcompress.training.TrainConfig)."""
    opts = [
        click.option(
            "--data",
            default="mnist10k",
            show_default=True,
            help="digits, mnist10k or an ImageFolder directory (DIR/train, DIR/val).",
        ),
        click.option("--epochs", type=int, default=10, show_default=True),
        click.option(
            "--batch-size",
            type=int,
            default=64,
            show_default=True,
            help="Global batch size (split over torchrun ranks).",
        ),
        click.option(
            "--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (AdamW, warmup then cosine)."
        ),
        click.option("--min-lr", type=float, default=1e-5, show_default=True),
        click.option("--weight-decay", type=float, default=0.05, show_default=True),
        click.option("--warmup-epochs", type=float, default=1.0, show_default=True),
        click.option("--clip-grad", type=float, default=1.0, show_default=True, help="Gradient norm clip (0 = off)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option(
            "--amp", default="auto", show_default=True, help="auto, bf16, fp16 or off (GPU only; CPU runs fp32)."
        ),
        click.option("--workers", type=int, default=0, show_default=True, help="Data loader processes."),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: the local GPU if any)."),
        click.option(
            "--shift", type=int, default=2, show_default=True, help="Built-in datasets: random shift in pixels."
        ),
        click.option("--auto-augment", default=None, help="ImageFolder: timm auto-augment, e.g. rand-m9-mstd0.5."),
        click.option(
            "--hflip", type=float, default=0.5, show_default=True, help="ImageFolder: horizontal flip probability."
        ),
        click.option(
            "--color-jitter", type=float, default=0.4, show_default=True, help="ImageFolder: colour jitter (0 = off)."
        ),
        click.option(
            "--re-prob", type=float, default=0.0, show_default=True, help="ImageFolder: random erasing probability."
        ),
        click.option("--mixup", type=float, default=0.0, show_default=True, help="Mixup alpha (0 = off)."),
        click.option("--cutmix", type=float, default=0.0, show_default=True, help="CutMix alpha (0 = off)."),
        click.option("--smoothing", type=float, default=0.1, show_default=True, help="Label smoothing."),
        click.option("--max-steps-per-epoch", type=int, default=None, help="Truncate every epoch (quick runs)."),
        click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines."),
        click.option("--resume", is_flag=True, help="Continue from OUTPUT/checkpoint.pt (same options)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output folder."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _distill_options(f):
    """Distillation options (defaults: vitcompress.distill.DistillConfig)."""
    opts = [
        click.option(
            "--distill",
            "distill_kind",
            default="auto",
            show_default=True,
            help="soft (KL on logits), hard (DeiT dist token), auto (hard if the model has a dist token) or none.",
        ),
        click.option(
            "--ce-weight", type=float, default=1.0, show_default=True, help="Weight of the label cross-entropy."
        ),
        click.option(
            "--kd-weight", type=float, default=1.0, show_default=True, help="Weight of the logit distillation term."
        ),
        click.option("--temperature", type=float, default=2.0, show_default=True),
        click.option(
            "--hidden-weight",
            type=float,
            default=0.0,
            show_default=True,
            help="Weight of the hidden-state MSE (matched blocks, kept channels).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_TRAIN_KEYS = (
    "data",
    "epochs",
    "batch_size",
    "lr",
    "min_lr",
    "weight_decay",
    "warmup_epochs",
    "clip_grad",
    "seed",
    "amp",
    "workers",
    "device",
    "shift",
    "auto_augment",
    "hflip",
    "color_jitter",
    "re_prob",
    "mixup",
    "cutmix",
    "smoothing",
    "max_steps_per_epoch",
)


def _train_config(kw: dict):
    from vitcompress.training import TrainConfig

    cfg = TrainConfig(**{k: kw[k] for k in _TRAIN_KEYS})
    cfg.clip_grad = cfg.clip_grad or None
    cfg.progress = not kw["quiet"]
    return cfg


def _distill_config(kw: dict):
    from vitcompress.distill import DistillConfig

    return DistillConfig(
        kind=kw["distill_kind"],
        ce=kw["ce_weight"],
        kd=kw["kd_weight"],
        temperature=kw["temperature"],
        hidden=kw["hidden_weight"],
    )


def _print_fit(res, output) -> None:
    if res.val:
        click.echo(f"val top-1 {res.val['top1']:.2%}  top-5 {res.val['top5']:.2%}  loss {res.val['loss']:.4f}")
    click.echo(f"wrote {output}")


@cli.command()
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
@_train_options
def train(
    model,
    output,
    pretrained,
    checkpoint,
    num_classes,
    img_size,
    patch_size,
    in_chans,
    embed_dim,
    depth,
    num_heads,
    global_pool,
    **kw,
):
    """Train MODEL (a timm name or an artifact folder) on --data; runs under torchrun too."""
    from vitcompress.training import fit, resolve_model_for_training, seed_everything

    cfg = _train_config(kw)
    cfg.validate()
    seed_everything(cfg.seed)  # the initial weights of a model built by name follow --seed too
    net = resolve_model_for_training(
        model,
        pretrained=pretrained,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_pool=global_pool,
    )
    res = fit(net, cfg, output, resume=kw["resume"], force=kw["force"], record={"command": "train"})
    _print_fit(res, output)


@cli.command()
@click.argument("artifact")
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Artifact folder to write (updated every epoch)."
)
@click.option(
    "--teacher", default=None, help="Teacher: a timm name or an artifact folder (omit for plain fine-tuning)."
)
@click.option("--teacher-checkpoint", type=click.Path(), help="Weights for a teacher given by name.")
@click.option(
    "--gas-target",
    type=float,
    default=None,
    help="Token-reduced ARTIFACT: adjust its pruning rate while training, toward this MACs reduction (GAS).",
)
@click.option("--gas-interval", type=int, default=20, show_default=True, help="GAS: optimizer steps per rate decision.")
@click.option(
    "--gas-gain", type=float, default=0.5, show_default=True, help="GAS: rate change per unit of relative loss slope."
)
@click.option("--gas-start", type=float, default=None, help="GAS: initial pruning rate (default: the artifact's).")
@_distill_options
@_train_options
def finetune(artifact, output, teacher, teacher_checkpoint, gas_target, gas_interval, gas_gain, gas_start, **kw):
    """Fine-tune ARTIFACT, optionally distilling from --teacher (loss weights below)."""
    from vitcompress.training import fit, resolve_model_for_training

    cfg = _train_config(kw)
    cfg.validate()
    dcfg = _distill_config(kw)
    dcfg.validate()
    net = resolve_model_for_training(artifact)
    t = None
    if teacher is not None and dcfg.kind != "none":
        t = resolve_model_for_training(teacher, checkpoint=teacher_checkpoint)
    callbacks, record = [], {"command": "finetune", "teacher": teacher}
    if gas_target is not None:
        from vitcompress.callbacks.gas import GASConfig, GASController

        gas = GASController(net, GASConfig(gas_target, start=gas_start, interval=gas_interval, gain=gas_gain))
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
    if gas_target is not None:
        last = gas.trajectory[-1]
        click.echo(
            f"GAS: pruning rate {last['rate']:.3f} after {last['step']} steps, {last['macs_reduction']:.1%} "
            f"of MACs removed (target {gas_target:.1%}, ceiling rate {gas.ceiling:.3f})"
        )
    _print_fit(res, output)


@cli.command("eval")
@click.argument("artifact")
@click.option("--data", default="mnist10k", show_default=True, help="digits, mnist10k or an ImageFolder directory.")
@click.option("--split", default="val", show_default=True, help="train, val or all.")
@click.option("--teacher", default=None, help="Also report agreement with this model's predictions.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--device", default=None)
@click.option("--limit", type=int, default=None, help="Evaluate the first N images only.")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def eval_cmd(artifact, data, split, teacher, batch_size, workers, device, limit, as_json):
    """Top-1, top-5 and loss of ARTIFACT (an artifact folder or a timm name) on --data."""
    from vitcompress.datapipe import check_data
    from vitcompress.evaluate import evaluate_data
    from vitcompress.training import resolve_model_for_training

    check_data(data)
    net = resolve_model_for_training(artifact)
    t = resolve_model_for_training(teacher) if teacher else None
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


@cli.command()
@click.argument("teacher")
@click.option(
    "-o", "--output", required=True, type=click.Path(), help="Folder for the stage artifacts and the summary."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="PipelineConfig JSON; options given on the command line override it.",
)
@click.option("--flops-reduction", type=float, help="Final fraction of MACs to remove.")
@click.option("--params-reduction", type=float, help="Final fraction of params to remove.")
@click.option("--importance", default="taylor", show_default=True)
@click.option("--width-granularity", default="heads,mlp", show_default=True)
@click.option("--round-to", type=int, default=8, show_default=True)
@click.option(
    "--depth-share",
    type=float,
    default=0.3,
    show_default=True,
    help="Share of the reduction (log space) taken by depth.",
)
@click.option(
    "--depth-blocks", type=int, default=None, help="Blocks the depth stage removes (overrides --depth-share)."
)
@click.option("--calib-images", type=int, default=256, show_default=True)
@_distill_options
@_train_options
def pipeline(
    teacher,
    output,
    config_file,
    flops_reduction,
    params_reduction,
    importance,
    width_granularity,
    round_to,
    depth_share,
    depth_blocks,
    calib_images,
    **kw,
):
    """Width prune (taylor) -> distil -> depth prune -> distil from TEACHER, with a summary table."""
    from click.core import ParameterSource

    from vitcompress.errors import VitCompressError
    from vitcompress.recipe import PipelineConfig, format_summary, run_pipeline

    ctx = click.get_current_context()
    given = lambda name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE  # noqa: E731
    if config_file:
        try:
            with open(config_file) as fh:
                cfg = PipelineConfig.from_dict(json.load(fh))
        except (OSError, ValueError) as e:
            raise VitCompressError(f"cannot read pipeline config {config_file!r}: {e}; pass a JSON file") from None
    else:
        cfg = PipelineConfig()
    top = dict(
        flops_reduction=flops_reduction,
        params_reduction=params_reduction,
        importance=importance,
        width_granularity=tuple(_csv(width_granularity)),
        round_to=round_to,
        depth_share=depth_share,
        depth_blocks=depth_blocks,
        calib_images=calib_images,
    )
    for k, v in top.items():
        if not config_file or given(k):
            setattr(cfg, k, v)
    if given("flops_reduction") and not given("params_reduction"):
        cfg.params_reduction = None
    if given("params_reduction") and not given("flops_reduction"):
        cfg.flops_reduction = None
    tcfg, dcfg = _train_config(kw), _distill_config(kw)
    for k in _TRAIN_KEYS:
        if not config_file or given(k):
            setattr(cfg.train, k, getattr(tcfg, k))
    cfg.train.progress = tcfg.progress
    for opt, attr in (
        ("distill_kind", "kind"),
        ("ce_weight", "ce"),
        ("kd_weight", "kd"),
        ("temperature", "temperature"),
        ("hidden_weight", "hidden"),
    ):
        if not config_file or given(opt):
            setattr(cfg.distill, attr, getattr(dcfg, attr))
    summary = run_pipeline(teacher, cfg, output, force=kw["force"], resume=kw["resume"], progress=tcfg.progress)
    click.echo(format_summary(summary))
    click.echo(f"wrote {output}")


# ------------------------------------------------------------------------------------------ tokens
def _token_options(no_vpa: bool, prop_attn: bool | None) -> dict:
    """Reducer options from the CLI flags."""
    options = {}
    if no_vpa:
        options["vpa"] = False
    if prop_attn is not None:
        options["prop_attn"] = prop_attn
    return options


@cli.command()
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
    "--flops-reduction", type=float, help="Choose the schedule's amount: the smallest removing this share of MACs."
)
@click.option(
    "--search", is_flag=True, help="Choose the amount by calibration search: the largest within --tolerance top-1."
)
@click.option(
    "--tolerance", type=float, default=0.01, show_default=True, help="--search: allowed top-1 drop (0.01 = 1 point)."
)
@click.option(
    "--data",
    default="digits",
    show_default=True,
    help="--search: digits, mnist10k or an ImageFolder directory (val split).",
)
@click.option("--search-images", type=int, default=512, show_default=True, help="--search: held-out images.")
@click.option(
    "--search-metric",
    type=click.Choice(["top1", "agreement"]),
    default="top1",
    show_default=True,
    help="--search: top-1 on the labels, or agreement with the unreduced model's predictions.",
)
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
    tolerance,
    data,
    search_images,
    search_metric,
    pretrained,
    checkpoint,
    num_classes,
    img_size,
    force,
):
    """Apply dynamic token reduction to MODEL (a timm name or an artifact folder)."""
    from vitcompress.token_reduction import reduce_tokens

    res = reduce_tokens(
        model,
        schedule,
        method,
        options=_token_options(no_vpa, prop_attn),
        flops_reduction=flops_reduction,
        search=dict(data=data, images=search_images, tolerance=tolerance, metric=search_metric) if search else None,
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


class _EchoHandler(logging.Handler):
    """The library's progress lines (``logging`` at INFO) printed as plain lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turn every user error into one line and exit code 2."""
    log = logging.getLogger("vitcompress")
    handler, level = _EchoHandler(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
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
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    return 0


def _cmd(argv) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return f"{argv[0]} " if argv and not argv[0].startswith("-") else ""


if __name__ == "__main__":
    sys.exit(main())
