"""Every look's evidence in the journal: compact, exact, and enough to continue a bake."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from immunity.analysis import BakeAnalysis, read_looks, resume_point
from immunity.analysis.evidence import LookWriter, decode_observation, encode_observation
from immunity.config.models import Config
from immunity.domain import Cohort, Observation, Outcome
from immunity.journal.sqlite import SqliteJournal

BOUNDS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


def config(**judge: Any) -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": f"h{i}", "port": 8000 + i} for i in range(3)],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": [
                {"name": "errors", "signal": "lb", "kind": "errors"},
                {"name": "latency", "signal": "lb", "kind": "latency"},
                {"name": "5xx-bar", "signal": "lb", "kind": "error_rate_max", "max": "5%"},
            ],
            "bake": {"min": "30s", "max": "600s", "interval": "1s"},
            "judge": judge,
        }
    )


def traffic(
    rng: np.random.Generator, n: int, rate: float, hosts: int, slow: float = 1.0
) -> Observation:
    requests = int(rng.poisson(n))
    errors = int(rng.binomial(requests, rate))
    latencies = rng.lognormal(np.log(30 * slow), 0.6, requests)
    buckets = np.bincount(np.searchsorted(BOUNDS, latencies), minlength=len(BOUNDS) + 1)
    return Observation(requests, errors, BOUNDS, [int(b) for b in buckets], True, hosts)


def looks(
    seed: int, seconds: int, canary_rate: float
) -> list[dict[str, dict[Cohort | str, Observation]]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "lb": {
                Cohort.CANARY: traffic(rng, 40, canary_rate, 1),
                Cohort.BASELINE: traffic(rng, 80, 0.01, 2),
            }
        }
        for _ in range(seconds)
    ]


def test_an_observation_survives_the_journal_exactly() -> None:
    """Trimmed buckets, per-signal bounds, missing data and host counts decode to the same value."""
    cases = [
        Observation(120, 3, BOUNDS, [0, 40, 70, 10, 0, 0, 0, 0, 0, 0, 0], True, 2),
        Observation(0, 0, BOUNDS, [0] * 11, True, 1),
        Observation.missing("prometheus answered 503"),
        Observation(7, 0),
    ]
    for obs in cases:
        data = json.loads(json.dumps(encode_observation(obs)))
        expected = dataclasses.replace(
            obs,
            latency_bounds_ms=tuple(obs.latency_bounds_ms),
            latency_buckets=tuple(obs.latency_buckets),
        )
        assert decode_observation(data, BOUNDS if obs.latency_buckets else ()) == expected


def test_replaying_journaled_looks_gives_the_same_statistics_at_every_look() -> None:
    """Bake times far past 10 s keep their ms (the judges cap evidence per second of bake
    time), so re-judging the journal reproduces every e-value of the run."""
    cfg = config()
    live = BakeAnalysis(cfg, relative=True)
    writer = LookWriter(wave=1, bake=1)
    payloads, stats = [], []
    for i, obs in enumerate(looks(11, 60, 0.03), start=1):
        t_s = round(i * 1.0007 + 0.0004 * (i % 3), 3)  # e.g. 10.508, 59.043: not 4 digits
        step = live.look(t_s, obs)
        stats.append({r.name: dict(r.numbers) for r in step.verdict.checks})
        payloads.append(
            json.loads(
                json.dumps(
                    writer.encode(
                        t_s=t_s,
                        window=(0.0, 1.0),
                        canary=["h0"],
                        baseline=["h1", "h2"],
                        observations=obs,
                        verdict=step.verdict,
                    )
                )
            )
        )
    entries = [type("E", (), {"kind": "bake.looked", "data": p})() for p in payloads]
    again = BakeAnalysis(cfg, relative=True)
    for look, want in zip(read_looks(entries), stats, strict=True):
        step = again.look(look.t_s, dict(look.observations))
        got = {r.name: dict(r.numbers) for r in step.verdict.checks}
        assert want["errors"]["e_fail"] == got["errors"]["e_fail"]
        assert want["5xx-bar"]["e_pass"] == got["5xx-bar"]["e_pass"]


@pytest.mark.anyio
async def test_a_resumed_bake_continues_from_the_journaled_evidence(tmp_path: Path) -> None:
    """Replaying the journaled looks rebuilds the judges exactly: the resumed bake fails at the
    same second as an uninterrupted one, while a bake started from zero has not failed by then."""
    cfg = config()
    stream = looks(1, 400, canary_rate=0.03)  # 3x the baseline's errors
    whole = BakeAnalysis(cfg, relative=True)
    fail_at = next(
        i for i, obs in enumerate(stream) if whole.look(i + 1.0, obs).decision is not None
    )
    assert whole.last is not None and whole.last.decision is not None
    assert whole.last.decision.outcome is Outcome.FAIL
    cut = fail_at - 5  # the orchestrator dies 5 looks before the verdict

    journal = SqliteJournal(tmp_path / "j.db")
    d = await journal.begin("shop", "v2", {})
    await journal.append(d.id, "bake.started", data={"wave": 1, "bake": 1, "carried": {}})
    first = BakeAnalysis(cfg, relative=True)
    writer = LookWriter(wave=1, bake=1)
    for i, obs in enumerate(stream[:cut]):
        step = first.look(i + 1.0, obs)
        data = writer.encode(
            t_s=i + 1.0,
            window=(i, i + 1.0),
            canary=["h0"],
            baseline=["h1", "h2"],
            observations=obs,
            verdict=step.verdict,
            frozen=step.frozen,
        )
        await journal.append(d.id, "bake.looked", data=data)

    point = resume_point(await journal.entries(d.id), wave=1)
    assert point.bake_no == 1 and len(point.looks) == cut
    resumed = BakeAnalysis(cfg, relative=True, carry=point.carry)
    resumed.replay((lk.t_s, lk.observations, lk.errored) for lk in point.looks)
    fresh = BakeAnalysis(cfg, relative=True)
    decided = None
    for i in range(cut, fail_at + 1):
        step = resumed.look(i + 1.0, stream[i])
        assert fresh.look(i - cut + 1.0, stream[i]).decision is None
        if step.decision is not None:
            decided = (i, step.decision)
            break
    assert decided is not None
    assert decided[0] == fail_at
    assert decided[1].outcome is Outcome.FAIL
    assert decided[1].checks == whole.last.decision.checks


@pytest.mark.anyio
async def test_a_finished_bake_is_not_resumed_and_latency_thresholds_carry_over(
    tmp_path: Path,
) -> None:
    """After a finished bake the next bake gets a new number and the thresholds it froze."""
    cfg = config()
    journal = SqliteJournal(tmp_path / "j.db")
    d = await journal.begin("shop", "v2", {})
    await journal.append(d.id, "bake.started", data={"wave": 1, "bake": 1, "carried": {}})
    analysis = BakeAnalysis(cfg, relative=True)
    writer = LookWriter(wave=1, bake=1)
    frozen: dict[str, list[float]] = {}
    for i, obs in enumerate(looks(2, 60, 0.01)):
        step = analysis.look(i + 1.0, obs)
        frozen.update(step.frozen)
        data = writer.encode(
            t_s=i + 1.0,
            window=(i, i + 1.0),
            canary=["h0"],
            baseline=["h1", "h2"],
            observations=obs,
            verdict=step.verdict,
            frozen=step.frozen,
        )
        await journal.append(d.id, "bake.looked", data=data)
    await journal.append(d.id, "bake.finished", data={"wave": 1, "bake": 1, "outcome": "pass"})
    assert "latency" in frozen
    point = resume_point(await journal.entries(d.id), wave=2)
    assert (point.bake_no, list(point.looks), dict(point.carry)) == (2, [], frozen)


def test_a_failing_signal_is_kept_apart_from_thin_traffic() -> None:
    """A signal that errors ends the bake with `error` only after the consecutive-error limit;
    a signal that sees no traffic is `inconclusive`, ended by the inconclusive limit."""
    cfg = config(consecutive_error_limit=4, inconclusive_limit="20s")
    stream = looks(3, 100, 0.01)
    errors = BakeAnalysis(cfg, relative=True)
    for i in range(3):  # three failures, then a good answer: waited out
        step = errors.look(i + 1.0, {}, errored={"lb": "connection refused"})
        assert step.decision is None
        assert step.verdict.outcome is Outcome.CONTINUE
        assert {r.outcome for r in step.verdict.checks} == {Outcome.ERROR}
    assert errors.look(4.0, stream[3]).decision is None
    decision = None
    for i in range(4, 8):
        decision = errors.look(i + 1.0, {}, errored={"lb": "connection refused"}).decision
    assert decision is not None and decision.outcome is Outcome.ERROR
    assert "signal lb failed (4 look(s) in a row): connection refused" in decision.reason

    # a source that answers `failed` (it could not read its data) has errored too
    unread = BakeAnalysis(cfg, relative=True)
    gone = Observation.failed("access log unreadable")
    for i in range(4):
        step = unread.look(i + 1.0, {"lb": {Cohort.CANARY: gone, Cohort.BASELINE: gone}})
    assert step.decision is not None and step.decision.outcome is Outcome.ERROR
    assert "access log unreadable" in step.decision.reason

    quiet = BakeAnalysis(cfg, relative=True)
    empty = {
        "lb": {
            Cohort.CANARY: Observation(0, 0, hosts=1),
            Cohort.BASELINE: Observation(0, 0, hosts=2),
        }
    }
    outcome = None
    for t in range(1, 100):
        step = quiet.look(float(t), empty)
        if step.decision is not None:
            outcome = (t, step.decision)
            break
    assert outcome is not None
    assert outcome[1].outcome is Outcome.INCONCLUSIVE
    assert outcome[0] == 30 + 20  # no traffic for 30 s is inconclusive, 20 s more ends it
    assert "sees no traffic on either cohort" in outcome[1].reason


def _disk_bytes(folder: Path, names: Sequence[str]) -> int:
    """Bytes on disk of the named journal files in `folder` (a missing one counts 0)."""
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists())


@pytest.mark.anyio
async def test_ten_minutes_of_looks_on_a_thousand_hosts_stay_small(
    tmp_path: Path, record_property: Any
) -> None:
    """A 600-look bake on 1,000 hosts (250 canaries entering one by one, three checks, two
    cohorts with latency histograms) journals well under 1 KB per look."""
    cfg = config()
    rng = np.random.default_rng(4)
    hosts = [f"web-{i:04d}.prod.example.com" for i in range(1000)]
    journal = SqliteJournal(tmp_path / "j.db")
    d = await journal.begin("shop", "v2", {})
    before = _disk_bytes(tmp_path, ("j.db", "j.db-wal"))
    analysis = BakeAnalysis(cfg, relative=True)
    writer = LookWriter(wave=2, bake=2)
    payload = 0
    for t in range(1, 601):
        canary = hosts[: min(250, t)]  # one host enters per look for the first 250 s
        obs = {
            "lb": {
                Cohort.CANARY: traffic(rng, 10 * len(canary), 0.01, len(canary)),
                Cohort.BASELINE: traffic(rng, 10 * (1000 - len(canary)), 0.01, 1000 - len(canary)),
            }
        }
        step = analysis.look(float(t), obs, may_pass=False)
        data = writer.encode(
            t_s=float(t),
            window=(1764466800.0 + t - 1, 1764466800.0 + t),
            canary=canary,
            baseline=hosts[len(canary) :],
            observations=obs,
            verdict=step.verdict,
            frozen=step.frozen,
        )
        payload += len(json.dumps(data))
        await journal.append(d.id, "bake.looked", data=data)
    await journal.close()
    on_disk = _disk_bytes(tmp_path, ("j.db", "j.db-wal", "j.db-shm")) - before
    record_property("journal payload bytes per look (1,000 hosts)", round(payload / 600))
    record_property("journal bytes on disk per look (1,000 hosts)", round(on_disk / 600))
    reopened = SqliteJournal(tmp_path / "j.db")
    back = read_looks(await reopened.entries(d.id))
    await reopened.close()
    assert len(back) == 600
    assert back[-1].canary == tuple(sorted(hosts[:250]))
    assert len(back[-1].baseline) == 750
    assert payload / 600 < 1024


def test_a_signal_asked_about_an_earlier_window_has_it_journaled() -> None:
    """A delayed signal's own window is written beside the look's (and only when it differs)."""
    writer = LookWriter(wave=1, bake=1)
    obs: dict[str, dict[Cohort | str, Observation]] = {
        "prom": {Cohort.CANARY: Observation(5, 0, hosts=1), Cohort.BASELINE: Observation(9, 0)},
        "lb": {Cohort.CANARY: Observation(5, 0, hosts=1), Cohort.BASELINE: Observation(9, 0)},
    }
    step = BakeAnalysis(config(), relative=True).look(1.0, obs)
    data = writer.encode(
        t_s=1.0,
        window=(100.0, 101.0),
        canary=["h0"],
        baseline=["h1"],
        observations=obs,
        verdict=step.verdict,
        windows={"prom": (70.0, 71.0), "lb": (100.0, 101.0)},
    )
    assert data["obs"]["windows"] == {"prom": [70.0, 71.0]}
    journal = [type("E", (), {"kind": "bake.looked", "data": json.loads(json.dumps(data))})()]
    look = read_looks(journal)[0]
    assert look.windows == {"prom": (70.0, 71.0)}
    assert set(look.observations) == {"prom", "lb"}


def test_a_signal_named_like_an_evidence_key_is_rejected() -> None:
    """`bounds` and `windows` sit beside the signals in a look's evidence: not signal names."""
    data = config().model_dump()
    data["signals"] = [{"kind": "haproxy", "name": "bounds"}]
    data["checks"] = [{"name": "errors", "signal": "bounds", "kind": "errors"}]
    with pytest.raises(ValueError, match="signal name 'bounds' is reserved"):
        Config.model_validate(data)
