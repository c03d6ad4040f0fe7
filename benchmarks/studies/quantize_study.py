"""Quantization study: prune, then quantize (INT8 Q/DQ), measured on ONNX Runtime CPU (docs/quantize.md).

``deit``: DeiT-S (random weights: latency does not depend on weight values, and output errors
on random weights say nothing about accuracy) on ``ort-cpu`` at ``--batch`` (8), interleaved
rounds with the bench runners:

* dense fp32 (the baseline), dense INT8 and 46.2%-MACs-pruned (``l1``, widths multiples of 8)
  fp32 and INT8, INT8 from ``vitcompress quantize`` (minmax, ``--calib-images`` digits images);
* the same two INT8 models from ONNX Runtime's own tool (``onnxruntime.quantization.quantize_static``:
  QDQ format, per-channel INT8 weights, INT8 activations, MatMul/Gemm/Conv, minmax on the same
  images), the comparison behind the choice of quantizer in docs/quantize.md;
* per INT8 graph: the largest output error relative to its fp32 model on 16 random images
  (``max_rel``), and whether the TensorRT lint (``exporters.trt_check``) passes it.

``mnist``: the mnist10k reference teacher (``make teacher``; ``--teacher`` its artifact folder):
dense fp32, dense INT8, 46.2%-pruned fp32 (after ``--epochs`` of distillation from the teacher),
its INT8 post-training quantization and the same after one epoch of quantization-aware
distillation (``--qat-lr``, no warm-up); mnist10k val top-1 (INT8 rows: mean and spread over ``--seeds`` calibration seeds)
and ``ort-cpu`` latency ratios against dense fp32 (interleaved rounds; their per-round ratios and
95% interval kept as the dispersion, and a PNG of both).

Run (one process; ``--threads`` is what ONNX Runtime uses)::

    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.quantize_study deit --threads 2 --out runs/quantize
    OMP_NUM_THREADS=1 python -m vitcompress.benchmarks.studies.quantize_study mnist --teacher runs/teacher --out runs/quantize
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import vitcompress
from vitcompress.benchmarks.bench import BenchConfig, load_variant, run_bench
from vitcompress.data import calibration_loader
from vitcompress.exporters import check_tensorrt, export_onnx
from vitcompress.exporters.parity import ort_session
from vitcompress.io import atomic_file
from vitcompress.models import create_source_model


def _calib_arrays(model, n: int, batch: int) -> list[np.ndarray]:
    return [b[0].numpy() for b in calibration_loader("digits", model, n, batch, 0)]


def ort_tool_int8(fp32_onnx: Path, out: Path, arrays: list[np.ndarray]) -> Path:
    """ONNX Runtime's static INT8 Q/DQ quantization of an fp32 graph (per-channel weights)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = ort_session(str(fp32_onnx)).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: a} for a in arrays])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(fp32_onnx),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def max_rel(onnx_path: Path, model, img: int, seed: int = 0) -> float:
    """Largest |onnx - fp32 model| over the largest |fp32 model| on 16 random images."""
    x = torch.randn(16, 3, img, img, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model(x).numpy()
    sess = ort_session(str(onnx_path))
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def deit(args) -> dict:
    out = Path(args.out)
    work = out / "deit"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    dense = create_source_model("deit_small_patch16_224")
    pruned = vitcompress.prune(dense, flops_reduction=args.macs_reduction, importance="l1", calib_images=8).model
    models = {"dense": dense, "p46": pruned}
    variants, rows = [], {}
    for key, fp32 in models.items():
        q = vitcompress.quantize(fp32, calib_images=args.calib_images, batch_size=8).model
        v32, v8 = (
            load_variant(fp32, name=f"{key}-fp32", workdir=work),
            load_variant(q, name=f"{key}-int8", workdir=work),
        )
        f32 = export_onnx(fp32, work / f"{key}-fp32.onnx", batch=(1, args.batch, 32), check=False, force=True).path
        v32._files[("onnx", "fp32")] = f32
        variants += [v32, v8]
        arrays = _calib_arrays(fp32, args.calib_images, 8)
        vt = load_variant(fp32, name=f"{key}-int8-ort-tool", workdir=work)
        vt._files[("onnx", "fp32")] = ort_tool_int8(f32, work / f"{key}-int8-ort-tool.onnx", arrays)
        variants.append(vt)
        for v, ref in ((v8, fp32), (vt, fp32)):
            path = v.onnx()
            lint = check_tensorrt(path)
            rows[v.name] = {
                "max_rel_vs_fp32": max_rel(path, ref, 224),
                "trt_lint_errors": len(lint.errors),
                "trt_lint_first": lint.errors[0].format() if lint.errors else None,
                "qdq_pairs": sum(1 for _ in _nodes(path, "QuantizeLinear")),
            }
    cfg = BenchConfig(
        backends=["ort-cpu"], batches=[args.batch], warmup=3, iters=args.iters, rounds=args.rounds, threads=args.threads
    )
    result = run_bench(variants, cfg, baseline="dense-fp32")
    for m in result["measurements"]:
        rows.setdefault(m["variant"], {}).update(
            {
                "macs_ratio": m["macs_ratio"],
                "latency_ratio": m["latency_ratio"],
                "median_ms": m["median_ms"],
                "round_ratios": _round_ratios(m["samples_ms"], result, m["backend"], m["batch"]),
            }
        )
    return {
        "part": "deit",
        "rows": rows,
        "env": result["env"],
        "config": result["config"],
        "seconds": time.perf_counter() - t0,
    }


def _nodes(path: Path, op: str):
    import onnx

    return (n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == op)


def _round_ratios(samples: list, result: dict, backend: str, batch: int) -> list[float]:
    """Per-round ratio of median latencies against the baseline (the dispersion of the ratio)."""
    base = next(
        m
        for m in result["measurements"]
        if m["variant"] == result["baseline"] and (m["backend"], m["batch"]) == (backend, batch)
    )
    return [statistics.median(a) / statistics.median(b) for a, b in zip(samples, base["samples_ms"])]


def mnist(args) -> dict:
    from vitcompress.distill import DistillConfig
    from vitcompress.evaluate import evaluate_data
    from vitcompress.training import TrainConfig, fit

    if not args.teacher:
        raise SystemExit("mnist needs --teacher (the artifact written by `make teacher`)")
    out = Path(args.out) / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    teacher = vitcompress.load(args.teacher)

    def top1(model) -> float:
        return float(evaluate_data(model, "mnist10k", split="val").top1)

    def distil(model, epochs: int, folder: str, **train):
        cfg = TrainConfig(data="mnist10k", epochs=epochs, progress=False, **train)
        fit(model, cfg, out / folder, teacher=teacher, distill=DistillConfig())
        return vitcompress.load(out / folder)

    pruned = vitcompress.prune(teacher, flops_reduction=args.macs_reduction, data="mnist10k").model
    pruned = distil(pruned, args.epochs, "p46-fp32")
    rows: dict = {"dense-fp32": {"top1": [top1(teacher)]}, "p46-fp32": {"top1": [top1(pruned)]}}
    for key, fp32 in (("dense", teacher), ("p46", pruned)):
        rows[f"{key}-int8"] = {"top1": []}
        for seed in range(args.seeds):
            q = vitcompress.quantize(fp32, data="mnist10k", calib_images=args.calib_images, seed=seed).model
            rows[f"{key}-int8"]["top1"].append(top1(q))
            if key == "p46":
                qat = distil(q, 1, f"p46-int8-qat-s{seed}", lr=args.qat_lr, warmup_epochs=0.0)
                rows.setdefault("p46-int8-qat", {"top1": []})["top1"].append(top1(qat))
    variants = [load_variant(teacher, name="dense-fp32")]
    variants.append(load_variant(vitcompress.quantize(teacher, data="mnist10k").model, name="dense-int8"))
    variants.append(load_variant(pruned, name="p46-fp32"))
    variants.append(load_variant(vitcompress.quantize(pruned, data="mnist10k").model, name="p46-int8"))
    cfg = BenchConfig(
        backends=["ort-cpu"], batches=[args.batch], warmup=3, iters=args.iters, rounds=args.rounds, threads=args.threads
    )
    result = run_bench(variants, cfg, baseline="dense-fp32")
    for m in result["measurements"]:
        rows[m["variant"]].update(
            {
                "latency_ratio": m["latency_ratio"],
                "latency_ratio_ci95": m.get("latency_ratio_ci95"),
                "macs_ratio": m["macs_ratio"],
                "median_ms": m["median_ms"],
                "round_ratios": _round_ratios(m["samples_ms"], result, m["backend"], m["batch"]),
                "flags": m.get("flags", []),
            }
        )
    return {"part": "mnist", "rows": rows, "env": result["env"], "config": result["config"]}


def plot_mnist(res: dict, path: Path) -> None:
    """Top-1 per calibration seed and the latency ratio's per-round range, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["rows"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, n in enumerate(names):
        top = [100 * t for t in res["rows"][n]["top1"]]
        a.plot([i] * len(top), top, "o", alpha=0.7)
        a.plot([i - 0.2, i + 0.2], [statistics.mean(top)] * 2, "k-")
        rr = res["rows"][n].get("round_ratios")
        if rr:
            b.plot([i] * len(rr), rr, "o", alpha=0.5)
            b.plot([i - 0.2, i + 0.2], [res["rows"][n]["latency_ratio"]] * 2, "k-")
    for ax, label in ((a, "val top-1 (%), per calibration seed"), (b, "latency ratio vs dense fp32, per round")):
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("deit", "mnist"))
    ap.add_argument("--out", default="runs/quantize")
    ap.add_argument("--teacher", help="mnist: the reference teacher's artifact folder (make teacher).")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--macs-reduction", type=float, default=0.462)
    ap.add_argument("--epochs", type=int, default=2, help="mnist: distillation epochs of the pruned fp32 model.")
    ap.add_argument("--seeds", type=int, default=3, help="mnist: calibration seeds.")
    ap.add_argument(
        "--qat-lr", type=float, default=1e-4, help="mnist: peak learning rate of the QAT epoch (no warm-up)."
    )
    args = ap.parse_args(argv)
    res = deit(args) if args.part == "deit" else mnist(args)
    path = Path(args.out) / f"quantize_study_{args.part}.json"
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1) + "\n")
    if args.part == "mnist":
        plot_mnist(res, path.with_suffix(".png"))
    for name, row in res["rows"].items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "round_ratios"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
