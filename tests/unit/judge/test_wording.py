"""Numbers in reasons are written in plain notation (issue 11 item 6)."""

from __future__ import annotations

import math

import pytest

from immunity.judge.wording import evalue


@pytest.mark.parametrize(
    "value,text",
    [
        (4.1, "4.1"),
        (312.4, "312"),
        (45_678, "45,678"),
        (1.23e6, "1.23 million"),
        (3.4e9, "3.4 billion"),
        (5e12, "5 trillion"),
        (3.7e25, "over a quadrillion"),
        (0.5, "0.5"),
        (1e-5, "below 0.01"),
    ],
)
def test_e_values_are_written_in_plain_notation(value: float, text: str) -> None:
    """An e-value reads as a person would say it, whatever its size."""
    assert text == evalue(math.log(value))
    assert "e+" not in evalue(math.log(value)) and "e-" not in evalue(math.log(value))


def test_an_e_value_past_floating_point_is_still_plain() -> None:
    """A log e-value beyond float range does not overflow."""
    assert "over a quadrillion" == evalue(800.0)
