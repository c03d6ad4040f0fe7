"""Token-reduction benchmark: ViT-L at the 6% per-layer rate (analytic, and timed on a GPU), DeiT-S on CPU.

    python -m vitcompress.benchmarks.tokens_bench                      # ViT-L MACs table (seconds, any machine)
    python -m vitcompress.benchmarks.tokens_bench --cpu --report DIR   # + DeiT-S topk-vpa 0.9/0.7/0.5@3,6,9 on ort-cpu
    python -m vitcompress.benchmarks.tokens_bench --gpu --report DIR   # + ViT-L dense / topk-vpa rate=0.06 / tome
                                                                       #   at matched MACs, fp16, torch-cuda, ort-cuda

``--batch`` (comma list) sets the batch sizes of the timed parts (default 8 on the CPU, 64 on the
GPU) and ``--mode`` (eager, compile, graph) the torch runners' mode (default eager).

The published reference for ViT-L/16 at 224 px with Top-K + VPA at a 6% per-layer pruning rate is
-50.44% FLOPs and -46.8% GPU latency (``docs/tokens.md`` explains the gap in the analytic count).
The CPU part checks the suite's target: FLOPs-to-latency efficiency >= 0.85 for each ``topk-vpa``
variant (reported, not asserted).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vitcompress.errors import VitCompressError
from vitcompress.families import BlockTokens, family_of
from vitcompress.models import create_source_model
from vitcompress.token_reduction import reduce_tokens
from vitcompress.tokens.amount import closest_amount, macs_reduction, with_amount
from vitcompress.tokens.counting import block_tokens
from vitcompress.tokens.schedule import parse_schedule

from . import suite
from .bench import BenchConfig, load_variant, run_bench
from .report import to_markdown, write_report

PAPER_FLOPS = -0.5044
PAPER_LATENCY = -0.468
VITL = "vit_large_patch16_224"
RATE = 0.06
CPU_VARIANTS = ["dense", "vpa90", "vpa70", "vpa50", "topk70", "tome-m70"]
EFFICIENCY_TARGET = 0.85


def _floor_counts(n: int, prefix: int, depth: int, rate: float, start: int) -> list[int]:
    """Tokens entering each block when every block from ``start`` keeps floor((1 - rate) n) tokens."""
    out, cur = [], n
    for i in range(depth):
        out.append(cur + prefix)
        if i >= start:
            cur = int((1 - rate) * cur)
    return out


def vitl_table() -> list[dict]:
    """Analytic MACs of ViT-L/16 with the 6% rate (and the readings around it) and tome at matched MACs."""
    with torch.device("meta"):
        model = create_source_model(VITL)
    fam = family_of(model)
    spec, info = fam.spec(model), fam.arch_info(model)
    dense = fam.macs(spec, info)
    rows = [{"variant": "dense", "rule": "-", "macs": dense, "reduction": 0.0, "last_tokens": info.num_patches}]
    for start in (0, 1):
        s = parse_schedule(f"rate={RATE}@{start}", "topk-vpa")
        red = macs_reduction(model, s)
        bt = block_tokens(spec, fam.token_layout(info), s)
        rows.append(
            {
                "variant": f"topk-vpa rate={RATE}@{start}",
                "rule": "ceil, + class-attention row",
                "macs": round(dense * (1 - red)),
                "reduction": red,
                "last_tokens": bt[-1].t_in - 1,
            }
        )
    for start in (0, 1):
        toks = _floor_counts(info.num_patches, info.num_prefix_tokens, spec.depth, RATE, start)
        m = fam.macs(spec, info, [BlockTokens(t, t) for t in toks])
        rows.append(
            {
                "variant": f"rate={RATE}@{start}, floor",
                "rule": "floor, products only",
                "macs": m,
                "reduction": 1 - m / dense,
                "last_tokens": toks[-1] - 1,
            }
        )
    vpa = parse_schedule(f"rate={RATE}@0", "topk-vpa")
    tome = parse_schedule("merge=1", "tome")
    r = closest_amount(model, tome, macs_reduction(model, vpa))
    tm = with_amount(tome, r)
    red = macs_reduction(model, tm)
    rows.append(
        {
            "variant": f"tome merge={int(r)}",
            "rule": "matched to rate=0.06@0",
            "macs": round(dense * (1 - red)),
            "reduction": red,
            "last_tokens": block_tokens(spec, fam.token_layout(info), tm)[-1].t_out - 1,
        }
    )
    return rows


def format_vitl(rows: list[dict]) -> str:
    out = [
        f"ViT-L/16, 224 px (196 patches, 24 blocks); paper: Top-K+VPA at a {RATE:.0%} rate, "
        f"{PAPER_FLOPS:.2%} FLOPs, {PAPER_LATENCY:.1%} GPU latency",
        "",
        "| variant | counting | GMACs/img | MACs change | patch tokens in the last block |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        change = f"{-r['reduction']:+.2%}" if r["reduction"] else "0"
        out.append(f"| {r['variant']} | {r['rule']} | {r['macs'] / 1e9:.2f} | {change} | {r['last_tokens']} |")
    return "\n".join(out)


def gpu_variants(max_batch: int):
    """ViT-L dense, topk-vpa rate=0.06@0 and tome at matched MACs, as bench ``Variant``s."""
    torch.manual_seed(0)
    source = create_source_model(VITL)
    vpa = reduce_tokens(source, f"rate={RATE}@0", method="topk-vpa").model
    tome_s = parse_schedule("merge=1", "tome")
    merges = closest_amount(source, tome_s, macs_reduction(source, parse_schedule(f"rate={RATE}@0", "topk-vpa")))
    tome = reduce_tokens(source, with_amount(tome_s, merges)).model
    return [
        load_variant(source, "vitl-dense", max_batch=max_batch),
        load_variant(vpa, f"vitl-vpa{int(RATE * 100)}", max_batch=max_batch),
        load_variant(tome, "vitl-tome-matched", max_batch=max_batch),
    ]


def _batches(text: str | None, default: int) -> list[int]:
    try:
        return [int(b) for b in text.split(",")] if text else [default]
    except ValueError:
        raise VitCompressError(f"--batch must be comma-separated integers, got {text!r}; pass e.g. 1,64") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="Also time the DeiT-S token variants on ort-cpu.")
    p.add_argument("--gpu", action="store_true", help="Also time ViT-L dense / topk-vpa / tome on the GPU (fp16).")
    p.add_argument("--report", default="runs/tokens-bench", help="Report directory for the timed parts.")
    p.add_argument("--batch", help="Batch sizes of the timed parts, comma-separated (default: 8 CPU, 64 GPU).")
    p.add_argument("--mode", default="eager", help="torch runners: eager, compile or graph (CUDA-graph replay).")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args(argv)

    print(format_vitl(vitl_table()))
    try:
        if a.cpu:
            out = Path(a.report) / "deit_s_cpu"
            batches = _batches(a.batch, 8)
            rc = suite.main(
                [
                    "--variants",
                    ",".join(CPU_VARIANTS),
                    "--backend",
                    "ort-cpu",
                    "--batch",
                    ",".join(map(str, batches)),
                    "--mode",
                    a.mode,
                    "--iters",
                    str(a.iters),
                    "--rounds",
                    str(a.rounds),
                    "--report",
                    str(out),
                ]
            )
            if rc:
                return rc
            rep = json.loads((out / "report.json").read_text())
            print(f"\ntarget: efficiency >= {EFFICIENCY_TARGET} for topk-vpa at keep 0.9/0.7/0.5@3,6,9 (ort-cpu)")
            for row in rep["measurements"]:
                if row["variant"].startswith("vpa"):
                    eff = row.get("efficiency")
                    ok = eff is not None and eff >= EFFICIENCY_TARGET
                    print(
                        f"  {row['variant']} batch {row['batch']}: MACs ratio {row['macs_ratio']:.3f}, latency ratio "
                        f"{row['latency_ratio']:.3f}, efficiency {eff:.2f} {'met' if ok else 'MISSED'}"
                    )
        if a.gpu:
            batches = _batches(a.batch, 64)
            cfg = BenchConfig(
                backends=["torch-cuda", "ort-cuda"],
                batches=batches,
                precision="fp16",
                mode=a.mode,
                iters=a.iters,
                rounds=a.rounds,
            ).validate()
            result = run_bench(gpu_variants(max(batches)), cfg, progress=True)
            result["suite"] = {
                "source": VITL,
                "command": " ".join(sys.argv),
                "paper_flops": PAPER_FLOPS,
                "paper_latency": PAPER_LATENCY,
            }
            paths = write_report(result, Path(a.report) / "vitl_gpu")
            print(to_markdown(result))
            print(f"paper: {PAPER_FLOPS:.2%} FLOPs, {PAPER_LATENCY:.1%} latency; report: {paths['md']}")
    except VitCompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
