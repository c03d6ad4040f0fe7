"""Benchmark report: ratio arithmetic, Markdown table, JSON with every raw sample, PNG plot.

Per variant and (backend, batch): MACs ratio = MACs / baseline MACs; latency ratio = median of
paired per-round median ratios (see ``timing.paired_ratio``); speedup = 1 / latency ratio;
efficiency = (1 - latency ratio) / (1 - MACs ratio), the fraction of the MACs reduction that
became a latency reduction (1.0 = latency fell exactly as much as MACs; undefined for the
baseline and for variants with MACs ratio >= 1).
"""

from __future__ import annotations

import json
from pathlib import Path

from vitcompress.io import atomic_file

COLUMNS = [
    "backend",
    "batch",
    "variant",
    "precision",
    "params (M)",
    "MACs/img (G)",
    "MACs ratio",
    "median (ms)",
    "p90 (ms)",
    "latency ratio",
    "throughput (img/s)",
    "speedup",
    "efficiency",
]


def efficiency(macs_ratio: float, latency_ratio: float) -> float | None:
    """(1 - latency ratio) / (1 - MACs ratio); None when the MACs ratio is not below 1."""
    if macs_ratio >= 1.0 - 1e-9:
        return None
    return (1.0 - latency_ratio) / (1.0 - macs_ratio)


def ratios(macs: int, base_macs: int, latency_ratio: float) -> dict:
    """MACs ratio, latency ratio, speedup and efficiency of one variant against the baseline."""
    mr = macs / base_macs
    return {
        "macs_ratio": mr,
        "latency_ratio": latency_ratio,
        "speedup": 1.0 / latency_ratio,
        "efficiency": efficiency(mr, latency_ratio),
    }


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(result: dict) -> str:
    """The report as Markdown: environment line, skipped backends, one table row per measurement."""
    env, cfg = result["env"], result["config"]
    gpu = env["gpu"]["name"] if env.get("gpu") else "no GPU"
    lines = [
        f"Baseline: `{result['baseline']}`. CPU: {env['cpu']} ({env['threads']} threads); {gpu}; "
        f"precision {cfg['precision']}; torch {env['versions']['torch']}, onnxruntime "
        f"{env['versions']['onnxruntime'] or env['versions']['onnxruntime-gpu']}; {cfg['rounds']} rounds x "
        f"{cfg['iters']} iterations per variant after {cfg['warmup']} warm-up passes, interleaved.",
        "",
    ]
    for s in result["skipped"]:
        lines.append(f"- skipped `{s['backend']}`: {s['reason']}")
    if result["skipped"]:
        lines.append("")
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in result["measurements"]:
        cells = [
            m["backend"],
            str(m["batch"]),
            m["variant"],
            m.get("precision", cfg["precision"]),
            f"{m['params'] / 1e6:.2f}",
            f"{m['macs'] / 1e9:.3f}",
            f"{m['macs_ratio']:.3f}",
            f"{m['median_ms']:.2f}",
            f"{m['p90_ms']:.2f}",
            f"{m['latency_ratio']:.3f}",
            f"{m['throughput']:.1f}",
            f"{m['speedup']:.2f}x",
            _f(m["efficiency"], ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def matplotlib_available() -> bool:
    """True where matplotlib imports (a GPU image may lack it: the JSON is written, the PNG later)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(result: dict, path: Path) -> None:
    """MACs ratio (x) against latency ratio (y) per backend/batch, with the ideal y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot([0, 1.05], [0, 1.05], "k--", lw=1, label="ideal (latency ratio = MACs ratio)")
    groups: dict = {}
    for m in result["measurements"]:
        groups.setdefault((m["backend"], m["batch"]), []).append(m)
    for (backend, batch), ms in groups.items():
        pts = ax.scatter([m["macs_ratio"] for m in ms], [m["latency_ratio"] for m in ms], label=f"{backend} b{batch}")
        for m in ms:
            quant = m.get("precision") in ("int8", "fp8")  # the plot marks a quantized variant's precision
            ax.annotate(
                f"{m['variant']} ({m['precision']})" if quant else m["variant"],
                (m["macs_ratio"], m["latency_ratio"]),
                fontsize=6,
                alpha=0.7,
                xytext=(3, 3),
                textcoords="offset points",
                color=pts.get_facecolor()[0],
            )
    ax.set_xlabel("MACs ratio (variant / baseline)")
    ax.set_ylabel("latency ratio (variant / baseline, median)")
    ax.set_xlim(0, 1.1)
    ax.set_ylim(0, max([1.1] + [m["latency_ratio"] * 1.05 for m in result["measurements"]]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"FLOPs vs latency (baseline {result['baseline']})", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


#: the files ``write_report`` writes into its folder
REPORT_FILES = ("report.md", "report.json", "report.png")


def write_report(result: dict, out_dir) -> dict:
    """Write ``report.md``, ``report.json`` (every raw sample) and ``report.png`` into ``out_dir``
    (the PNG only where matplotlib is installed: ``paths["png"]`` is then None)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "png": out / "report.png"}
    with atomic_file(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    with atomic_file(paths["md"]) as tmp:
        Path(tmp).write_text(to_markdown(result))
    if matplotlib_available():
        plot(result, paths["png"])
    else:
        paths["png"] = None
    return paths
