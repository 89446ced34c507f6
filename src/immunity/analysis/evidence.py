"""Every look's evidence, as journal entries: written by the bake, read back by resume and reports.

One `bake.started` entry opens a bake (its checks, the judge's settings, the format version)
and one `bake.looked` entry records each look: the window, the cohorts, each signal's
observation per cohort, each check's statistic and decision, and the look's verdict. The
format is documented for readers (report, replay) in `docs/journal.md`; in short:

    {"wave": 2, "bake": 2, "look": 17, "t_s": 17.0, "window": [1764466800.123, 1764466801.123],
     "cohorts": {"canary": 3, "baseline": 7, "canary+": ["h4"], "baseline-": ["h4"]},
     "obs": {"haproxy": {"canary": {"n": 412, "x": 3, "h": 3, "lat": [0, 40, 300, 61, 8]},
                         "baseline": {...}},
             "bounds": {"haproxy": [5, 10, 25, ...]}},
     "checks": {"errors": {"o": "continue", "s": {"e_fail": 1.9, "e_pass": 4.2}}},
     "outcome": "continue"}

Compactness (a 10-minute bake at one look per second on 1,000 hosts must stay small): the
cohorts are aggregated (their size does not depend on the fleet's), host names appear only
when a host enters or leaves a cohort, histogram bounds only when they change, trailing zero
buckets are cut, default fields are left out, statistics keep 4 significant digits, and a
check's sentence is written only when its outcome changes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from immunity.domain import CheckResult, Observation, Outcome, Verdict

FORMAT = 1
"""Version of the `bake.looked` layout (in `bake.started` as `evidence`)."""

BAKE_STARTED = "bake.started"
BAKE_LOOKED = "bake.looked"

# Observation fields with short names; any other field is written under its own name.
_SHORT = {"requests": "n", "errors": "x", "hosts": "h", "latency_buckets": "lat"}
_LONG = {v: k for k, v in _SHORT.items()}
_OBS_FIELDS = {f.name: f for f in dataclasses.fields(Observation)}


def _default(name: str) -> Any:
    f = _OBS_FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _sig(value: float) -> float | int:
    """4 significant digits; integers stay integers; inf/nan become None-safe large numbers."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return 1e308 if value > 0 else -1e308 if value < 0 else 0.0
    if value == int(value) and abs(value) < 1e15:
        return int(value)
    return float(f"{value:.4g}")


def _ms(t_s: float) -> float | int:
    t = round(t_s, 3)
    return int(t) if t == int(t) else t


def encode_observation(obs: Observation) -> dict[str, Any]:
    """An observation without its bounds (kept per signal) and without default fields."""
    out: dict[str, Any] = {}
    for name in _OBS_FIELDS:
        if name in ("latency_bounds_ms", "by_host"):
            continue  # by_host: the cohorts stay aggregated (see the module's docstring)
        value = getattr(obs, name)
        if name == "latency_buckets":
            buckets = [int(b) for b in value]
            while buckets and buckets[-1] == 0:
                buckets.pop()
            if buckets:
                out["lat"] = buckets
            elif value:
                out["lat"] = []  # a histogram that counted nothing is not "no histogram"
            continue
        default = _default(name)
        if default is not dataclasses.MISSING and value == default:
            continue
        if name == "detail" and obs.available:
            continue  # words about data that was there; judges read `detail` only when missing
        out[_SHORT.get(name, name)] = _plain(value)
    return out


def _types() -> dict[str, Any]:
    return typing.get_type_hints(Observation)


def decode_observation(data: Mapping[str, Any], bounds: Sequence[float]) -> Observation:
    """The inverse of `encode_observation` given the signal's current histogram bounds."""
    kwargs: dict[str, Any] = {}
    hints = _types()
    for key, value in data.items():
        name = _LONG.get(key, key)
        if name not in _OBS_FIELDS:
            continue  # a field of a newer format: ignore it, the rest still decodes
        if name == "latency_buckets":
            buckets = list(value)
            if bounds:
                buckets += [0] * (len(bounds) + 1 - len(buckets))
            kwargs[name] = tuple(buckets)
            if bounds:
                kwargs["latency_bounds_ms"] = tuple(float(b) for b in bounds)
            continue
        hint = hints.get(name)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            value = hint(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    for name in ("requests", "errors"):
        kwargs.setdefault(name, 0)
    return Observation(**kwargs)


def _stat_key(key: str) -> bool:
    """The statistics worth a line per look: e-values, frozen thresholds and a tolerance
    widened to the baseline hosts' spread, not counts (those follow from the observations)
    nor constants (the `*_needed` bars)."""
    if key.endswith("_needed") or key == "t_s":
        return False
    return (
        key.endswith(("e_fail", "e_pass", "_log_e", "threshold_ms", "quantile_ms", "tolerance"))
        or key == "e_fail"
        or key == "e_pass"
    )


@dataclass(frozen=True)
class CheckLook:
    """One check at one look: its decision, statistics, and its sentence when it changed."""

    outcome: Outcome
    stats: Mapping[str, float] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True)
class Look:
    """One look of one bake, decoded: everything the judges saw and what they said."""

    wave: int
    bake: int
    look: int
    t_s: float
    window: tuple[float, float]
    canary: tuple[str, ...]
    baseline: tuple[str, ...]
    observations: Mapping[str, Mapping[str, Observation]]
    checks: Mapping[str, CheckLook]
    outcome: Outcome
    reason: str | None = None
    frozen: Mapping[str, list[float]] = field(default_factory=dict)
    errored: Mapping[str, str] = field(default_factory=dict)
    windows: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Signals asked about another window than `window` (their delay), epoch seconds."""


@dataclass
class LookWriter:
    """Turns each look of one bake into a compact `bake.looked` payload (keeps the deltas)."""

    wave: int
    bake: int
    looks: int = 0
    canary: set[str] = field(default_factory=set)
    baseline: set[str] = field(default_factory=set)
    bounds: dict[str, tuple[float, ...]] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    last_outcome: Outcome | None = None

    def encode(
        self,
        *,
        t_s: float,
        window: tuple[float, float],
        canary: Iterable[str],
        baseline: Iterable[str],
        observations: Mapping[str, Mapping[str, Observation]],
        verdict: Verdict,
        frozen: Mapping[str, Sequence[float]] | None = None,
        errored: Mapping[str, str] | None = None,
        windows: Mapping[str, tuple[float, float]] | None = None,
    ) -> dict[str, Any]:
        """`windows`: each signal's own window (epoch seconds) when it is not `window` (a
        source with a delay is asked about seconds further back)."""
        self.looks += 1
        out: dict[str, Any] = {
            "wave": self.wave,
            "bake": self.bake,
            "look": self.looks,
            # the bake time at ms precision, exactly as the judges saw it (they cap evidence
            # per second of bake time): 4 significant digits would make a replay drift
            "t_s": _ms(t_s),
            "window": [round(window[0], 3), round(window[1], 3)],
        }
        cohorts: dict[str, Any] = {}
        for label, now, before in (
            ("canary", set(canary), self.canary),
            ("baseline", set(baseline), self.baseline),
        ):
            cohorts[label] = len(now)
            if now - before:
                cohorts[f"{label}+"] = sorted(now - before)
            if before - now:
                cohorts[f"{label}-"] = sorted(before - now)
            before.clear()
            before.update(now)
        out["cohorts"] = cohorts
        obs: dict[str, Any] = {}
        bounds: dict[str, list[float]] = {}
        for signal, per_cohort in observations.items():
            row: dict[str, Any] = {}
            for cohort, o in per_cohort.items():
                row[str(cohort)] = encode_observation(o)
                b = tuple(float(x) for x in o.latency_bounds_ms)
                if b and self.bounds.get(signal) != b:
                    self.bounds[signal] = b
                    bounds[signal] = [_sig(x) for x in b]
            obs[signal] = row
        if bounds:
            obs["bounds"] = bounds
        own = {
            signal: [round(lo, 3), round(hi, 3)]
            for signal, (lo, hi) in (windows or {}).items()
            if signal in obs and [round(lo, 3), round(hi, 3)] != out["window"]
        }
        if own:
            obs["windows"] = own
        out["obs"] = obs
        checks: dict[str, Any] = {}
        for r in verdict.checks:
            entry: dict[str, Any] = {"o": str(r.outcome)}
            stats = {k: _sig(float(v)) for k, v in r.numbers.items() if _stat_key(k)}
            if stats:
                entry["s"] = stats
            if self.outcomes.get(r.name) is not r.outcome:
                entry["r"] = r.reason
                self.outcomes[r.name] = r.outcome
            checks[r.name] = entry
        out["checks"] = checks
        out["outcome"] = str(verdict.outcome)
        if self.last_outcome is not verdict.outcome:
            out["reason"] = verdict.reason
            self.last_outcome = verdict.outcome
        if frozen:
            out["frozen"] = {k: [_sig(x) for x in v] for k, v in frozen.items()}
        if errored:
            out["errored"] = dict(errored)
        return out


def check_started_data(results: Sequence[CheckResult]) -> dict[str, dict[str, float]]:
    """The constant bars (`*_needed`) of each check, written once in `bake.started`."""
    return {
        r.name: {k: _sig(float(v)) for k, v in r.numbers.items() if k.endswith("_needed")}
        for r in results
    }


class LookReader:
    """Decodes `bake.looked` payloads in journal order (bounds and cohorts are deltas)."""

    def __init__(self) -> None:
        self.bounds: dict[tuple[int, str], tuple[float, ...]] = {}
        self.cohorts: dict[tuple[int, str], set[str]] = {}

    def decode(self, data: Mapping[str, Any]) -> Look:
        bake = int(data.get("bake", data.get("wave", 0)))
        obs_data = dict(data.get("obs", {}))
        windows = {
            signal: (float(w[0]), float(w[1]))
            for signal, w in dict(obs_data.pop("windows", {})).items()
        }
        for signal, b in dict(obs_data.pop("bounds", {})).items():
            self.bounds[(bake, signal)] = tuple(float(x) for x in b)
        observations: dict[str, dict[str, Observation]] = {}
        for signal, row in obs_data.items():
            bounds = self.bounds.get((bake, signal), ())
            observations[signal] = {
                cohort: decode_observation(o, bounds) for cohort, o in dict(row).items()
            }
        cohorts = dict(data.get("cohorts", {}))
        members: dict[str, tuple[str, ...]] = {}
        for label in ("canary", "baseline"):
            now = self.cohorts.setdefault((bake, label), set())
            now.update(cohorts.get(f"{label}+", ()))
            now.difference_update(cohorts.get(f"{label}-", ()))
            members[label] = tuple(sorted(now))
        checks = {
            name: CheckLook(
                Outcome(c["o"]),
                {k: float(v) for k, v in dict(c.get("s", {})).items()},
                c.get("r"),
            )
            for name, c in dict(data.get("checks", {})).items()
        }
        window = data.get("window") or [0.0, 0.0]
        return Look(
            wave=int(data.get("wave", 0)),
            bake=bake,
            look=int(data.get("look", 0)),
            t_s=float(data["t_s"]),
            window=(float(window[0]), float(window[1])),
            canary=members["canary"],
            baseline=members["baseline"],
            observations=observations,
            checks=checks,
            outcome=Outcome(data["outcome"]),
            reason=data.get("reason"),
            frozen={k: [float(x) for x in v] for k, v in dict(data.get("frozen", {})).items()},
            errored=dict(data.get("errored", {})),
            windows=windows,
        )


def read_looks(entries: Iterable[Any]) -> list[Look]:
    """Every look of a deployment, decoded, from its journal entries (any objects with
    `kind` and `data`, e.g. `JournalEntry`), in journal order."""
    reader = LookReader()
    return [reader.decode(e.data) for e in entries if e.kind == BAKE_LOOKED]


@dataclass(frozen=True)
class ResumePoint:
    """Where a wave's analysis stands in the journal: what a resumed run continues from."""

    bake_no: int
    """The bake to run: the interrupted one, or the next number for a new bake."""
    looks: Sequence[Look]
    """The interrupted bake's looks (empty for a new bake)."""
    carry: Mapping[str, list[float]]
    """Latency thresholds frozen by earlier bakes of the deployment."""


@dataclass
class BakeLedger:
    """A deployment's bakes as its journal says, folded one entry at a time (the engine's
    `FleetState` hands it every entry it folds): the bake each `bake.started` opened and for
    which wave, the latency thresholds frozen so far, and the looks of the bakes no
    `bake.finished` closed yet (a finished bake's looks are let go). `point(wave)` is where
    that wave's analysis stands: what a resumed run continues from."""

    started: dict[int, int] = field(default_factory=dict)  # bake -> its wave
    finished: set[int] = field(default_factory=set)
    carried: dict[int, dict[str, list[float]]] = field(default_factory=dict)  # open bakes'
    looks: dict[int, list[Mapping[str, Any]]] = field(default_factory=dict)  # open bakes'
    carry: dict[str, list[float]] = field(default_factory=dict)

    def apply(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == BAKE_STARTED:
            b = int(data.get("bake", 0))
            self.started[b] = int(data.get("wave", 0))
            self.carried[b] = _floats(data.get("carried", {}))
        elif kind == BAKE_LOOKED:
            self.looks.setdefault(int(data.get("bake", data.get("wave", 0))), []).append(data)
            self.carry.update(_floats(data.get("frozen", {})))
        elif kind == "bake.finished":
            b = int(data.get("bake", 0))
            self.finished.add(b)
            self.looks.pop(b, None)
            self.carried.pop(b, None)

    def point(self, wave: int) -> ResumePoint:
        """The bake of `wave` that `bake.started` opened and no `bake.finished` closed, with
        its looks and the carry it started with (so the replay rebuilds the same judges);
        else the next bake number and every threshold frozen so far."""
        open_bakes = [b for b, w in self.started.items() if w == wave and b not in self.finished]
        if open_bakes:
            b = max(open_bakes)
            reader = LookReader()
            looks = [reader.decode(d) for d in self.looks.get(b, [])]
            return ResumePoint(b, looks, self.carried.get(b, {}))
        return ResumePoint(max(self.started, default=0) + 1, [], dict(self.carry))


def _floats(data: Mapping[str, Any]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in dict(data).items()}


def resume_point(entries: Iterable[Any], wave: int) -> ResumePoint:
    """`BakeLedger.point(wave)` over one deployment's entries, in journal order."""
    ledger = BakeLedger()
    for e in entries:
        ledger.apply(e.kind, e.data)
    return ledger.point(wave)
