"""``vitcompress export``: ONNX with dynamic axes, parity check, optional TensorRT engine.

The options' defaults are ``export``'s keyword arguments; their help texts are here (the export
stage has no settings dataclass).
"""

from __future__ import annotations

import click

from vitcompress.artifact import check_output, load
from vitcompress.exporters.export import export
from vitcompress.hf import to_hf_folder

from .options import FLAGS_ATTR, default_of, require


def _profile(value) -> str:
    """A profile default ``(1, 8, 32)`` as the command line writes it, ``1:8:32``."""
    return ":".join(str(v) for v in value)


@click.command("export")
@click.argument("artifact")
@click.option("-o", "--output", required=True, type=click.Path(), help="ONNX file to write (--format hf: a folder).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "hf"]),
    default="onnx",
    show_default=True,
    help="hf: a transformers save_pretrained folder (uniform widths only; docs/families.md).",
)
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
    help="Token-reduced models (topk, topk-vpa, evit, etps): add the input keep_permille [1] int64 that sets "
    "every reducing block's keep rate at run time (docs/export.md).",
)
@click.option(
    "--keep-permille",
    help="--runtime-keep with --trt: engine profile MIN:OPT:MAX of keep_permille (default 1:<schedule's rate>:1000).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing OUTPUT (and engine).")
def export_cmd(
    artifact,
    output,
    fmt,
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
    keep_permille,
    force,
):
    """Export ARTIFACT to ONNX (dynamic batch, optional dynamic size), check parity; --trt builds an engine.
    --format hf writes a transformers folder instead."""
    require(trt, "--trt", "engine", "workspace", "timing_cache", "opt_level")
    require(runtime_keep, "--runtime-keep", "keep_permille")
    if fmt == "hf":
        check_output(output, force=force, inputs=(artifact,), what="transformers folder")
        cls = to_hf_folder(load(artifact), output, force=force)
        click.echo(f"wrote {output} ({cls}; transformers.AutoModel*.from_pretrained loads it)")
        return
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
        keep_permille=keep_permille,
        progress=True,
        runtime_keep=runtime_keep,
        force=force,
    )


# the library's parameter names that differ from the option names (the error lines show the flag)
setattr(
    export_cmd.callback, FLAGS_ATTR, {**getattr(export_cmd.callback, FLAGS_ATTR, {}), "workspace_gib": "--workspace"}
)
