"""Reading a latency table: a summary for the terminal and a plot of the step sweeps."""

from __future__ import annotations

import os

import numpy as np

from vitcompress.io import atomic_file
from vitcompress.latency import LatencyTable


def format_table(table: LatencyTable) -> str:
    """What the table holds: where it was measured, the steps, the grid, the dense-model check."""
    f = table.full
    d, t = int(f["embed"]), int(f["tokens"])
    attn = table.attn(d, t, int(f["heads"]), int(f["qk"]), int(f["v"]))
    mlp = table.mlp(d, t, int(f["mlp"]))
    steps = ", ".join(f"{k} {table.steps[k]}" for k in ("qk", "v", "mlp", "embed") if k in table.steps)
    lines = [
        f"latency table: {table.describe()}",
        f"steps (widths where latency changes): {steps} (heads 1)",
        "grid: " + "; ".join(f"{k} {v}" for k, v in table.grid.items()),
        f"one block at full width: attention {attn:.3f} ms + MLP {mlp:.3f} ms; outside the blocks "
        f"{table.rest(d):.3f} ms; per-call overhead {table.overhead_ms:.3f} ms (removed from the sublayers)",
    ]
    if table.dense:
        meas, pred = table.dense["measured_ms"], table.dense["predicted_ms"]
        lines.append(
            f"dense model: measured {meas:.2f} ms, sum of the parts {pred:.2f} ms ({pred / meas - 1:+.1%}; "
            "predictions are scaled to the measured figure)"
        )
    return "\n".join(lines)


def plot_table(table: LatencyTable, path: str | os.PathLike) -> None:
    """The four step sweeps (milliseconds against width) with the fitted staircases (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("qk", "v", "mlp", "embed") if k in table.sweeps]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sw = table.sweeps[kind]
        w, ms, p = np.asarray(sw["widths"], float), np.asarray(sw["ms"], float), int(sw["step"])
        ax.plot(w, ms, ".", ms=4, label="measured")
        x = np.ceil(w / p) * p
        a = np.stack([np.ones_like(x), x], 1)
        coef, *_ = np.linalg.lstsq(a, ms, rcond=None)
        ax.step(w, a @ coef, where="mid", lw=1, label=f"step {p}")
        ax.set_title(f"{kind} width", fontsize=9)
        ax.set_xlabel("width")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("ms per batch (sublayer)")
    fig.suptitle(table.describe(), fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
