"""CCT models by name, created with the ``vit-pytorch`` package (the optional extra ``cct``).

Names follow the Compact Convolutional Transformer paper (Hassani et al., 2021):
``cct_{L}_{k}x{n}_{size}`` is CCT-L (L encoder layers) with a tokenizer of ``n`` convolutions of
kernel ``k`` for ``size`` px images; ``_sine`` takes a fixed sinusoidal position embedding instead of
a learned one. ``L`` sets the width, heads and MLP ratio as in the paper (CCT-2/4: width 128, 2
heads, ratio 1; CCT-6/7/8: 256, 4, 2; CCT-14/16: 384, 6, 3). Stride and padding of the tokenizer's
convolutions follow from ``k`` (``max(1, k // 2 - 1)`` and ``max(1, k // 2)``), each followed by
ReLU and a 3x3 stride-2 max pool; the intermediate convolutions have 64 channels, the last one
``width`` channels (the embedding).

The model is ``vit_pytorch.cct.CCT`` itself; ``create`` makes one change that does not alter what it
computes: each encoder layer's activation, a plain function (``F.gelu``), becomes the module
``nn.GELU()``, so that the pruning methods can address it like any other layer.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from torch import nn

from ...errors import VitCompressError

EXTRA = "pip install 'vitcompress[cct]'"

# layers -> (width, heads, MLP ratio), as in the paper and vit-pytorch's cct_* functions
SIZES = {
    2: (128, 2, 1),
    4: (128, 2, 1),
    6: (256, 4, 2),
    7: (256, 4, 2),
    8: (256, 4, 2),
    14: (384, 6, 3),
    16: (384, 6, 3),
}
NAME = re.compile(r"cct_(\d+)_(\d+)x(\d+)_(\d+)(_sine)?")
# the named configurations of the paper (CIFAR: 32 px, ImageNet: 224 and 384 px)
MODELS = [
    f"{base}{pos}"
    for base in (
        "cct_2_3x2_32",
        "cct_4_3x2_32",
        "cct_6_3x1_32",
        "cct_6_3x2_32",
        "cct_7_3x1_32",
        "cct_7_3x2_32",
        "cct_7_7x2_224",
        "cct_14_7x2_224",
        "cct_14_7x2_384",
    )
    for pos in ("", "_sine")
]
# timm-style creation options (the command line's) -> vit-pytorch's
RENAME = {"in_chans": "n_input_channels", "embed_dim": "embedding_dim", "depth": "num_layers"}
# what vit_pytorch.cct.CCT and its TransformerClassifier take (it drops unknown keywords silently)
ARGUMENTS = frozenset(
    {
        "img_size",
        "embedding_dim",
        "n_input_channels",
        "n_conv_layers",
        "kernel_size",
        "stride",
        "padding",
        "pooling_kernel_size",
        "pooling_stride",
        "pooling_padding",
        "dropout_rate",
        "attention_dropout",
        "stochastic_depth_rate",
        "num_layers",
        "num_heads",
        "mlp_ratio",
        "num_classes",
        "positional_embedding",
    }
)
REFUSED = {
    "patch_size": "CCT has a convolutional tokenizer, not patches; its kernel is part of the name (cct_7_3x1_32: 3x3)",
    "global_pool": "CCT pools with its sequence pooling (an attention over the tokens), not a class token or a mean",
}


def parse(name: str) -> dict[str, Any] | None:
    """The ``vit_pytorch.cct.CCT`` arguments of a CCT model name (None: not a CCT name)."""
    m = NAME.fullmatch(name)
    if m is None or int(m.group(1)) not in SIZES:
        return None
    layers, k, n, size = (int(m.group(i)) for i in range(1, 5))
    if n < 1 or k < 1:
        return None
    width, heads, ratio = SIZES[layers]
    return {
        "img_size": size,
        "embedding_dim": width,
        "num_layers": layers,
        "num_heads": heads,
        "mlp_ratio": ratio,
        "kernel_size": k,
        "stride": max(1, k // 2 - 1),
        "padding": max(1, k // 2),
        "n_conv_layers": n,
        "positional_embedding": "sine" if m.group(5) else "learnable",
        "num_classes": 10 if size == 32 else 1000,
    }


def list_names(pattern: str = "*") -> list[str]:
    """The named CCT configurations that match a glob pattern."""
    return [n for n in MODELS if fnmatch.fnmatch(n, pattern)]


def cct_module():
    """``vit_pytorch.cct``, or a one-line error naming the extra that installs it."""
    try:
        from vit_pytorch import cct  # optional dependency (the ``cct`` extra)
    except ImportError:
        raise VitCompressError(f"CCT models need the vit-pytorch package; install it with {EXTRA}") from None
    return cct


def cct_arguments(name: str, **kwargs: Any) -> dict[str, Any]:
    """The ``CCT`` arguments of ``name`` with creation options applied (timm-style names such as
    ``embed_dim``, ``depth``, ``in_chans`` are renamed; ``patch_size`` and ``global_pool`` are refused)."""
    args = parse(name)
    if args is None:
        raise VitCompressError(f"{name!r} is not a CCT model name; list them with `vitcompress models 'cct*'`")
    for key, why in REFUSED.items():
        if kwargs.get(key) is not None:
            raise VitCompressError(f"{key} does not apply to {name}: {why}; drop --{key.replace('_', '-')}")
    for key, value in kwargs.items():
        if key in REFUSED or value is None:
            continue
        arg = RENAME.get(key, key)
        if arg not in ARGUMENTS:
            raise VitCompressError(
                f"unknown option {key!r} for {name}; CCT takes {', '.join(sorted(set(RENAME) | ARGUMENTS - set(RENAME.values())))}"
            )
        args[arg] = value
    return args


def adapt(model: nn.Module, img_size) -> nn.Module:
    """Record the image size (``model.img_size``: the tokenizer's output length, and so the position
    embedding, depends on it) and the classifier's size (``model.num_classes``, as timm models
    have it), and give every encoder layer its activation as a module
    (``nn.GELU()`` for ``F.gelu``: the same function); returns ``model``."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    model.img_size = (int(h), int(w))
    model.num_classes = int(model.classifier.fc.out_features)
    for blk in model.classifier.blocks:
        if not isinstance(blk.activation, nn.Module):
            if getattr(blk.activation, "__name__", "") != "gelu":
                raise VitCompressError(f"CCT layer activation {blk.activation!r} is not GELU; only GELU is supported")
            blk.activation = nn.GELU()
    return model


def create(name: str, **kwargs: Any) -> nn.Module:
    """A new ``vit_pytorch.cct.CCT`` for ``name`` (random weights), adapted (see ``adapt``)."""
    cct = cct_module()
    args = cct_arguments(name, **kwargs)
    try:
        model = cct.CCT(**args)
    except (TypeError, AssertionError, RuntimeError) as e:
        raise VitCompressError(f"cannot create {name!r} with {kwargs}: {e}") from None
    return adapt(model, args["img_size"])
