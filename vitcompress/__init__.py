"""vitcompress: prune, token-reduce, export and benchmark Vision Transformers.

Public API (imported lazily so that ``import vitcompress`` stays light)::

    vitcompress.prune(model_or_artifact, flops_reduction=0.462, ...) -> PruneResult
    vitcompress.load(path) -> nn.Module          # rebuild a pruned model from its artifact
    vitcompress.quantize(model_or_artifact, precision="int8", ...) -> QuantizeResult  # INT8/FP8 PTQ
    vitcompress.save(model, path)                # write an artifact (atomically)
    vitcompress.count(model) -> Counts           # analytic MACs / params
    vitcompress.create_source_model(name, ...)   # an unpruned model of a supported family
    vitcompress.family_of(model) -> Family       # the adapter the core handles the model through
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import VitCompressError

if TYPE_CHECKING:  # the names of _LAZY, for type checkers and editors; at run time they load on first use
    from .artifact import ArtifactMeta, load, read_meta, save
    from .counting import Counts, count
    from .evaluate import evaluate_data
    from .families import FAMILIES, family_of
    from .methods import METHODS
    from .models import create_source_model, list_models
    from .plan import Plan
    from .pruner import PruneConfig, PruneResult, prune
    from .quantization import QuantizeConfig, QuantizeResult, quantize
    from .recipe import PipelineConfig, run_pipeline
    from .resolve import resolve_model
    from .slicers import slice_model
    from .training import TrainConfig, fit

__version__ = "0.1.0"

_LAZY = {
    "prune": "pruner",
    "PruneConfig": "pruner",
    "PruneResult": "pruner",
    "load": "artifact",
    "save": "artifact",
    "read_meta": "artifact",
    "ArtifactMeta": "artifact",
    "count": "counting",
    "Counts": "counting",
    "create_source_model": "models",
    "list_models": "models",
    "slice_model": "slicers",
    "Plan": "plan",
    "fit": "training",
    "TrainConfig": "training",
    "evaluate_data": "evaluate",
    "run_pipeline": "recipe",
    "PipelineConfig": "recipe",
    "METHODS": "methods",
    "FAMILIES": "families",
    "family_of": "families",
    "resolve_model": "resolve",
    "quantize": "quantization",
    "QuantizeConfig": "quantization",
    "QuantizeResult": "quantization",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vitcompress' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["VitCompressError", *_LAZY]
