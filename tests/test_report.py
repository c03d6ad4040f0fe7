"""The artifact tables: a prune step reads the same whether its record says oneshot or one-shot."""

import copy

from helpers import tiny

import vitcompress
from vitcompress.report import format_info, format_prune_summary


def test_one_shot_step_is_described_by_its_scorer_in_new_and_old_spellings():
    res = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1", round_to=4)
    assert res.meta.history[-1]["method"] == "oneshot"
    old = copy.deepcopy(res.meta)
    old.history[-1]["method"] = "one-shot"  # how older artifacts record it
    for meta in (res.meta, old):
        assert format_prune_summary(meta).startswith("pruned vit_small_patch16_224 with l1 on heads,qk,v,mlp")
        assert "step: oneshot l1 heads,qk,v,mlp target 30.0% macs" in format_info(meta)
