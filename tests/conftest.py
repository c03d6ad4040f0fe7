"""Fixtures shared by the tests (the helpers they use are in ``helpers.py``)."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY


@pytest.fixture(params=sorted(TINY))
def tiny_kind(request):
    return request.param


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models train faster without thread hand-offs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
