"""Small config value types: durations ("250ms", "30s", "5m"), fractions ("5%"), HTTP
status sets ("2xx"), release names.

In immunity.yaml a duration carries its unit: `5` alone is ambiguous (5 s? 5 min?) and is
rejected, except `0`. Code that builds settings directly (tests, adapters) may pass float
seconds; the loader validates with `LOADER_CONTEXT`, which turns the unit rule on.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ValidationInfo, WithJsonSchema

LOADER_CONTEXT = {"immunity.yaml": True}
"""Validation context the loader passes: values come from a YAML file a person wrote."""

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

RELEASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
RELEASE_RULE = (
    "a release name is 1 to 128 characters: letters, digits, '.', '_' and '-', "
    "starting with a letter or a digit"
)


def _from_file(info: ValidationInfo | None) -> bool:
    return bool(info is not None and info.context and info.context.get("immunity.yaml"))


SHORT_DURATIONS = frozenset({"latency_bar", "pause"})
"""Duration fields measured in milliseconds (a request's latency, a pause between
requests): a bare number there most likely meant ms."""


def _units(number: str, info: ValidationInfo | None) -> str:
    """The likely readings of a bare number, for the message: "100ms" or "100s" for a
    short duration (see `SHORT_DURATIONS`), else "100s" or "100m"."""
    if info is not None and info.field_name in SHORT_DURATIONS:
        return f'"{number}ms" or "{number}s"'
    return f'"{number}s" or "{number}m"'


def parse_duration(v: Any, info: ValidationInfo | None = None) -> float:
    """Seconds as float from a string like "250ms", "30s", "5m", "1h" (or a number of
    seconds outside immunity.yaml). Raises ValueError for anything else, negative or
    infinite values, and, in immunity.yaml, a number without its unit (except 0)."""
    if isinstance(v, bool):
        raise ValueError(f'expected a duration such as "30s" or "250ms", got {v!r}')
    if isinstance(v, int | float):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"expected a finite duration >= 0, got {v!r}")
        if v != 0 and _from_file(info):
            raise ValueError(
                f"expected a duration with its unit such as {_units(f'{v:g}', info)}, got "
                f"{v!r}: a bare number is ambiguous"
            )
        return float(v)
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            if m.group(2) is None and float(m.group(1)) != 0:
                raise ValueError(
                    f"expected a duration with its unit such as {_units(m.group(1), info)}, "
                    f"got {v!r}: a bare number is ambiguous"
                )
            return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f'expected a duration such as "30s", "250ms" or "5m", got {v!r}')


def _duration_field(v: Any, info: ValidationInfo) -> float:
    return parse_duration(v, info)


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


_STATUS = re.compile(r"^([1-5])(?:xx|XX)$|^([1-5]\d\d)$")


def parse_statuses(v: Any) -> tuple[str, ...]:
    """HTTP statuses a host should answer: `200`, `"2xx"`, or a list of them.

    Returns the normalised patterns (`("2xx",)`, `("200", "204")`); see `status_ok`."""
    items = v if isinstance(v, list | tuple) else [v]
    out: list[str] = []
    for item in items:
        text = str(item).strip() if not isinstance(item, bool) else ""
        if not _STATUS.match(text):
            raise ValueError(
                f'expected HTTP statuses such as 200, "2xx" or [200, 204], got {item!r}'
            )
        out.append(text.lower())
    if not out:
        raise ValueError('expected at least one HTTP status, such as "2xx"')
    return tuple(out)


def status_ok(patterns: tuple[str, ...], status: int) -> bool:
    """Whether `status` is one of `patterns` (from `parse_statuses`)."""
    code = str(status)
    return any(code == p or (p.endswith("xx") and code[0] == p[0]) for p in patterns)


def check_release_name(release: str) -> str:
    """`release` if it is a valid release name (see `RELEASE_RULE`), else ValueError.

    Uses a full match, so a trailing newline is rejected too (`$` would accept it)."""
    if not RELEASE_NAME.fullmatch(release) or release in (".", ".."):
        shown = repr(release) if len(release) <= 60 else repr(release[:57]) + "..."
        raise ValueError(f"expected {RELEASE_RULE}; got {shown} ({len(release)} characters)")
    return release


def check_bounds(v: list[float]) -> list[float]:
    """Latency histogram bucket bounds in ms: positive, sorted, without repeats."""
    if not v or any(b <= 0 for b in v):
        raise ValueError("expected a non-empty list of positive bucket bounds in ms")
    return sorted(set(v))


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)\s*$"},
        {"const": 0},
    ],
    "description": 'A duration with its unit: "250ms", "30s", "5m", "1h".',
}
_FRACTION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 1},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"},
    ],
    "description": 'A fraction (0.05) or a percentage ("5%").',
}
_STATUS_ITEM = {
    "anyOf": [
        {"type": "integer", "minimum": 100, "maximum": 599},
        {"type": "string", "pattern": "^([1-5]xx|[1-5][0-9][0-9])$"},
    ]
}
_STATUS_SCHEMA = {
    "anyOf": [_STATUS_ITEM, {"type": "array", "items": _STATUS_ITEM, "minItems": 1}],
    "description": 'HTTP statuses: 200, "2xx", or a list such as [200, 204].',
}

Duration = Annotated[
    float, BeforeValidator(_duration_field), WithJsonSchema(_DURATION_SCHEMA, mode="validation")
]


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError(f'expected a duration above 0 such as "30s", got {v:g}s')
    return v


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
"""A duration that must be above 0 (a deadline, an interval)."""
LatencyBounds = Annotated[list[float], AfterValidator(check_bounds)]
Fraction = Annotated[
    float, BeforeValidator(parse_fraction), WithJsonSchema(_FRACTION_SCHEMA, mode="validation")
]
StatusCodes = Annotated[
    tuple[str, ...],
    BeforeValidator(parse_statuses),
    WithJsonSchema(_STATUS_SCHEMA, mode="validation"),
]
