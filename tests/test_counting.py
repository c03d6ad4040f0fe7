"""Analytic MACs and params against torch.utils.flop_counter and the real parameter count."""

import pytest
from helpers import tiny

from vitcompress.counting import count, measured_macs
from vitcompress.models import create_source_model


def test_tiny_counts_match_flop_counter_and_numel(tiny_kind):
    model = tiny(tiny_kind)
    c = count(model)
    assert c.params == sum(p.numel() for p in model.parameters())
    assert c.macs == measured_macs(model)
    assert c.flops == 2 * c.macs


@pytest.mark.slow
def test_deit_small_macs_are_the_published_4_6_g():
    model = create_source_model("deit_small_patch16_224")
    c = count(model)
    assert abs(c.macs / 1e9 - 4.6) < 0.01
    assert abs(c.macs - measured_macs(model)) <= 0.01 * c.macs
    assert c.params == sum(p.numel() for p in model.parameters())
