"""Small config value types: durations ("250ms", "30s", "5m") and fractions ("5%")."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(v: Any) -> float:
    """Seconds as float from a number (seconds) or a string like "250ms", "30s", "5m"."""
    if isinstance(v, bool):
        raise ValueError(f'expected a duration such as "30s" or "250ms", got {v!r}')
    if isinstance(v, int | float):
        if v < 0:
            raise ValueError(f"expected a duration >= 0, got {v!r}")
        return float(v)
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f'expected a duration such as "30s", "250ms" or "5m", got {v!r}')


def parse_fraction(v: Any) -> float:
    """A fraction in [0, 1] from 0.05 or "5%"."""
    if isinstance(v, bool):
        raise ValueError(f'expected a fraction (0.05) or a percentage ("5%"), got {v!r}')
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            v = float(v.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError(f'expected a percentage such as "5%", got {v!r}') from None
    if isinstance(v, int | float) and 0.0 <= float(v) <= 1.0:
        return float(v)
    raise ValueError(f'expected a fraction in [0, 1] (0.05) or a percentage ("5%"), got {v!r}')


def check_bounds(v: list[float]) -> list[float]:
    """Latency histogram bucket bounds in ms: positive, sorted, without repeats."""
    if not v or any(b <= 0 for b in v):
        raise ValueError("expected a non-empty list of positive bucket bounds in ms")
    return sorted(set(v))


Duration = Annotated[float, BeforeValidator(parse_duration)]
LatencyBounds = Annotated[list[float], AfterValidator(check_bounds)]
Fraction = Annotated[float, BeforeValidator(parse_fraction)]
