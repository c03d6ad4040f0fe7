"""Position-embedding resampling of dynamic-size exports: timm's antialiased bicubic (the default) and
the TensorRT-compatible form without antialiasing (``antialias=False``, what ``--trt`` exports)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from helpers import tiny
from timm.layers import resample_abs_pos_embed
from timm.models import deit, vision_transformer

from vitcompress.artifact import meta_of
from vitcompress.exporters import check_tensorrt, export_onnx, relative_error
from vitcompress.exporters.parity import ort_session
from vitcompress.exporters.resampling import Resampled, cubic_matrix, plain_resampling, resample_plain
from vitcompress.exporters.source import with_dynamic_size

IMG = (16, 32, 48)  # patch 8: grids of 2, 4 (native) and 6

pytestmark = pytest.mark.export  # ONNX export: `make test-slow`


def test_plain_resampling_equals_antialiased_when_enlarging_only():
    pe = torch.randn(1, 1 + 16, 24, generator=torch.Generator().manual_seed(0))
    for new in (4, 5, 6, 9):  # same size or larger: antialiasing does nothing
        a = resample_abs_pos_embed(pe, (new, new), (4, 4), 1)
        assert relative_error(resample_plain(pe, (new, new), (4, 4), 1), a)[1] < 1e-6
    for new in (2, 3):  # smaller: the antialiased kernel widens with the shrink factor, the plain one does not
        a = resample_abs_pos_embed(pe, (new, new), (4, 4), 1)
        assert relative_error(resample_plain(pe, (new, new), (4, 4), 1), a)[1] > 1e-2
    # weights: rows sum to 1, the native size is the identity, taps outside the grid are dropped
    assert torch.allclose(cubic_matrix(4, 4), torch.eye(4, dtype=torch.float64))
    w = cubic_matrix(6, 3)
    assert torch.allclose(w.sum(1), torch.ones(3, dtype=torch.float64)) and (w != 0).sum(1).tolist() == [3, 4, 3]


@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
def test_trt_resampling_matches_pytorch_and_the_default_export_at_and_above_native(kind, tmp_path):
    model = tiny(kind)
    default = export_onnx(model, tmp_path / "aa.onnx", batch=(1, 2, 4), dynamic_size=True, img_size=IMG)
    plain = export_onnx(model, tmp_path / "p.onnx", batch=(1, 2, 4), dynamic_size=True, img_size=IMG, antialias=False)
    # both pass their parity checks, the second against PyTorch with plain resampling (at 16 px: shrinking)
    assert default.parity.ok and plain.parity.ok and {c.img_size for c in plain.parity.cases} == {32, 16}
    assert plain.parity.max_rel < 1e-4
    attrs = {
        f: [
            a.i
            for n in onnx.load(str(f)).graph.node
            if n.op_type == "Resize"
            for a in n.attribute
            if a.name == "antialias"
        ]
        for f in (default.path, plain.path)
    }
    assert attrs == {default.path: [1], plain.path: [0]}
    assert default.metadata["export"]["pos_embed_resampling"] == "bicubic, antialias"
    assert plain.metadata["export"]["pos_embed_resampling"] == "bicubic"
    # TensorRT's parser refuses the default graph (antialias=1); the plain one passes the check
    shapes = {"pixel_values": [4, 3, 48, 48]}
    flagged = check_tensorrt(default.path, shapes)
    assert [(i.op, i.severity) for i in flagged.issues] == [("Resize", "error")]
    assert check_tensorrt(plain.path, shapes).ok and not check_tensorrt(plain.path, shapes).issues
    # the two graphs agree at the native size and above, and differ below it
    dyn = with_dynamic_size(model, meta_of(copy.deepcopy(model)))
    sa, sp = ort_session(str(default.path)), ort_session(str(plain.path))
    for side in (16, 24, 32, 40, 56):
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
        a = sa.run(None, {"pixel_values": x.numpy()})[0]
        p = sp.run(None, {"pixel_values": x.numpy()})[0]
        with torch.inference_mode():
            ref = Resampled(dyn)(x).numpy()
        assert relative_error(p, ref)[1] < 1e-4  # the plain graph is exactly its PyTorch reference
        if side >= 32:
            assert relative_error(p, a)[1] < 1e-5, side
        else:
            assert relative_error(p, a)[1] > 1e-4, side


def test_plain_resampling_is_undone_after_use():
    dyn = with_dynamic_size(tiny("deit_distilled"), meta_of(tiny("deit_distilled")))
    with plain_resampling():
        assert vision_transformer.resample_abs_pos_embed is resample_plain
        assert deit.resample_abs_pos_embed is resample_plain
    assert vision_transformer.resample_abs_pos_embed is resample_abs_pos_embed
    assert deit.resample_abs_pos_embed is resample_abs_pos_embed
    with pytest.raises(RuntimeError, match="boom"):
        with plain_resampling():
            raise RuntimeError("boom")
    assert deit.resample_abs_pos_embed is resample_abs_pos_embed
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        assert not np.allclose(Resampled(dyn)(x).numpy(), dyn(x).numpy(), atol=1e-6)
