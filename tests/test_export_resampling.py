"""Position-embedding resampling of dynamic-size exports: timm's antialiased bicubic as interpolation
matrices built in the graph from the runtime size and applied with MatMul (``exporters.resampling``),
one graph for ONNX Runtime and TensorRT that equals timm at every size, shrinking included."""

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
from vitcompress.exporters.resampling import MATMUL, aa_matrix, matmul_resampling, resample_matmul
from vitcompress.exporters.source import with_dynamic_size

IMG = (16, 32, 48)  # patch 8: grids of 2, 4 (native) and 6


def test_matmul_resampling_equals_timms_antialiased_bicubic_at_every_size():
    pe = torch.randn(1, 1 + 48, 24, generator=torch.Generator().manual_seed(0))
    for new in [(h, w) for h in (1, 2, 3, 5, 6, 7, 11, 16) for w in (1, 4, 9, 13)]:  # shrink, same, enlarge
        want = resample_abs_pos_embed(pe, new, (6, 8), 1)
        assert relative_error(resample_matmul(pe, new, (6, 8), 1), want)[1] < 2e-6, new
    # no prefix tokens, fp16 (resampled in fp32 and cast back, as timm does)
    assert (
        relative_error(
            resample_matmul(pe[:, 1:], (3, 3), (6, 8), 0), resample_abs_pos_embed(pe[:, 1:], (3, 3), (6, 8), 0)
        )[1]
        < 2e-6
    )
    half = resample_matmul(pe.half(), (3, 5), (6, 8), 1)
    assert (
        half.dtype == torch.float16
        and relative_error(half.float(), resample_abs_pos_embed(pe.half(), (3, 5), (6, 8), 1).float())[1] < 2e-3
    )
    # weights: rows sum to 1, the native size is the identity, shrinking widens the kernel
    assert torch.allclose(aa_matrix(4, 4), torch.eye(4), atol=1e-7)
    assert torch.allclose(aa_matrix(6, 3).sum(1), torch.ones(3))
    assert (aa_matrix(12, 3) != 0).sum(1).tolist() == [10, 12, 10] and (aa_matrix(3, 6) != 0).sum(1).max() <= 4


@pytest.mark.export
@pytest.mark.parametrize("kind", ["vit", "deit_distilled"])
def test_dynamic_size_graph_equals_timm_at_every_size_and_is_what_tensorrt_parses(kind, tmp_path):
    model = tiny(kind)
    res = export_onnx(model, tmp_path / "m.onnx", batch=(1, 2, 4), dynamic_size=True, img_size=IMG)
    # parity against timm itself (no substitute reference), at 16 px too: shrinking
    assert res.parity.ok and {c.img_size for c in res.parity.cases} == {32, 16} and res.parity.max_rel < 1e-5
    assert res.metadata["export"]["pos_embed_resampling"] == MATMUL
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(res.path))).graph
    assert "Resize" not in {n.op_type for n in graph.node} and "MatMul" in {n.op_type for n in graph.node}
    # the runtime sizes come from integer Ranges (shape arithmetic), cast to float after
    types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)}
    ranges = [n for n in graph.node if n.op_type == "Range"]
    assert len(ranges) == 2 and {types.get(i) for n in ranges for i in n.input} - {None} == {onnx.TensorProto.INT64}
    shapes = {"pixel_values": [4, 3, 48, 48]}
    assert check_tensorrt(res.path, shapes).ok and not check_tensorrt(res.path, shapes).issues
    dyn = with_dynamic_size(model, meta_of(copy.deepcopy(model)))
    sess = ort_session(str(res.path))
    for h, w in [(8, 8), (16, 16), (24, 24), (32, 32), (40, 40), (56, 56), (16, 48), (40, 24)]:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.inference_mode():
            ref = dyn(x).numpy()
        assert relative_error(sess.run(None, {"pixel_values": x.numpy()})[0], ref)[1] < 1e-5, (h, w)


def test_matmul_resampling_is_undone_after_use():
    dyn = with_dynamic_size(tiny("deit_distilled"), meta_of(tiny("deit_distilled")))
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        want = dyn(x).numpy()
    with matmul_resampling():
        assert vision_transformer.resample_abs_pos_embed is resample_matmul
        assert deit.resample_abs_pos_embed is resample_matmul
        with torch.inference_mode():
            np.testing.assert_allclose(dyn(x).numpy(), want, rtol=1e-5, atol=1e-6)  # the same numbers
    assert vision_transformer.resample_abs_pos_embed is resample_abs_pos_embed
    with pytest.raises(RuntimeError, match="boom"):
        with matmul_resampling():
            raise RuntimeError("boom")
    assert deit.resample_abs_pos_embed is resample_abs_pos_embed
