"""Export-stage cost: export time and ONNX size for DeiT-B and ViT-L, dense and pruned (printed,
not asserted), plus a bar chart.

Each model is exported with a dynamic batch axis (profile 1:2:4) in fp32 at the default opset;
the time is split into graph export, clean-up, save and the ONNX Runtime parity check (batch 1,
2 and 4 on CPU). Pruned models come from ``vitcompress.prune`` with the data-free ``l1`` scorer at
-50 % MACs (granularities heads, qk, v, mlp), so no calibration data is needed; the weights are
random (the cost of export does not depend on them).

Run: ``python -m vitcompress.benchmarks.export_bench [--models deit_base_patch16_224,...]
[--json OUT] [--plot OUT.png] [--no-check]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import vitcompress
from vitcompress.counting import count
from vitcompress.exporters import export_onnx

MODELS = ("deit_base_patch16_224", "vit_large_patch16_224")


def _model(name: str, pruned: bool):
    torch.manual_seed(0)
    model = vitcompress.create_source_model(name)
    if not pruned:
        return model
    return vitcompress.prune(model, flops_reduction=0.5, importance="l1", granularity=("heads", "qk", "v", "mlp")).model


def measure(name: str, pruned: bool, check: bool, workdir: Path) -> dict:
    """Export one model; return times, node counts, size and parity."""
    model = _model(name, pruned)
    macs = count(model).macs
    out = workdir / f"{name}{'_pruned' if pruned else ''}.onnx"
    t0 = time.perf_counter()
    res = export_onnx(model, out, batch=(1, 2, 4), check=check, progress=True, force=True)
    total = time.perf_counter() - t0
    row = {
        "model": name,
        "pruned": pruned,
        "gmacs": macs / 1e9,
        "seconds": total,
        "timings": res.timings,
        "size_mb": res.size_bytes / 1e6,
        "nodes_before": res.nodes_before,
        "nodes_after": res.nodes_after,
        "parity_max_rel": res.parity.max_rel if res.parity else None,
        "external_data": res.external_data is not None,
    }
    out.unlink()
    if res.external_data:
        res.external_data.unlink()
    return row


def plot(rows: list[dict], path: str) -> None:
    """Export time (stacked by phase) and ONNX size per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model'].split('_patch')[0]}\n{'pruned' if r['pruned'] else 'dense'}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = [0.0] * len(rows)
    for phase in ("load", "export", "cleanup", "save", "parity"):
        vals = [r["timings"].get(phase, 0.0) for r in rows]
        a.bar(labels, vals, bottom=bottom, label=phase)
        bottom = [x + y for x, y in zip(bottom, vals)]
    a.set_ylabel("seconds (2 CPU cores)")
    a.set_title("export time by phase")
    a.legend()
    b.bar(labels, [r["size_mb"] for r in rows], color="gray")
    b.set_ylabel("MB")
    b.set_title("ONNX file size (fp32)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-check", action="store_true", help="skip the parity check")
    ap.add_argument("--json", help="write the rows as JSON")
    ap.add_argument("--plot", help="write a PNG chart")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            for pruned in (False, True):
                row = measure(name, pruned, not args.no_check, Path(tmp))
                rows.append(row)
                t = row["timings"]
                print(
                    f"{name:28s} {'pruned' if pruned else 'dense ':6s} {row['gmacs']:6.1f} GMACs  "
                    f"total {row['seconds']:6.1f} s (export {t.get('export', 0):5.1f}, clean-up "
                    f"{t.get('cleanup', 0):4.1f}, parity {t.get('parity', 0):5.1f})  {row['size_mb']:7.1f} MB  "
                    f"nodes {row['nodes_before']}->{row['nodes_after']}  "
                    f"parity rel {row['parity_max_rel'] if row['parity_max_rel'] is not None else float('nan'):.1e}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return rows


if __name__ == "__main__":
    main()
