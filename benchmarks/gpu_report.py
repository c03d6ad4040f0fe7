"""The GPU latency tables' report: rows, targets, Markdown, PNG (``benchmarks/gpu_tables.py`` measures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vitcompress.errors import VitCompressError
from vitcompress.io import atomic_file

from . import stats
from .report import matplotlib_available, with_cis, write_files

PAPER = {"flops": -0.5044, "latency": -0.468}
EFFICIENCY_TARGET = 0.90
TARGET_MIN_BATCH = 64


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def rows(result: dict) -> list[dict]:
    """One row per measurement of a ``gpu_tables.json`` (model, mode and the bench fields)."""
    out = []
    for group in result["groups"]:
        for m in with_cis(group["bench"])["measurements"]:
            out.append({"model": group["model"], "mode": group["mode"], **m})
    return out


def targets(result: dict) -> list[dict]:
    """The report's targets (module doc), one entry per (model, batch) that was measured."""
    out = []
    for r in rows(result):
        if r["variant"] == "p46" and r["mode"] == "graph" and r["batch"] >= TARGET_MIN_BATCH:
            eff = r["efficiency"]
            out.append(
                {
                    "target": f"p46 efficiency >= {EFFICIENCY_TARGET} (CUDA graphs, batch >= {TARGET_MIN_BATCH})",
                    "model": r["model"],
                    "variant": r["variant"],
                    "mode": r["mode"],
                    "batch": r["batch"],
                    "value": eff,
                    "met": eff is not None and eff >= EFFICIENCY_TARGET,
                }
            )
        if r["variant"] == "vpa-r6" and r["mode"] == "graph" and r["batch"] >= TARGET_MIN_BATCH:
            cut = 1 - r["latency_ratio"]
            out.append(
                {
                    "target": f"vpa-r6 latency cut >= {-PAPER['latency']:.1%} (published, CUDA graphs)",
                    "model": r["model"],
                    "variant": r["variant"],
                    "mode": r["mode"],
                    "batch": r["batch"],
                    "value": cut,
                    "met": cut >= -PAPER["latency"],
                }
            )
    return out


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(result: dict) -> str:
    """The tables: environment, plan, one table per model and mode, targets, aligned vs unaligned,
    what CUDA graphs recover at batch 1, skipped groups."""
    env = result["env"]
    gpu = env.get("gpu") or {}
    timing = (
        "CUDA events on each runner's own stream (launch overhead included, host copies excluded)"
        if gpu
        else "monotonic clock around each pass"
    )
    lines = [
        f"# Latency tables: {result['device_name']}",
        "",
        f"Command: `{result['command']}`  ",
        f"Device: {result['device_name']} (compute capability {gpu.get('compute_capability', '-')}, "
        f"CUDA {gpu.get('cuda', '-')}); torch {env['versions'].get('torch')}, timm {env['versions'].get('timm')}; "
        f"CPU {env['cpu']}.  ",
        f"Precision {result['scale']['precision']}; {result['scale']['rounds']} interleaved rounds x "
        f"{result['scale']['iters']} timed passes per variant after {result['scale']['warmup']} warm-up passes; "
        f"{timing}.  ",
        f"Plan: {result['plan']['cells']} cells (model x variant x mode x batch), estimated "
        f"{result['plan']['estimate_s']:.0f} s; built in {result['build_s']:.0f} s, whole run {result['seconds']:.0f} s.",
        "",
    ]
    by_group: dict = {}
    for r in rows(result):
        by_group.setdefault((r["model"], r["mode"]), []).append(r)
    for (model, mode), rs in by_group.items():
        lines += [
            f"## {model}, {mode}",
            "",
            "| variant | batch | GMACs/img | MACs ratio | median (ms) | p90 (ms) | latency ratio [95% CI] | images/s "
            "| efficiency [95% CI] | flags |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in sorted(rs, key=lambda r: (r["batch"], r["macs_ratio"] < 1, r["variant"])):
            lines.append(
                f"| {r['variant']} | {r['batch']} | {r['macs'] / 1e9:.3f} | {r['macs_ratio']:.3f} | "
                f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
                f"{stats.fmt_ci(r['latency_ratio'], r.get('latency_ratio_ci95'))} | {r['throughput']:.0f} | "
                f"{stats.fmt_ci(r['efficiency'], r.get('efficiency_ci95'), '.2f')} | {', '.join(r.get('flags', [])) or '-'} |"
            )
        lines.append("")
    warnings = [w for g in result["groups"] for w in g["bench"].get("warnings", [])]
    if warnings:
        lines += ["## Warnings", "", *[f"- warning: {w}" for w in warnings], ""]
    lines += ["## Targets", ""]
    for t in result["targets"]:
        lines.append(
            f"- {t['target']}: {t['model']} batch {t['batch']}: {_f(t['value'], '.3f')} "
            f"{'met' if t['met'] else 'MISSED'}"
        )
    if not result["targets"]:
        lines.append(f"- no target applies to what was measured (they need CUDA graphs at batch >= {TARGET_MIN_BATCH})")
    index = {(r["model"], r["mode"], r["batch"], r["variant"]): r for r in rows(result)}
    aligned = [
        f"- {model}, {mode}, batch {batch}: aligned {r['latency_ratio']:.3f}, unaligned "
        f"{index[(model, mode, batch, 'p46-r1')]['latency_ratio']:.3f}"
        for (model, mode, batch, variant), r in index.items()
        if variant == "p46" and (model, mode, batch, "p46-r1") in index
    ]
    if aligned:
        lines += ["", "## Aligned vs unaligned widths (p46 vs p46-r1, latency ratio)", "", *aligned]
    graphs = [
        f"- {model} {variant}: eager {r['median_ms']:.3f}, graph {index[(model, 'graph', 1, variant)]['median_ms']:.3f} "
        f"({index[(model, 'graph', 1, variant)]['median_ms'] / r['median_ms']:.2f}x)"
        for (model, mode, batch, variant), r in index.items()
        if mode == "eager" and batch == 1 and (model, "graph", 1, variant) in index
    ]
    if graphs:
        lines += ["", "## Batch 1: CUDA-graph replay vs eager (median ms)", "", *graphs]
    if result["skipped"]:
        lines += ["", "## Not measured", ""] + [f"- {s}" for s in result["skipped"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Efficiency per variant (bars per batch), one panel per model and mode, with the 0.90 target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in rows(result):
        if r["efficiency"] is not None:
            groups.setdefault((r["model"], r["mode"]), []).append(r)
    keys = sorted(groups)
    fig, axes = plt.subplots(max(1, len(keys)), 1, figsize=(7, 2.6 * max(1, len(keys))), squeeze=False)
    if not keys:
        axes[0, 0].text(0.5, 0.5, "nothing measured", ha="center", va="center")
    for ax, key in zip(axes[:, 0], keys):
        rs = groups.get(key, [])
        variants = sorted({r["variant"] for r in rs})
        batches = sorted({r["batch"] for r in rs})
        width = 0.8 / max(1, len(batches))
        for i, b in enumerate(batches):
            by = {r["variant"]: r for r in rs if r["batch"] == b}
            vals = [by[v]["efficiency"] if v in by else 0 for v in variants]
            cis = [(by[v].get("efficiency_ci95") if v in by else None) or [vals[k]] * 2 for k, v in enumerate(variants)]
            ax.bar(
                [x + i * width for x in range(len(variants))],
                vals,
                width,
                yerr=[[max(0.0, e - c[0]) for e, c in zip(vals, cis)], [max(0.0, c[1] - e) for e, c in zip(vals, cis)]],
                capsize=2,
                label=f"b{b}",
            )
        ax.axhline(EFFICIENCY_TARGET, color="k", ls="--", lw=1)
        ax.set_xticks([x + width * (len(batches) - 1) / 2 for x in range(len(variants))], variants, fontsize=8)
        ax.set_ylabel("efficiency")
        ax.set_title(f"{key[0]}, {key[1]}", fontsize=9)
        ax.legend(fontsize=7, ncol=len(batches))
    fig.suptitle(f"latency reduction / MACs reduction (bars: 95% CI): {result['device_name']}", fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write(result: dict, folder: Path) -> dict:
    """``gpu_tables.json``, ``.md`` and ``.png`` (``report.write_files``)."""
    return write_files(result, folder, "gpu_tables", to_markdown, plot)


def replot(folder: str | Path) -> Path:
    """Draw ``gpu_tables.png`` from the ``gpu_tables.json`` in ``folder``."""
    folder = Path(folder)
    src = folder / "gpu_tables.json"
    if not src.is_file():
        raise VitCompressError(f"{str(src)!r} does not exist; pass the folder a gpu_tables run wrote")
    if not matplotlib_available():
        raise VitCompressError("replotting needs matplotlib; run it where matplotlib is installed", params=[])
    plot(json.loads(src.read_text()), folder / "gpu_tables.png")
    return folder / "gpu_tables.png"
