"""Plots of an artifact: what each block kept, per structure kind."""

from __future__ import annotations

import os

import torch

from .artifact import ArtifactMeta
from .families import family_for_source
from .io import atomic_file


def plot_widths(meta: ArtifactMeta, path: str | os.PathLike) -> None:
    """Bar chart of the kept share of heads, q/k dims, v dims and MLP neurons per source block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fam = family_for_source(meta.source)
    with torch.device("meta"):  # the unpruned source model's shapes, no weights
        full = fam.spec(fam.create(meta.source.name, **meta.source.kwargs))
    spec = meta.require_spec()
    kept = {b.source_index: b for b in spec.blocks}
    xs = list(range(full.depth))
    series = {
        name: [getattr(kept[i], attr) / getattr(full.blocks[i], attr) if i in kept else 0 for i in xs]
        for name, attr in (("heads", "num_heads"), ("q/k dim", "qk_dim"), ("v dim", "v_dim"), ("MLP", "mlp_hidden"))
    }
    fig, ax = plt.subplots(figsize=(max(6, len(xs) * 0.6), 3.5))
    w = 0.2
    for k, (name, vals) in enumerate(series.items()):
        ax.bar([x + (k - 1.5) * w for x in xs], vals, w, label=name)
    ax.set_xticks(xs)
    ax.set_xlabel("source block (no bars: block removed)")
    ax.set_ylabel("kept share")
    ax.set_ylim(0, 1.3)
    red = 1 - meta.counts["macs"] / meta.counts_source["macs"]
    dims, full_dims = (",".join(str(d) for d in sp.stage_dims) for sp in (spec, full))
    ax.set_title(f"{meta.source.name}: embed {dims}/{full_dims}, MACs -{red:.1%}")
    ax.legend(ncol=4, fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
