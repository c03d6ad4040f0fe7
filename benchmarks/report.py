"""Benchmark report: ratio arithmetic, Markdown table, JSON with every raw sample, PNG plot.

Per variant and (backend, batch): MACs ratio = MACs / baseline MACs; latency ratio = median of
paired per-round median ratios (see ``timing.paired_ratio``); speedup = 1 / latency ratio;
efficiency = (1 - latency ratio) / (1 - MACs ratio), the fraction of the MACs reduction that
became a latency reduction (1.0 = latency fell exactly as much as MACs; undefined for the
baseline and for variants with MACs ratio >= 1). Each of the three carries its 95% confidence
interval from the interleaved rounds (``stats``): ``latency_ratio_ci95``, ``speedup_ci95``,
``efficiency_ci95`` (``[lo, hi]``), shown in brackets in the table and as error bars in the PNG.
Rows are flagged ``busy`` (other processes used cores the bench needed) or ``wide-ci`` (an interval
wider than +-5% of its ratio); the flags are in the table's last column.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitcompress.io import atomic_file

from . import stats

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
    "flags",
]


def efficiency(macs_ratio: float, latency_ratio: float) -> float | None:
    """(1 - latency ratio) / (1 - MACs ratio); None when the MACs ratio is not below 1."""
    if macs_ratio >= 1.0 - 1e-9:
        return None
    return (1.0 - latency_ratio) / (1.0 - macs_ratio)


def ratios(macs: int, base_macs: int, latency_ratio: float, ci: tuple[float, float] | None = None) -> dict:
    """MACs ratio, latency ratio, speedup and efficiency of one variant against the baseline; with the
    latency ratio's 95% interval ``ci``, the three intervals too (``*_ci95``)."""
    mr = macs / base_macs
    out: dict[str, Any] = {
        "macs_ratio": mr,
        "latency_ratio": latency_ratio,
        "speedup": 1.0 / latency_ratio,
        "efficiency": efficiency(mr, latency_ratio),
    }
    if ci is not None:
        eff = stats.efficiency_ci(mr, ci)
        out["latency_ratio_ci95"] = [ci[0], ci[1]]
        out["speedup_ci95"] = list(stats.speedup_ci(ci))
        out["efficiency_ci95"] = list(eff) if eff is not None else None
    return out


def with_cis(result: dict) -> dict:
    """Fill in the 95% intervals of measurements that lack them (reports written before they existed)
    from their raw rounds; returns ``result``."""
    ms = result.get("measurements", [])
    base = {(m.get("backend"), m.get("batch")): m for m in ms if m.get("variant") == result.get("baseline")}
    for m in ms:
        b = base.get((m.get("backend"), m.get("batch")))
        if "latency_ratio_ci95" in m or b is None or not m.get("samples_ms"):
            continue
        ci = (1.0, 1.0) if m is b else stats.ratio_ci(m["samples_ms"], b["samples_ms"])
        m.update({k: v for k, v in ratios(m["macs"], b["macs"], m["latency_ratio"], ci).items() if k.endswith("_ci95")})
    return result


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
    partial = result.get("partial")
    if partial:
        lines += [
            f"**Partial report**: {partial['reason']}; measured {partial['measured']} of {partial['planned']} "
            f"backend/batch groups; not measured: {', '.join(partial['missing'] + partial['cut_short']) or 'none'}.",
            "",
        ]
    lines += _load_line(result)
    for s in result["skipped"]:
        lines.append(f"- skipped `{s['backend']}`: {s['reason']}")
    if result["skipped"]:
        lines.append("")
    for w in result.get("warnings", []):
        lines.append(f"- warning: {w}")
    if result.get("warnings"):
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
            stats.fmt_ci(m["latency_ratio"], m.get("latency_ratio_ci95")),
            f"{m['throughput']:.1f}",
            stats.fmt_ci(m["speedup"], m.get("speedup_ci95"), ".2f").replace(" [", "x [", 1)
            if m.get("speedup_ci95")
            else f"{m['speedup']:.2f}x",
            stats.fmt_ci(m["efficiency"], m.get("efficiency_ci95"), ".2f"),
            ", ".join(m.get("flags", [])) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Brackets: 95% confidence intervals (bootstrap over the interleaved rounds). Flags: `busy` = other "
        "processes used cores the bench needed; `wide-ci` = an interval wider than +-5% of its ratio."
    )
    return "\n".join(lines) + "\n"


def _load_line(result: dict) -> list[str]:
    """The load and governor before and after, and the outcome of ``until_stable``."""
    env = result["env"]
    if "load_before" not in env:
        return []
    before, after = env.get("load_before"), env.get("load_after")
    others = env.get("others_busy_before")
    line = (
        f"Load average (1/5/15 min) before {before or '-'}, after {after or '-'}; other processes busy on "
        f"{'-' if others is None else f'{others:.1f}'} cores before the run; CPU governor "
        f"{env.get('governor_before') or 'not exposed'} before, {env.get('governor_after') or 'not exposed'} after."
    )
    st = result.get("stability")
    if st:
        groups = st["groups"]
        ok = all(g["stable"] for g in groups)
        line += (
            f" Until stable (+-{st['target']:.0%}, at most {st['max_time']:g} s): "
            + ("every ratio reached it" if ok else "time was up before every ratio reached it")
            + " ("
            + ", ".join(f"{g['backend']} b{g['batch']} {g['rounds']} rounds" for g in groups)
            + ")."
        )
    return [line, ""]


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
        cis = [m.get("latency_ratio_ci95") or [m["latency_ratio"]] * 2 for m in ms]
        ax.errorbar(
            [m["macs_ratio"] for m in ms],
            [m["latency_ratio"] for m in ms],
            yerr=[
                [m["latency_ratio"] - c[0] for m, c in zip(ms, cis)],
                [c[1] - m["latency_ratio"] for m, c in zip(ms, cis)],
            ],
            fmt="none",
            ecolor=pts.get_facecolor()[0],
            capsize=3,
            lw=1,
        )
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
    ax.set_ylabel("latency ratio (variant / baseline, median; bars: 95% CI)")
    ax.set_xlim(0, 1.1)
    tops = [(m.get("latency_ratio_ci95") or [0, m["latency_ratio"]])[1] for m in result["measurements"]]
    ax.set_ylim(0, max([1.1] + [t * 1.05 for t in tops]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(
        f"FLOPs vs latency (baseline {result['baseline']})" + (" - PARTIAL" if result.get("partial") else ""),
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


#: the files ``write_report`` writes into its folder
REPORT_FILES = ("report.md", "report.json", "report.png")


def write_files(
    result: dict,
    folder,
    stem: str,
    markdown: Callable[[dict], str],
    draw: Callable[[dict, Path], None],
) -> dict[str, Path | None]:
    """The report trio of ``result`` in ``folder``, each file written atomically: ``<stem>.json``
    (``result`` itself, every raw sample), ``<stem>.md`` (``markdown(result)``) and ``<stem>.png``
    (``draw(result, path)``, only where matplotlib is installed: ``paths["png"]`` is then None)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    with atomic_file(out / f"{stem}.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    with atomic_file(out / f"{stem}.md") as tmp:
        Path(tmp).write_text(markdown(result))
    if matplotlib_available():
        draw(result, out / f"{stem}.png")
    else:
        paths["png"] = None
    return paths


def write_report(result: dict, out_dir) -> dict:
    """Write ``report.md``, ``report.json`` and ``report.png`` of a benchmark into ``out_dir``
    (``write_files``)."""
    return write_files(result, out_dir, "report", to_markdown, plot)
