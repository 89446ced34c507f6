"""The labelled-scenario file that `immunity bench judge` reads and writes (JSON Lines).

First line, the header:

    {"format": "immunity-judge-scenarios/1", "interval_s": 1, "latency_buckets_ms": [10, 20, ...]}

Each further line, one release:

    {"id": "...", "label": "good" | "bad", "class": "err_x5@40rps", "canary_hosts": 1,
     "baseline_hosts": 9, "warmup_s": 30, "canary": COHORT, "baseline": COHORT}

where COHORT is {"requests": [int per interval], "errors": [int per interval],
"latency": [[count per bucket, one more than the bounds for the overflow] per interval]}.
An optional "baseline_by_host": [COHORT, ...] holds the baseline's hosts one by one
(`baseline_hosts` of them, adding up to "baseline"): judges then see each baseline host's
counts too (`Observation.by_host`), from which immunity measures the fleet's host-to-host
spread.
An optional "meta" object is carried along untouched (the generator records what it did
there; judges never read it). Judges see nothing but these numbers.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from immunity.errors import ConfigError

FORMAT = "immunity-judge-scenarios/1"
IntArray = NDArray[np.int64]


def _plain(x: float) -> float | int:
    """30.0 -> 30 in the file, as people write it."""
    return int(x) if float(x).is_integer() else x


@dataclass(frozen=True)
class Header:
    interval_s: float
    bounds_ms: tuple[float, ...]

    def to_obj(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "interval_s": _plain(self.interval_s),
            "latency_buckets_ms": [_plain(b) for b in self.bounds_ms],
        }


@dataclass(frozen=True)
class Series:
    """One cohort over a scenario: arrays of shape (T,), (T,) and (T, buckets)."""

    requests: IntArray
    errors: IntArray
    latency: IntArray

    def to_obj(self) -> dict[str, Any]:
        return {
            "requests": self.requests.tolist(),
            "errors": self.errors.tolist(),
            "latency": self.latency.tolist(),
        }


@dataclass(frozen=True)
class Scenario:
    id: str
    label: str
    cls: str
    canary_hosts: int
    baseline_hosts: int
    warmup_s: float
    canary: Series
    baseline: Series
    meta: Mapping[str, Any] = field(default_factory=dict)
    baseline_by_host: tuple[Series, ...] = ()

    @property
    def intervals(self) -> int:
        return len(self.canary.requests)

    def to_obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "label": self.label,
            "class": self.cls,
            "canary_hosts": self.canary_hosts,
            "baseline_hosts": self.baseline_hosts,
            "warmup_s": _plain(self.warmup_s),
            "canary": self.canary.to_obj(),
            "baseline": self.baseline.to_obj(),
        }
        if self.baseline_by_host:
            out["baseline_by_host"] = [h.to_obj() for h in self.baseline_by_host]
        if self.meta:
            out["meta"] = dict(self.meta)
        return out


class ScenarioError(ConfigError):
    """A scenario file that is not in the immunity-judge-scenarios/1 format."""

    reference = "bench-scenarios-invalid"


def _fail(where: str, what: str) -> ScenarioError:
    return ScenarioError(
        f"{where}: {what}",
        hint=f'a scenario file starts with {{"format": "{FORMAT}", "interval_s": 1, '
        '"latency_buckets_ms": [...]} and has one scenario object per further line',
    )


def parse_header(obj: Any, where: str) -> Header:
    if not isinstance(obj, dict):
        raise _fail(where, f"expected the header object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise _fail(where, f'expected "format": "{FORMAT}", got {obj.get("format")!r}')
    interval = obj.get("interval_s")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise _fail(where, f'expected "interval_s" > 0 (seconds), got {interval!r}')
    bounds = obj.get("latency_buckets_ms")
    if (
        not isinstance(bounds, list)
        or not bounds
        or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        or any(b2 <= b1 for b1, b2 in itertools.pairwise(bounds))
        or bounds[0] <= 0
    ):
        raise _fail(
            where, f'expected "latency_buckets_ms" as increasing upper bounds > 0, got {bounds!r}'
        )
    return Header(float(interval), tuple(float(b) for b in bounds))


def _ints(value: Any, where: str, name: str, length: int | None) -> IntArray:
    try:
        arr = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _fail(where, f"{name}: expected a list of integers") from None
    if arr.ndim != 1 or (length is not None and len(arr) != length):
        want = f"{length} integers" if length is not None else "a flat list of integers"
        raise _fail(where, f"{name}: expected {want}, got shape {arr.shape}")
    if (arr < 0).any():
        raise _fail(where, f"{name}: counts must be >= 0")
    return arr


def _series(obj: Any, where: str, name: str, buckets: int) -> Series:
    if not isinstance(obj, dict):
        raise _fail(where, f"{name}: expected an object with requests, errors and latency")
    requests = _ints(obj.get("requests"), where, f"{name}.requests", None)
    t = len(requests)
    errors = _ints(obj.get("errors"), where, f"{name}.errors", t)
    if (errors > requests).any():
        raise _fail(where, f"{name}.errors: more errors than requests in an interval")
    try:
        latency = np.asarray(obj.get("latency"), dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _fail(where, f"{name}.latency: expected a list of lists of integers") from None
    if latency.shape != (t, buckets):
        raise _fail(
            where,
            f"{name}.latency: expected {t} intervals of {buckets} bucket counts (the bounds "
            f"plus one overflow), got shape {latency.shape}",
        )
    if (latency < 0).any():
        raise _fail(where, f"{name}.latency: counts must be >= 0")
    return Series(requests, errors, latency)


def parse_scenario(obj: Any, header: Header, where: str) -> Scenario:
    if not isinstance(obj, dict):
        raise _fail(where, f"expected a scenario object, got {type(obj).__name__}")
    missing = [
        k
        for k in ("id", "label", "class", "canary_hosts", "baseline_hosts", "warmup_s")
        if k not in obj
    ]
    if missing:
        raise _fail(where, f"missing field(s) {', '.join(missing)}")
    if obj["label"] not in ("good", "bad"):
        raise _fail(where, f'label: expected "good" or "bad", got {obj["label"]!r}')
    for key in ("canary_hosts", "baseline_hosts"):
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _fail(where, f"{key}: expected a count >= 1, got {v!r}")
    warmup = obj["warmup_s"]
    if isinstance(warmup, bool) or not isinstance(warmup, int | float) or warmup < 0:
        raise _fail(where, f"warmup_s: expected seconds >= 0, got {warmup!r}")
    buckets = len(header.bounds_ms) + 1
    canary = _series(obj.get("canary"), where, "canary", buckets)
    baseline = _series(obj.get("baseline"), where, "baseline", buckets)
    if len(canary.requests) != len(baseline.requests):
        raise _fail(where, "canary and baseline must have the same number of intervals")
    by_host = _by_host(obj.get("baseline_by_host"), where, obj["baseline_hosts"], baseline)
    meta = obj.get("meta") or {}
    return Scenario(
        id=str(obj["id"]),
        label=obj["label"],
        cls=str(obj["class"]),
        canary_hosts=obj["canary_hosts"],
        baseline_hosts=obj["baseline_hosts"],
        warmup_s=float(warmup),
        canary=canary,
        baseline=baseline,
        meta=meta if isinstance(meta, dict) else {},
        baseline_by_host=by_host,
    )


def _by_host(value: Any, where: str, hosts: int, baseline: Series) -> tuple[Series, ...]:
    """The optional per-host baseline series: `hosts` of them, adding up to `baseline`."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) != hosts:
        raise _fail(
            where, f"baseline_by_host: expected a list of {hosts} cohorts (one per baseline host)"
        )
    buckets = baseline.latency.shape[1]
    series = tuple(
        _series(v, where, f"baseline_by_host[{i}]", buckets) for i, v in enumerate(value)
    )
    for name in ("requests", "errors", "latency"):
        total = sum(getattr(h, name) for h in series)
        if getattr(total, "shape", None) != getattr(baseline, name).shape or not np.array_equal(
            total, getattr(baseline, name)
        ):
            raise _fail(
                where, f"baseline_by_host: the hosts' {name} do not add up to the baseline's"
            )
    return series


def _json(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise _fail(where, f"not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_scenarios(path: Path) -> tuple[Header, list[Scenario]]:
    """Read and validate a whole scenario file; errors name `file:line`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario file {path}: {exc.strerror}") from exc
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise _fail(f"{path}:1", "empty scenario file")
    first_no, first = lines[0]
    header = parse_header(_json(first, f"{path}:{first_no}"), f"{path}:{first_no}")
    scenarios = [
        parse_scenario(_json(ln, f"{path}:{i}"), header, f"{path}:{i}") for i, ln in lines[1:]
    ]
    if not scenarios:
        raise _fail(f"{path}:{first_no}", "the file has a header but no scenarios")
    return header, scenarios


def write_scenarios(path: Path, header: Header, scenarios: Iterable[Scenario]) -> int:
    """Write a scenario file; returns how many scenarios were written."""
    n = 0
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(header.to_obj()) + "\n")
        for s in scenarios:
            out.write(json.dumps(s.to_obj(), separators=(",", ":")) + "\n")
            n += 1
    return n
