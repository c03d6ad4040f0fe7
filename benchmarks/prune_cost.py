"""Cost of pruning: wall time, peak resident memory and where the time goes, per scorer and method.

Every run is a fresh child process (random weights), so its peak resident memory (``ru_maxrss`` of
that child, read with ``os.wait4``) is its own. Per model it runs:

- ``floor``: one plain forward and backward pass (all parameters trainable, cross-entropy on the
  model's own predictions) over the same calibration images at the same batch size: the least a
  gradient scorer can cost;
- ``prune``: ``vitcompress.prune`` with each ``--scorers`` (one shot) and each ``--methods``
  (scored by the method itself), saving the artifact to a temporary folder, with the seconds of
  each step (load, count, score, select, slice, save; ``method`` for a method).

Methods train for ``--method-steps`` steps (their default is 100; their cost per step is the same
forward and backward pass, so it scales with the steps).

Run (DeiT-S and DeiT-B, 64 images; about 15 minutes on 2 busy cores):
``python -m vitcompress.benchmarks.prune_cost --models deit_small_patch16_224,deit_base_patch16_224``
Large models, on a quiet machine with the memory for them (estimated with the default memory
budget, see docs/pruning.md: ViT-L about 4.2 GiB, ViT-g/14 about 12 GiB with ``taylor-abs``):
``python -m vitcompress.benchmarks.prune_cost --models vit_large_patch16_224 --method-steps 2``
``python -m vitcompress.benchmarks.prune_cost --models vit_giant_patch14_224 --scorers l1,taylor-abs --methods ''``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitcompress.io import atomic_file

SCORERS = ("l1", "taylor-abs", "taylor-act", "fisher")
METHODS = ("ihp", "gohsp", "amap")
REDUCTION = 0.462


def _method_options(method: str, steps: int) -> dict:
    if method == "gohsp":
        return {"rounds": 1, "steps_per_round": steps}
    return {"steps": steps}


def _floor(model_name: str, calib: int, batch: int) -> dict:
    import torch.nn.functional as F

    import vitcompress
    from vitcompress.data import calibration_loader
    from vitcompress.logits import logits_of

    torch.manual_seed(0)
    model = vitcompress.create_source_model(model_name).eval()
    loader = calibration_loader("digits", model, calib, batch, 0)
    t0 = time.perf_counter()
    for x, _ in loader:
        logits = logits_of(model(x))
        F.cross_entropy(logits, logits.detach().argmax(-1)).backward()
    return {"seconds": time.perf_counter() - t0}


def _prune(model_name: str, scorer: str, method: str, args) -> dict:
    import vitcompress

    torch.manual_seed(0)
    model = vitcompress.create_source_model(model_name)
    opts = {} if method == "oneshot" else _method_options(method, args.method_steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = vitcompress.prune(
            model,
            flops_reduction=REDUCTION,
            importance=scorer,
            method=method,
            method_options=opts or None,
            data="digits",
            calib_images=args.calib_images,
            batch_size=args.batch_size,
            max_memory=args.max_memory,
            output=Path(tmp) / "pruned",
        )
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "phases": res.seconds, "achieved": res.achieved}


def _run_child(argv: list[str]) -> dict:
    """Run one child; its result and its own peak RSS (from ``wait4``)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitcompress.benchmarks.prune_cost", "--child-out", out.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            print(err.read().decode()[-2000:], file=sys.stderr)
            return {"error": f"exit code {proc.returncode}", "peak_rss_gib": usage.ru_maxrss / 2**20}
        result = json.loads(Path(out.name).read_text())
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # kilobytes on Linux
    return result


def _row(r: dict, floor: float | None) -> str:
    if "error" in r:
        return (
            f"| {r['model']} | {r['scorer']} | {r['method']} | failed: {r['error']} | | {r['peak_rss_gib']:.2f} GiB | |"
        )
    ph = ", ".join(f"{k} {v:.1f}" for k, v in r.get("phases", {}).items())
    ratio = f"{r['seconds'] / floor:.2f}x" if floor and r["scorer"] != "-" else ""
    return (
        f"| {r['model']} | {r['scorer']} | {r['method']} | {r['seconds']:.1f} s | {ratio} | "
        f"{r['peak_rss_gib']:.2f} GiB | {ph} |"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit_small_patch16_224,deit_base_patch16_224")
    ap.add_argument("--scorers", default=",".join(SCORERS), help="one-shot scorers ('' for none)")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods ('' for none), scored by the method")
    ap.add_argument("--method-steps", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-memory", type=float, default=None, help="GiB (default: the prune default)")
    ap.add_argument("--no-floor", action="store_true", help="skip the forward+backward floor")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # task model scorer/method
    args = ap.parse_args(argv)
    if args.child:
        task, model, what = args.child
        if task == "floor":
            out = _floor(model, args.calib_images, args.batch_size)
        elif task == "oneshot":
            out = _prune(model, what, "oneshot", args)
        else:
            out = _prune(model, "taylor-abs", what, args)
        Path(args.child_out).write_text(json.dumps(out))
        return
    common = ["--calib-images", str(args.calib_images), "--batch-size", str(args.batch_size)]
    common += ["--method-steps", str(args.method_steps)]
    if args.max_memory is not None:
        common += ["--max-memory", str(args.max_memory)]
    print(f"threads: {torch.get_num_threads()}  torch {torch.__version__}  -{REDUCTION:.1%} MACs")
    print("| model | scorer | method | wall time | / floor | peak RSS | seconds by stage |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- |")
    results = []
    for model in filter(None, args.models.split(",")):
        runs = [] if args.no_floor else [("floor", "-", "-")]
        runs += [("oneshot", s, "oneshot") for s in filter(None, args.scorers.split(","))]
        runs += [("method", "-", m) for m in filter(None, args.methods.split(","))]
        floor = None
        for task, scorer, method in runs:
            what = method if task == "method" else scorer
            r = _run_child(["--child", task, model, what, *common])
            r.update(model=model, scorer=scorer if task != "floor" else "(forward+backward)", method=method)
            if task == "floor" and "error" not in r:
                floor = r["seconds"]
            results.append(r)
            print(_row(r, floor), flush=True)
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
