"""``quantize``: post-training quantization of a (pruned, token-reduced) model, the API behind
``vitcompress quantize``.

The Linear and Conv2d layers (less those ``exclude`` names) become fake-quantized
(``vitcompress.quantizers``): weights with one symmetric scale per output channel (absolute
maximum), inputs with one symmetric scale per layer chosen on calibration images by ``minmax``
(largest absolute value seen), ``percentile`` (that percentile of the absolute values) or
``entropy`` (TensorRT's KL-divergence threshold over a 2048-bin histogram). The scales go into the
weights file, the settings into ``extra["quantization"]`` and a ``quantize`` history step; the
artifact loads as the fake-quantized model and exports as a Q/DQ ONNX graph.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .artifact import check_output, meta_of, save
from .config import check_fields, merge_config, setting
from .data import DataConfig, calibration_loader
from .datapipe import check_data
from .errors import VitCompressError
from .io import output_lock
from .quantizers import (
    FP8_MAX,
    INT8_MAX,
    apply_quantizers,
    is_quantized,
    quant_layers,
    quantizable_layers,
)
from .resolve import resolve_model

CALIBRATIONS = ("minmax", "percentile", "entropy")
SAMPLE_PER_BATCH = 4096  # absolute input values kept per layer and batch for percentile/entropy
SAMPLE_MAX = 2**18  # at most this many per layer
HIST_BINS = 2048


@dataclass
class QuantizeConfig:
    """Settings of ``quantize`` (each one a ``vitcompress quantize`` option)."""

    precision: str = setting(
        "int8", "int8 (per-channel weights, per-tensor inputs) or fp8 (E4M3).", choices=("int8", "fp8")
    )
    calibration: str = setting(
        "minmax", "How input scales are chosen: minmax, percentile or entropy.", choices=CALIBRATIONS
    )
    percentile: float = setting(99.99, "Percentile of |input| for --calibration percentile.", gt=50, le=100)
    data: str = setting("digits", "Calibration images: digits, mnist10k or an ImageFolder directory.")
    calib_images: int = setting(256, "Calibration images.", ge=1, le=2**24)
    batch_size: int = setting(32, "Calibration batch size.", ge=1, le=2**16)
    seed: int = setting(0, "Seed of the calibration sample.", ge=0, lt=2**32)
    exclude: tuple[str, ...] = setting(
        (), "Comma list of layer-name patterns left unquantized (fnmatch: head,blocks.0.*)."
    )

    def validate(self) -> None:
        """One-line ``VitCompressError`` for a setting out of its range or choices, or missing data."""
        if isinstance(self.exclude, str):
            self.exclude = tuple(p.strip() for p in self.exclude.split(",") if p.strip())
        self.exclude = tuple(self.exclude)
        for name, value, choices in (
            ("precision", self.precision, ("int8", "fp8")),
            ("calibration", self.calibration, CALIBRATIONS),
        ):
            if value not in choices:
                raise VitCompressError(f"{name} must be {' or '.join(choices)}, got {value!r}", params=[name])
        check_fields(self)
        check_data(self.data)


@dataclass
class QuantizeResult:
    """A fake-quantized model and what was quantized."""

    model: nn.Module
    precision: str
    layers: list[str]
    skipped: list[str]
    calibration: str
    images: int
    seconds: float = 0.0
    input_scales: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        n = len(self.layers)
        lines = [
            f"quantized {n} Linear/Conv2d layers to {self.precision} ({self.calibration} calibration on "
            f"{self.images} images, {self.seconds:.1f} s); weights per output channel, inputs per tensor",
        ]
        if self.skipped:
            lines.append(f"left in float: {', '.join(self.skipped)}")
        return "\n".join(lines)


def quantize(
    model: str | os.PathLike | nn.Module,
    config: QuantizeConfig | dict | None = None,
    *,
    output: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
    pretrained: bool = False,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    **options,
) -> QuantizeResult:
    """Post-training quantization of a model name, artifact folder or module (a copy for modules).

    The settings are a ``QuantizeConfig`` (or a dict of its fields) and/or its fields as keywords
    (``precision='fp8', calibration='entropy', exclude=('head',)``). Returns the fake-quantized
    model; with ``output`` the artifact is written atomically (an existing folder needs ``force``).
    An already quantized model is refused: quantize the unquantized artifact again instead."""
    cfg = config if isinstance(config, QuantizeConfig) else merge_config(QuantizeConfig(), config or {}, "quantize")
    cfg = merge_config(cfg, options, "quantize") if options else copy.deepcopy(cfg)
    cfg.validate()
    if output is not None:
        check_output(output, force=force, inputs=(model, checkpoint))
    with output_lock(output) if output is not None else contextlib.nullcontext():
        if output is not None:
            check_output(output, force=force, inputs=(model, checkpoint))  # again, now that the output is ours
        net = resolve_model(
            model, pretrained=pretrained, checkpoint=checkpoint, num_classes=num_classes, img_size=img_size
        )
        if is_quantized(net):
            raise VitCompressError(
                f"{_name(model)} is already quantized; quantize the unquantized model (the artifact before "
                "`vitcompress quantize`) instead"
            )
        if isinstance(model, nn.Module):
            net = copy.deepcopy(net)
        return _quantize(net, cfg, output, force, progress)


def _name(model: object) -> str:
    return "the model" if isinstance(model, nn.Module) else repr(str(model))


def _quantize(
    net: nn.Module, cfg: QuantizeConfig, output: str | os.PathLike | None, force: bool, progress: bool
) -> QuantizeResult:
    t0 = time.perf_counter()
    net.eval()
    meta_of(net)  # the model's record (a fresh one for a model vitcompress did not create)
    all_layers = quantizable_layers(net)
    layers = quantizable_layers(net, cfg.exclude)
    if not layers:
        raise VitCompressError(
            "the exclude patterns leave no layer to quantize; exclude fewer layers", params=["exclude"]
        )
    loader = calibration_loader(cfg.data, net, cfg.calib_images, cfg.batch_size, cfg.seed)
    apply_quantizers(net, layers, cfg.precision)
    qmax = INT8_MAX if cfg.precision == "int8" else FP8_MAX
    stats = _calibrate(net, loader, cfg)
    scales = {}
    with torch.no_grad():
        for name, m in quant_layers(net).items():
            w = m.weight.detach().float().abs().flatten(1).amax(1)
            m.weight_scale.copy_((w / qmax).clamp_min(1e-12))
            threshold = _threshold(stats[name], cfg)
            m.input_scale.fill_(max(threshold / qmax, 1e-12))
            scales[name] = float(m.input_scale)
    images = stats.pop("__images__")
    meta = meta_of(net)
    settings = {k: v for k, v in asdict(cfg).items() if k != "exclude"}
    meta.extra["quantization"] = {
        **settings,
        "exclude": list(cfg.exclude),
        "calib_images": images,
        "precision": cfg.precision,
        "layers": sorted(layers),
    }
    meta.history = [
        *meta.history,
        {
            "method": "quantize",
            "precision": cfg.precision,
            "config": {**settings, "exclude": list(cfg.exclude)},
            "target": None,
            "achieved": {"macs_reduction": 0.0, "params_reduction": 0.0, "layers_quantized": float(len(layers))},
        },
    ]
    res = QuantizeResult(
        net.eval(),
        cfg.precision,
        sorted(layers),
        [n for n in all_layers if n not in layers],
        cfg.calibration,
        images,
        time.perf_counter() - t0,
        scales,
    )
    if output is not None:
        save(net, output, force=force, meta=meta)
    return res


class _Stats:
    """What calibration keeps of one layer's inputs: the largest absolute value and a sample."""

    def __init__(self, seed: int):
        self.amax = 0.0
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor, keep: bool) -> None:
        a = x.detach().float().abs().flatten().cpu()
        self.amax = max(self.amax, float(a.max()) if a.numel() else 0.0)
        if keep and self.kept < SAMPLE_MAX and a.numel():
            n = min(SAMPLE_PER_BATCH, a.numel(), SAMPLE_MAX - self.kept)
            idx = torch.randint(0, a.numel(), (n,), generator=self.gen)
            self.samples.append(a[idx])
            self.kept += n

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(1)


def _calibrate(net: nn.Module, loader, cfg: QuantizeConfig) -> dict:
    """Run the calibration images through ``net`` with every quantized layer observing its input."""
    dc = DataConfig.from_model(net)
    keep = cfg.calibration != "minmax"
    layers = quant_layers(net)
    stats: dict = {name: _Stats(cfg.seed + i) for i, name in enumerate(layers)}
    by_module = {id(m): stats[n] for n, m in layers.items()}
    for m in layers.values():
        m.quant_observer = lambda mod, x: by_module[id(mod)].add(x, keep)
    images = 0
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                want = (dc.in_chans, *dc.img_size)
                if tuple(x.shape[1:]) != want:
                    raise VitCompressError(
                        f"calibration data {cfg.data!r} gives images of shape {tuple(x.shape[1:])}, the model takes "
                        f"{want}; pass data with {dc.in_chans} channels at {dc.img_size[0]}x{dc.img_size[1]}",
                        params=["data"],
                    )
                net(x)
                images += x.shape[0]
    finally:
        for m in layers.values():
            m.quant_observer = None
    stats["__images__"] = images
    return stats


def _threshold(st: _Stats, cfg: QuantizeConfig) -> float:
    """The clipping threshold of one layer's inputs (the scale is threshold / the format's maximum)."""
    if cfg.calibration == "minmax" or st.amax == 0.0:
        return st.amax
    sample = st.sample()
    if cfg.calibration == "percentile":
        return float(torch.quantile(sample, cfg.percentile / 100.0)) or st.amax
    return entropy_threshold(sample.numpy(), st.amax)


def entropy_threshold(values: np.ndarray, amax: float, bins: int = HIST_BINS, levels: int = 128) -> float:
    """TensorRT's entropy calibration: the threshold whose ``levels``-level quantization of the
    histogram of ``values`` (absolute values in [0, amax]) loses the least information (KL
    divergence between the clipped reference and its quantized copy)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_kl = bins, np.inf
    for i in range(levels, bins + 1, 16):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()
        src = hist[:i]
        idx = np.arange(i) * levels // i
        sums = np.bincount(idx, weights=src, minlength=levels)
        nonzero = np.bincount(idx, weights=(src != 0).astype(np.float64), minlength=levels)
        q = np.where(src != 0, sums[idx] / np.maximum(nonzero[idx], 1.0), 0.0)
        if ref.sum() == 0 or q.sum() == 0:
            continue
        p = ref / ref.sum()
        q = np.maximum(q / q.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best]) if best < len(edges) else amax
