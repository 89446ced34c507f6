"""Fixtures of the judge tests (helpers live in judge_helpers.py)."""

from __future__ import annotations

import pytest
from judge_helpers import Stream, make_stream


@pytest.fixture
def stream() -> Stream:
    """Intervals (t_s, canary, baseline): 1 canary host vs 9 baseline hosts, Poisson traffic."""
    return make_stream()
