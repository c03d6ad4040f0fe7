"""IHP: intra-head pruning with learnable row scales and an explicit relationship table.

Reading of the paper (see ``docs/methods.md``): one learnable scale per output row of the q, k and v
projections (and per ``fc1`` row, and per embedding channel when those granularities are chosen) is
trained together with the weights on ``task loss + l1 * sum |scale|``. The relationship matrix is
the core's coupling groups made explicit (``relationship_table``): q row i moves with k row i of
the same head, v row j with ``proj`` column j, ``fc1`` row m with ``fc2`` column m, and each
embedding channel with every tensor on the residual stream. An element's score is the mean |scale|
over the scaled rows its group owns; the core's budget selection picks what to keep; the scales are
folded into the weights so that the sliced model is exact and dense.

Embedding channels carry their scale on the output of every LayerNorm that reads the residual
stream (each block's ``norm1``/``norm2`` and the final norm), which folds exactly into those norms.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..budget import Budget, select
from ..data import calibration_loader
from ..families import Family, family_of
from ..groups import KINDS, Group
from .base import MethodOptions, MethodOutput, check_positive
from .optim import frozen_except, optimise
from .scaling import attach, fold, residual_norm_paths

KIND_SUPPORT = ("heads", "qk", "v", "mlp", "embed")


@dataclass
class IHPOptions(MethodOptions):
    """Hyperparameters of IHP's sparse-training stage."""

    steps: int = 100  # optimisation steps on calibration batches
    l1: float = 1e-3  # lambda of the L1 term on the scales (sum over all scales)
    scale_lr: float = 1e-2  # Adam learning rate of the scales
    lr: float = 1e-4  # Adam learning rate of the weights (when train_weights)
    train_weights: bool = True  # train the weights together with the scales

    def validate(self) -> None:
        check_positive(self, "steps", "l1", "lr", allow_zero=True)
        check_positive(self, "scale_lr")


def _scaled_paths(model: nn.Module, kinds: Iterable[str], family: Family | None = None) -> dict[str, str]:
    """Module path -> the parameter (``path.weight``) whose rows carry a scale."""
    kinds = set(kinds)
    fam = family or family_of(model)
    paths = []
    for p in fam.parts(model):
        if kinds & {"heads", "qk", "v"}:
            paths.append(p.qkv)
        if "mlp" in kinds:
            paths.append(p.fc1)
    if "embed" in kinds:
        paths += residual_norm_paths(model, fam)
    return {p: f"{p}.weight" for p in paths}


def attach_scales(model: nn.Module, kinds: Iterable[str], family: Family | None = None) -> dict[str, nn.Parameter]:
    """Wrap the scaled modules of ``model`` (in place) with learnable row scales, initialised to 1.

    Returns ``{parameter name in the unwrapped model: scale}``; a module's bias (when it has one)
    maps to the same scale as its weight. ``family``: the model's, when the caller already knows it
    (else asked with ``family_of``).
    """
    scales: dict[str, nn.Parameter] = {}
    for path, pname in _scaled_paths(model, kinds, family).items():
        mod = model.get_submodule(path)
        w = mod.weight
        s = nn.Parameter(torch.ones(w.shape[0], device=w.device, dtype=w.dtype))
        attach(model, path, out_scale=(lambda s=s: s))
        scales[pname] = s
        if getattr(mod, "bias", None) is not None:
            scales[f"{path}.bias"] = s
    return scales


def group_scores(groups: list[Group], scales: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Per element: mean |scale| over the scaled rows of the element's group members."""
    out = []
    for g in groups:
        total = torch.zeros(g.numel, dtype=torch.float64)
        n = 0
        for m in g.members:
            s = scales.get(m.param)
            if s is None or m.dim != 0 or m.index is None:
                continue
            vals = s.detach().abs().to(torch.float64).cpu()[m.index]  # [E, k]
            total += vals.mean(1)
            n += 1
        if n == 0:
            raise ValueError(f"no learnable scale covers group {g.describe()}")
        out.append((total / n).reshape(g.shape))
    return out


def relationship_table(model: nn.Module, granularity: Iterable[str] = KINDS[:5]) -> list[dict]:
    """The coupling groups as an inspectable table: for every group, which rows/columns of which
    tensors move together, and which of those tensors carry IHP's learnable scale.

    Each entry: ``{'kind', 'layer', 'shape', 'members': [{'param', 'dim', 'index', 'scaled'}]}``
    where ``index[e]`` lists the positions along ``dim`` owned by element ``e`` (row-major over
    ``shape``); ``dim`` None means the whole tensor belongs to element ``element``.
    """
    kinds = tuple(granularity)
    fam = family_of(model)
    scaled = set(_scaled_paths(model, kinds, fam).values())
    scaled |= {p.replace(".weight", ".bias") for p in scaled}
    rows = []
    for g in fam.groups(model, kinds):
        members = []
        for m in g.members:
            d = {"param": m.param, "dim": m.dim, "scaled": m.param in scaled and m.dim == 0}
            if m.index is not None:
                d["index"] = m.index.tolist()
            else:
                d["element"] = m.element
            members.append(d)
        rows.append({"kind": g.kind, "layer": g.layer, "shape": list(g.shape), "members": members})
    return rows


def format_relationship_table(table: list[dict], element: int = 0) -> str:
    """Readable text: per group, the slices that element ``element`` owns in every tensor."""
    lines = []
    for row in table:
        where = f"block {row['layer']}" if row["layer"] is not None else "model"
        lines.append(f"{row['kind']} @ {where} {tuple(row['shape'])}: element {element} =")
        for m in row["members"]:
            if "index" in m:
                what = f"dim {m['dim']} {m['index'][element]}"
            else:
                what = f"whole tensor of element {m['element']}"
            lines.append(f"    {m['param']}[{what}]{'  (scaled)' if m['scaled'] else ''}")
    return "\n".join(lines)


def sparse_train(
    model: nn.Module,
    loader,
    kinds,
    opts: IHPOptions,
    *,
    labels: str = "auto",
    progress: bool = False,
    family: Family | None = None,
) -> tuple[nn.Module, dict[str, nn.Parameter], dict]:
    """A training copy of ``model`` with scales attached and trained; returns (copy, scales, log)
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    train = copy.deepcopy(model).eval()
    weights = frozen_except(train, opts.train_weights)
    scales = attach_scales(train, kinds, family)
    unique = list({id(s): s for s in scales.values()}.values())
    groups = [{"params": unique, "lr": opts.scale_lr}]
    if weights:
        groups.append({"params": weights, "lr": opts.lr})
    optimizer = torch.optim.Adam(groups)
    log = optimise(
        train,
        loader,
        opts.steps,
        optimizer,
        penalty=lambda: opts.l1 * sum(s.abs().sum() for s in unique),
        labels=labels,
        reference=model,
        progress=progress,
        desc="ihp sparse training",
    )
    return train, scales, log


def run(
    model: nn.Module,
    cfg,
    opts: IHPOptions,
    *,
    progress: bool = False,
    budget: Budget | None = None,
    family: Family | None = None,
) -> MethodOutput:
    """IHP on ``model`` under ``cfg``'s budget: sparse training, group scores, selection, folding
    (``family``: the model's, when the caller already knows it; else asked with ``family_of``)."""
    fam = family or family_of(model)
    kinds = tuple(cfg.granularity)
    loader = calibration_loader(cfg.data, model, cfg.calib_images, cfg.batch_size, cfg.seed, family=fam)
    train, scales, log = sparse_train(model, loader, kinds, opts, labels=cfg.labels, progress=progress, family=fam)
    groups = fam.groups(model, kinds)  # same layout and names as the folded copy
    scores = group_scores(groups, scales)
    folded = fold(train)
    for p in folded.parameters():
        p.requires_grad_(False)
    plan, achieved = select(folded, groups, scores, budget or cfg.budget(), family=fam)
    all_s = torch.cat([s.detach().reshape(-1) for s in {id(s): s for s in scales.values()}.values()])
    extra = {
        "loss": log,
        "scales": {"mean_abs": float(all_s.abs().mean()), "below_0.5": float((all_s.abs() < 0.5).float().mean())},
    }
    return MethodOutput(folded.eval(), plan, achieved, extra)
