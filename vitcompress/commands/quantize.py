"""``vitcompress quantize``: post-training INT8/FP8 quantization of a model or artifact."""

from __future__ import annotations

import click

from vitcompress.config import merge_config
from vitcompress.quantization import QuantizeConfig, quantize

from .options import config_options, given


@click.command("quantize")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@config_options(QuantizeConfig)
@click.option("--pretrained", is_flag=True, help="Load hub weights for a model name.")
@click.option("--checkpoint", type=click.Path(), help="Load weights from a .safetensors/.pth file.")
@click.option("--num-classes", type=int, help="Classifier size when creating a model by name.")
@click.option("--img-size", type=int, help="Input size when creating a model by name.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
def quantize_cmd(model, output, pretrained, checkpoint, num_classes, img_size, force, **kw):
    """Quantize MODEL (a timm name or an artifact folder, pruned or not) to INT8 or FP8 (docs/quantize.md).

    The output artifact loads as a fake-quantized model (eval, info, bench --backend torch-cpu,
    finetune) and exports as a Q/DQ ONNX graph."""
    cfg = merge_config(QuantizeConfig(), given(QuantizeConfig, kw), "quantize")
    res = quantize(
        model,
        cfg,
        output=output,
        force=force,
        progress=True,
        pretrained=pretrained,
        checkpoint=checkpoint,
        num_classes=num_classes,
        img_size=img_size,
    )
    click.echo(res.format())
    click.echo(f"wrote {output}")
