"""`deploy --dry-run`: preflight and the whole plan, touching nothing.

What the CLI shows of a deployment before it runs (it orchestrates nothing, so it lives
here, not in the engine). The plan is what the engine's `Rollout` would do with the same
config: the waves of
`plan_waves`, each wave's hosts switched at most `max_unavailable` at a time, the bake
(relative checks only while a baseline is left, guard rails alone on the last wave), the
guard period with its holdback (switched last), the false-alarm level of each bake, and
what each check needs from its signal. Nothing is journaled and no lease is taken; the
preflight only reads (balancer members, each host's active release, the release's presence,
every adapter's own read-only `preflight`).
"""

from __future__ import annotations

from typing import Any

from immunity.analysis.spending import bakes_of, judge_for
from immunity.config.models import GUARD_KINDS
from immunity.engine.plan import plan_waves, with_holdback
from immunity.fleet.context import Fleet
from immunity.fleet.preflight import preflight

NEEDS = {
    "errors": "request and 5xx counts per cohort; a baseline {last}",
    "latency": "a latency histogram per cohort; a baseline {last}",
    "error_rate_max": "request and 5xx counts of the canary (guard rail, every wave)",
    "latency_max": "a latency histogram of the canary (guard rail, every wave)",
}
LAST_WAVE = {
    # with a holdback the last wave and the guard keep one host on the old release
    True: "(on the last wave and in the guard: the holdback)",
    False: "(not judged on the last wave: no host is left on the old release)",
}


def _baseline_requests_for(quantile: float) -> str:
    """What setting a quantile's threshold takes from the baseline, in the judge's own terms
    (`judge.sequential.freeze_needs`): "500 baseline requests over 15 s" for p50 and p90,
    2,500 for p99."""
    from immunity.judge.sequential import freeze_needs  # numpy, scipy: only for a dry run

    n, seconds = freeze_needs(quantile)
    return f"{n:,} baseline requests over {seconds:g} s"


def plan(
    fleet: Fleet, release: str, fallbacks: dict[str, str], *, walk_all: bool = False
) -> dict[str, Any]:
    """The whole plan as data: `waves` (each with `hosts` and `moments`), `checks`, `bake`.

    A host without a fallback already runs `release`: a canary from the start, skipped
    unless `walk_all` (`deploy --force`: it is walked again, and stays a canary).

    Each moment is one batch of at most `max_unavailable` hosts out of the pool at once:
    `{"out": [...], "in_pool": int, "canary": int, "baseline": int}` (counts of hosts).
    """
    cfg = fleet.config
    n = len(fleet.hosts)
    waves, holdback = with_holdback(
        plan_waves(fleet.hosts, cfg.waves), guard_s=cfg.guard.duration, holdback=cfg.guard.holdback
    )
    held = 1 if holdback is not None else 0
    done = [h.name for h in fleet.hosts if fallbacks.get(h.name) is None]
    out_waves: list[dict[str, Any]] = []
    new = len(done)
    for i, wave in enumerate(waves, start=1):
        names = [h.name for h in wave]
        todo = [h for h in names if walk_all or h not in done]
        moments = []
        for k in range(0, len(todo), cfg.max_unavailable):
            batch = todo[k : k + cfg.max_unavailable]
            if walk_all and all(h in done for h in batch):  # canaries walked again
                moments.append(
                    {"out": batch, "in_pool": n - len(batch), "canary": new - len(batch)}
                    | {"baseline": n - new}
                )
                continue
            moments.append(
                {
                    "out": batch,
                    "in_pool": n - len(batch),
                    "canary": new,
                    "baseline": n - len(batch) - new,
                }
            )
            new += len(batch)
        last = i == len(waves)
        # the last wave has a baseline only when a holdback stays on the old release
        relative = (not last or held > 0) and n - new > 0
        judged = [c.name for c in cfg.checks if relative or c.kind in GUARD_KINDS]
        out_waves.append(
            {
                "wave": i,
                "hosts": names,
                "moments": moments,
                "after": {"canary": new, "baseline": n - new},
                "relative": relative,
                "checks": judged,
            }
        )
    bakes = bakes_of(cfg, len(waves))
    per_bake = [judge_for(cfg, bakes, b).alpha for b in range(1, bakes + 1)]
    guard: dict[str, Any] | None = None
    if cfg.guard.duration > 0:
        compared = holdback is not None and holdback.name not in done
        guard = {
            "duration_s": cfg.guard.duration,
            "holdback": holdback.name if holdback is not None else None,
            "relative": compared,
            "checks": [c.name for c in cfg.checks if compared or c.kind in GUARD_KINDS],
        }
    if holdback is not None:
        out_waves.append(
            {
                "wave": len(waves) + 1,
                "hosts": [holdback.name],
                "moments": [
                    {"out": [holdback.name], "in_pool": n - 1, "canary": n - 1, "baseline": 0}
                ]
                if walk_all or holdback.name not in done
                else [],
                "after": {"canary": n, "baseline": 0},
                "relative": False,
                "checks": [],
                "holdback": True,
            }
        )
    checks = []
    for c in cfg.checks:
        needs = NEEDS[c.kind].format(last=LAST_WAVE[holdback is not None])
        if c.kind == "latency" and c.thresholds_ms is None:
            q = max(c.quantiles)
            needs += (
                f"; thresholds from the baseline's quantiles {c.quantiles}: "
                f"at least {_baseline_requests_for(q)} to set p{q * 100:g}"
            )
        checks.append(
            {
                "name": c.name,
                "kind": c.kind,
                "signal": c.signal,
                "max": c.max,
                "needs": needs,
            }
        )
    return {
        "app": fleet.app,
        "release": release,
        "hosts": n,
        "max_unavailable": cfg.max_unavailable,
        "min_in_pool": n - min(cfg.max_unavailable, max(len(w) for w in waves)),
        "fallbacks": fallbacks,
        "already_on_release": done,
        "waves": out_waves,
        "bake": {
            "min_s": cfg.bake.min,
            "max_s": cfg.bake.max,
            "interval_s": cfg.bake.interval,
            "settle_s": cfg.bake.settle,
            "lag_s": cfg.bake.lag,
        },
        "checks": checks,
        "guard": guard,
        "bakes": bakes,
        "alpha_per_bake": per_bake,
        "timeouts_s": cfg.timeouts.model_dump(),
        "on_inconclusive": cfg.judge.on_inconclusive,
    }


async def dry_run(fleet: Fleet, release: str, *, force: bool = False) -> dict[str, Any]:
    """Preflight (raises PreflightError/ConfigError, exit 2) then the plan; changes nothing.

    When every host already serves `release` and not `force`, `deploy` would end `unchanged`
    touching no host: the plan says so (`unchanged: True`) and plans no wave, bake or guard.
    With `force` every host is walked again, so none is skipped."""
    fallbacks = await preflight(fleet, release)  # what every host runs now (none runs nothing)
    unchanged = not force and bool(fallbacks) and set(fallbacks.values()) == {release}
    # a host already on the release keeps its fallback for a revert but has nothing to switch
    data = plan(
        fleet, release, {k: v for k, v in fallbacks.items() if v != release}, walk_all=force
    )
    data["fallbacks"] = fallbacks
    data["active"] = dict(fallbacks)
    data["unchanged"] = unchanged
    data["force"] = force
    if unchanged:  # nothing would be switched, baked or watched
        data.update(waves=[], guard=None, bakes=0, alpha_per_bake=[])
    return data
