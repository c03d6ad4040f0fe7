"""ONNX export: parity in ONNX Runtime for dense, every kind of structural pruning, distilled DeiT,
fp16 and token reduction, with dynamic batch and image size; metadata; clean-up."""

from __future__ import annotations

import copy
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny

from vitcompress.exporters import export_onnx, parse_profile, read_onnx_metadata
from vitcompress.exporters.parity import ort_session
from vitcompress.families import identity_plan, spec_from_model
from vitcompress.slicers import slice_model

pytestmark = pytest.mark.export  # ONNX export: `make test-slow`

BATCH = (1, 3, 8)
IMG = (16, 32, 48)


def _pruned(kind: str):
    model = tiny("vit")
    plan = identity_plan(model)
    for lp in plan.layers.values():
        if kind == "heads":
            lp.heads, lp.qk, lp.v = [0, 2], [lp.qk[0], lp.qk[2]], [lp.v[0], lp.v[2]]
        elif kind == "qkv":  # odd widths: 5 of 16 q/k dims, 7 of 16 v dims per head
            lp.qk = [[1, 3, 4, 9, 15] for _ in lp.heads]
            lp.v = [[0, 2, 5, 6, 8, 11, 13] for _ in lp.heads]
        elif kind == "mlp":
            lp.mlp = list(range(0, 256, 7))  # 37 neurons
    if kind == "depth":
        plan.blocks = [0, 2]
    if kind == "embed":
        plan.embed = [c for c in range(64) if c % 3]  # 42 channels
    return slice_model(model, plan)


VARIANTS = {
    "dense": lambda: tiny("vit"),
    "heads": lambda: _pruned("heads"),
    "qkv-odd": lambda: _pruned("qkv"),
    "mlp": lambda: _pruned("mlp"),
    "depth": lambda: _pruned("depth"),
    "embed": lambda: _pruned("embed"),
    "distilled": lambda: tiny("deit_distilled"),
}


def _independent_check(path, model, batch=5, precision="fp32", size=32):
    """Our own ORT run at a batch size the export never saw, against the untouched model."""
    sess = ort_session(str(path))
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(123))
    if precision == "fp16":
        x = x.half()
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0].astype(np.float32)
    with torch.inference_mode():
        ref = model(x.float()).numpy()
    return np.abs(out - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pruned_variants_match_at_three_batches_and_two_sizes(variant, tmp_path):
    model = VARIANTS[variant]()
    before = copy.deepcopy(model.state_dict())
    res = export_onnx(model, tmp_path / "m.onnx", batch=BATCH, dynamic_size=True, img_size=IMG)
    assert res.path.is_file() and res.parity.ok
    assert {c.batch for c in res.parity.cases} == set(BATCH)
    assert {c.img_size for c in res.parity.cases} == {32, 16}
    assert res.parity.max_rel < 1e-4
    assert 0 < res.nodes_after <= res.nodes_before
    # dynamic axes are symbolic and named
    proto = onnx.load(str(res.path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the artifact's spec and MACs are in the metadata
    md = read_onnx_metadata(res.path)
    assert md["spec"] == spec_from_model(model).to_dict()
    assert md["macs"] > 0 and md["tokens"] is None and md["export"]["dynamic_size"] is True
    # the user's model is untouched, and the file matches it where the export never looked
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _independent_check(res.path, model) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_static_size_fp16_export(tmp_path):
    model = _pruned("qkv")
    res = export_onnx(model, tmp_path / "h.onnx", batch=BATCH, precision="fp16")
    proto = onnx.load(str(res.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    assert res.parity.ok and res.parity.tolerance == 1e-2
    assert {c.batch for c in res.parity.cases} == set(BATCH)
    assert res.parity.max_rel > 1e-6  # really ran in half precision
    assert _independent_check(res.path, model, precision="fp16") < 1e-2
    assert read_onnx_metadata(res.path)["export"]["precision"] == "fp16"


def test_dynamic_size_fp16_export(tmp_path):
    from vitcompress.artifact import meta_of
    from vitcompress.exporters.source import with_dynamic_size as _with_dynamic_size

    model = _pruned("qkv")
    res = export_onnx(model, tmp_path / "hd.onnx", batch=BATCH, dynamic_size=True, img_size=IMG, precision="fp16")
    proto = onnx.load(str(res.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    # parity in fp16 at three batch sizes and two image sizes
    assert res.parity.ok and res.parity.tolerance == 1e-2
    assert {(c.batch, c.img_size) for c in res.parity.cases} == {(1, 32), (3, 32), (8, 32), (1, 16)}
    assert res.parity.max_rel > 1e-6  # really ran in half precision
    # the resampled position embeddings in fp16, at a size the export never saw (40 px: 25 patches)
    dyn = _with_dynamic_size(model, meta_of(copy.deepcopy(model)))
    assert _independent_check(res.path, dyn, precision="fp16", size=40) < 1e-2
    md = read_onnx_metadata(res.path)["export"]
    assert (md["precision"], md["dynamic_size"], md["img_size"]) == ("fp16", True, {"min": 16, "opt": 32, "max": 48})


def test_single_size_batch_profile_still_checks_three_batch_sizes(tmp_path):
    from vitcompress.exporters.profiles import parity_batches

    # the profile's sizes, padded with the smallest other sizes where MIN, OPT and MAX coincide
    assert parity_batches(parse_profile("8")) == [1, 2, 8]
    assert parity_batches(parse_profile("2:2:2")) == [1, 2, 3]
    assert parity_batches(parse_profile("1:1:4")) == [1, 2, 4]
    assert parity_batches(parse_profile("1:8:32")) == [1, 8, 16]  # MAX capped at 16 on CPU
    assert parity_batches(parse_profile("32:32:32")) == [1, 2, 32]
    # a TensorRT engine accepts only its profile: padded from inside it, where there is room
    assert parity_batches(parse_profile("1:1:8"), within=True) == [1, 2, 8]
    assert parity_batches(parse_profile("2:2:3"), within=True) == [2, 3]
    assert parity_batches(parse_profile("8"), within=True) == [8]
    res = export_onnx(tiny("vit"), tmp_path / "b.onnx", batch=8)
    assert res.parity.ok and [c.batch for c in res.parity.cases] == [1, 2, 8]
    assert res.batch.as_tuple() == (8, 8, 8)


def _locations(path):
    """The external-data files an ONNX file refers to."""
    proto = onnx.load(str(path), load_external_data=False)
    return {
        e.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


def _ort_out(path, x):
    sess = ort_session(str(path))
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_external_data_pair_is_replaced_consistently(tmp_path, monkeypatch):
    old_model, new_model = tiny("vit", seed=0), tiny("vit", seed=1)  # same shapes, other weights
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        old_ref, new_ref = old_model(x).numpy(), new_model(x).numpy()
    assert np.abs(old_ref - new_ref).max() > 1e-2
    out_dir = tmp_path / "out"
    out = out_dir / "e.onnx"
    first = export_onnx(old_model, out, batch=BATCH, external_data=True, check=False)
    assert np.abs(_ort_out(out, x) - old_ref).max() < 1e-4

    # a crash right before the .onnx rename of a second export: what the folder holds at that moment
    real_replace, snap = os.replace, tmp_path / "snap"

    def crash_before_onnx_rename(src, dst):
        if Path(dst) == out:
            snap.mkdir()
            for f in out_dir.iterdir():
                if f.is_file() and not f.name.endswith(".lock"):  # the export's own lock is held meanwhile
                    shutil.copy2(f, snap / f.name)
            raise RuntimeError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_before_onnx_rename)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_onnx(new_model, out, batch=BATCH, external_data=True, check=False, force=True)
    monkeypatch.setattr(os, "replace", real_replace)
    # the new side file was already in place under its own name, but the old .onnx still reads its own
    snapped = sorted(f.name for f in snap.iterdir())
    assert len(snapped) == 3 and first.external_data.name in snapped
    assert np.abs(_ort_out(snap / "e.onnx", x) - old_ref).max() < 1e-4
    # after the (interrupted) export: the old pair as it was, the orphan side file removed
    assert sorted(f.name for f in out_dir.iterdir()) == sorted(["e.onnx", first.external_data.name])
    assert np.abs(_ort_out(out, x) - old_ref).max() < 1e-4

    # a complete second export: the new pair under a new side-file name, the old side file deleted
    second = export_onnx(new_model, out, batch=BATCH, external_data=True, check=False, force=True)
    assert second.external_data.name != first.external_data.name and not first.external_data.exists()
    assert _locations(out) == {second.external_data.name}
    assert sorted(f.name for f in out_dir.iterdir()) == sorted(["e.onnx", second.external_data.name])
    assert np.abs(_ort_out(out, x) - new_ref).max() < 1e-4
    # and back to a file with its weights inside: the side file goes too
    third = export_onnx(old_model, out, batch=BATCH, check=False, force=True)
    assert third.external_data is None and [f.name for f in out_dir.iterdir()] == ["e.onnx"]
    assert np.abs(_ort_out(out, x) - old_ref).max() < 1e-4


def test_token_reduction_exports_with_symbolic_token_counts(tmp_path):
    from vitcompress.tokens import apply_tokens

    model = apply_tokens(tiny("vit"), "0.7@1,2", method="topk")
    res = export_onnx(model, tmp_path / "t.onnx", batch=BATCH, dynamic_size=True, img_size=IMG)
    assert res.parity.ok and {c.img_size for c in res.parity.cases} == {32, 16}
    assert read_onnx_metadata(res.path)["tokens"]["spec"] == "0.7@1,2"
    topk = [n for n in onnx.load(str(res.path)).graph.node if n.op_type == "TopK"]
    assert len(topk) == 2


def test_artifact_path_and_external_data(tmp_path):
    import vitcompress

    art = vitcompress.save(_pruned("heads"), tmp_path / "art")
    res = export_onnx(art, tmp_path / "e.onnx", batch=BATCH, external_data=True)
    assert res.external_data.parent == tmp_path and re.fullmatch(r"e\.onnx\.[0-9a-f]{8}\.data", res.external_data.name)
    assert res.external_data.stat().st_size > 10_000
    assert _locations(tmp_path / "e.onnx") == {res.external_data.name}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["art", "e.onnx", res.external_data.name])
    assert (tmp_path / "e.onnx").stat().st_size < 100_000  # weights are in the side file
    assert res.parity.ok and res.metadata["export"]["artifact"] == str(art)
    assert res.metadata["spec"] == vitcompress.read_meta(art).spec.to_dict()


def test_exceeded_tolerance_raises_and_leaves_nothing(tmp_path):
    from vitcompress.errors import VitCompressError

    with pytest.raises(VitCompressError, match="parity check failed"):
        export_onnx(tiny("vit"), tmp_path / "x.onnx", batch=BATCH, tolerance=1e-12)
    assert list(tmp_path.iterdir()) == []
