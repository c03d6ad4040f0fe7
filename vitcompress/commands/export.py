"""``vitcompress export``: ONNX with dynamic axes, parity check, optional TensorRT engine.

The export options are generated from the fields of ``ExportConfig`` and the TensorRT options from
those of ``BuildConfig`` (``options.config_options``): their defaults and help texts are the
fields'. The engine's batch and image profiles and its precision are the export's, so ``BuildConfig``
gives no option for them.
"""

from __future__ import annotations

import click

from vitcompress.artifact import check_output, load
from vitcompress.config import merge_config
from vitcompress.exporters.export import export
from vitcompress.exporters.onnx_export import ExportConfig
from vitcompress.exporters.trt_build import BuildConfig
from vitcompress.hf import to_hf_folder

from .options import config_options, given, require

#: ``ExportConfig`` fields of the library only
EXPORT_EXCLUDE = ("external_data", "seed")
#: ``BuildConfig`` fields that are the export's (``--batch``, ``--img-size``, ``--precision``)
BUILD_EXCLUDE = ("batch", "img_size", "precision")
BUILD_FLAGS = {"workspace_gib": "--workspace"}


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
@config_options(
    ExportConfig,
    exclude=EXPORT_EXCLUDE,
    help={"check": "Compare the file with PyTorch in ONNX Runtime (CPU) before writing it; --no-check skips it."},
)
@click.option("--trt", is_flag=True, help="Check the graph for TensorRT and build an engine.")
@click.option("--engine", type=click.Path(), help="Engine file (default OUTPUT with .engine).")
@config_options(BuildConfig, exclude=BUILD_EXCLUDE, flags=BUILD_FLAGS)
@click.option("--force", is_flag=True, help="Overwrite an existing OUTPUT (and engine).")
def export_cmd(artifact, output, fmt, trt, engine, force, **kw):
    """Export ARTIFACT to ONNX (dynamic batch, optional dynamic size), check parity; --trt builds an engine.
    --format hf writes a transformers folder instead."""
    require(trt, "--trt", "engine", "workspace_gib", "timing_cache", "opt_level")
    require(kw["runtime_keep"], "--runtime-keep", "keep_permille")
    cfg = merge_config(ExportConfig(), given(ExportConfig, kw, exclude=EXPORT_EXCLUDE), "export")
    build = merge_config(BuildConfig(), given(BuildConfig, kw, exclude=BUILD_EXCLUDE), "build")
    if fmt == "hf":
        check_output(output, force=force, inputs=(artifact,), what="transformers folder")
        cls = to_hf_folder(load(artifact), output, force=force)
        click.echo(f"wrote {output} ({cls}; transformers.AutoModel*.from_pretrained loads it)")
        return
    export(artifact, output, cfg, build, trt=trt, engine=engine, progress=True, force=force)
