"""Plots of an artifact: what each block kept, per structure kind."""

from __future__ import annotations

import os

import timm
import torch

from .artifact import ArtifactMeta
from .io import atomic_file


def plot_widths(meta: ArtifactMeta, path: str | os.PathLike) -> None:
    """Bar chart of the kept share of heads, q/k dims, v dims and MLP neurons per source block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.device("meta"):  # the unpruned source model's shapes, no weights
        orig = timm.create_model(meta.source.name, pretrained=False, **meta.source.kwargs)
    h0, hd = orig.blocks[0].attn.num_heads, orig.blocks[0].attn.head_dim
    m0 = orig.blocks[0].mlp.fc1.out_features
    kept = {b.source_index: b for b in meta.spec.blocks}
    xs = list(range(len(orig.blocks)))
    series = {
        "heads": [kept[i].num_heads / h0 if i in kept else 0 for i in xs],
        "q/k dim": [kept[i].qk_dim / hd if i in kept else 0 for i in xs],
        "v dim": [kept[i].v_dim / hd if i in kept else 0 for i in xs],
        "MLP": [kept[i].mlp_hidden / m0 if i in kept else 0 for i in xs],
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
    ax.set_title(f"{meta.source.name}: embed {meta.spec.embed_dim}/{orig.embed_dim}, MACs -{red:.1%}")
    ax.legend(ncol=4, fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
