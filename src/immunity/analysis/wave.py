"""One bake's analysis, as pure synchronous state: judges, carry-over, combination, limits.

`BakeAnalysis` is what the engine asks for a verdict (through the async loop in `bake`),
what `resume` replays the journaled evidence into, and what a reader (report, replay) can
re-judge a recorded bake with. It never does I/O and never reads a clock: every look brings
its own `t_s` (seconds of bake time) and observations.

Rules, in the order they apply at each look:

* Checks: every configured check when there is a baseline to compare with; only the
  absolute guard rails (`error_rate_max`, `latency_max`) when there is none (`relative=False`).
* Threshold carry-over: latency thresholds frozen from the baseline in an earlier bake of the
  same deployment (as it last re-set them, when the baseline drifted) are where a later bake
  starts, so one with a smaller baseline need not freeze them again; they still follow the
  baseline if it drifts during that bake.
* A signal that *errored* (raised, timed out) is not the same as one that saw too little
  traffic: its checks are not fed and say `error` for that look, and only
  `judge.consecutive_error_limit` errored looks in a row end the bake (`error`). A look with
  too little traffic is the judges' `inconclusive`, ended by `judge.inconclusive_limit`
  seconds of it.
* Combination: any fail -> fail; any inconclusive -> inconclusive; all pass -> pass;
  otherwise continue (an errored check keeps the look at continue).
* Stopping: fail at once; pass once t >= `bake.min` and the engine allows it (every host of
  the wave is in); at `bake.max` the judges' final word (still undecided is inconclusive).
* The guard (`purpose="guard"`, after the last wave): the judges never certify (they keep
  testing for a fail the whole time); a fail ends it at once, and after `guard.duration` it
  passes as "watched". Looks without evidence (errors, thin traffic) do not end it: the
  release was certified by its waves, the guard only looks for what starts late.
* Alpha spending: bake `bake_no` of `bakes` runs at its share of `judge.alpha`: half for the
  first wave's, the rest evenly over the later ones (see `spending`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from immunity.analysis.spending import judge_for
from immunity.config.models import CheckConfig, Config
from immunity.domain import CheckResult, Cohort, Observation, ObservationStatus, Outcome, Verdict
from immunity.judge import build_judge, combine, merge_probe
from immunity.judge.base import Judge
from immunity.judge.need import Need, check_need
from immunity.signals.probe import NAME as PROBE

GUARD_KINDS = ("error_rate_max", "latency_max")
"""Check kinds that judge the canary alone (they also run when no baseline is left)."""


@dataclass(frozen=True)
class Step:
    """What one look gave: this look's combined verdict, and the bake's verdict if it ended."""

    t_s: float
    verdict: Verdict
    decision: Verdict | None = None
    frozen: Mapping[str, list[float]] = field(default_factory=dict)
    """Latency thresholds frozen at this look (check name -> ms), to carry to later bakes."""


def checks_for(
    config: Config, relative: bool, carry: Mapping[str, Sequence[float]]
) -> list[CheckConfig]:
    """The checks of a bake, with carried latency thresholds filled in."""
    out: list[CheckConfig] = []
    for c in config.checks:
        if not relative and c.kind not in GUARD_KINDS:
            continue
        if c.kind == "latency" and c.thresholds_ms is None and c.name in carry:
            c = c.model_copy(update={"thresholds_ms": list(carry[c.name])})
        out.append(c)
    return out


def probe_twin(check: CheckConfig, carry: Mapping[str, Sequence[float]]) -> CheckConfig:
    """`check`'s "(probe)" twin: the same check on the probe's observations.

    A latency twin compares at its own baseline's quantiles, as the probe times them (from
    this process, network and all: 100-500 ms where customers see 5 ms through the
    balancer): the thresholds an earlier bake's twin froze (`carry` under the twin's name),
    else frozen afresh from this bake's probe baseline. Never the customers' thresholds,
    carried or configured: they are in another signal's terms, and a bar every probe request
    exceeds on both cohorts separates nothing (the check could never decide)."""
    name = f"{check.name} (probe)"
    update: dict[str, object] = {"name": name, "signal": PROBE}
    if check.kind == "latency":
        update["thresholds_ms"] = list(carry[name]) if name in carry else None
    return check.model_copy(update=update)


class BakeAnalysis:
    """One bake's judges and the rules that turn their looks into the bake's verdict."""

    def __init__(
        self,
        config: Config,
        *,
        relative: bool,
        carry: Mapping[str, Sequence[float]] | None = None,
        bakes: int = 1,
        purpose: Literal["wave", "guard"] = "wave",
        bake_no: int | None = None,
    ) -> None:
        self.config = config
        self.relative = relative
        self.purpose = purpose
        self.judge_config = judge_for(config, bakes, bake_no)
        self.carry: dict[str, list[float]] = {k: list(v) for k, v in (carry or {}).items()}
        self.checks = checks_for(config, relative, self.carry)
        # With probe traffic, every check also judges it: a "(probe)" twin on the probe's
        # observations, merged with its customer check into one result (`merge_probe`).
        self.twins: dict[str, str] = {}
        for c in checks_for(config, relative, {}) if config.probe is not None else []:
            twin = probe_twin(c, self.carry)
            self.checks.append(twin)
            self.twins[c.name] = twin.name
        # the guard never certifies: its judges keep testing for a fail until it ends
        min_s = math.inf if purpose == "guard" else config.bake.min
        self.judges: list[tuple[str, str, Judge]] = [
            (
                c.name,
                c.signal,
                build_judge(
                    c,
                    self.judge_config,
                    min_s,
                    carried=self._carried(c),
                    probe=c.signal == PROBE,
                ),
            )
            for c in self.checks
        ]
        self.empty_looks = 0
        self.inconclusive_since: float | None = None
        self.errors: dict[str, int] = {}
        self.last_results: dict[str, CheckResult] = {}
        self.last: Step | None = None
        self.baseline_seen: dict[str, tuple[int, int]] = {}
        self.requests_seen = 0
        """Requests the signals counted on either cohort in this bake (available answers)."""

    def _carried(self, c: CheckConfig) -> bool:
        """Whether latency check `c`'s thresholds are its quantiles' from an earlier bake."""
        carried = self.carry.get(c.name)
        return (
            c.kind == "latency"
            and carried is not None
            and [float(x) for x in c.thresholds_ms or []] == [float(x) for x in carried]
        )

    def need(
        self,
        observations: Mapping[str, Mapping[Cohort | str, Observation]],
        canary_hosts: int,
        baseline_hosts: int,
    ) -> Need | None:
        """What the customers' checks need per canary host to decide by `bake.max`
        (`judge.need`), the most of any check, with this bake's alpha; None while no check can
        say. Accumulates each customer signal's baseline requests and 5xx over the bake from
        `observations` (one look's), for the errors checks' baseline rate."""
        for name, per in observations.items():
            base = per.get(Cohort.BASELINE)
            if name == PROBE or base is None or not base.available:
                continue
            n, x = self.baseline_seen.get(name, (0, 0))
            self.baseline_seen[name] = (n + max(base.requests, 0), x + max(base.errors, 0))
        needs = []
        for c in self.checks:
            if c.signal == PROBE:
                continue
            n, x = self.baseline_seen.get(c.signal, (0, 0))
            got = check_need(
                c,
                self.judge_config,
                canary_hosts=canary_hosts,
                baseline_hosts=baseline_hosts,
                bake_max_s=self.config.bake.max,
                baseline_requests=n,
                baseline_errors=x,
            )
            if got is not None:
                needs.append(got)
        return max(needs, key=lambda n: n.rate, default=None)

    def judging(self) -> str:
        """What this bake judges, counted as its verdicts count checks (a check and its
        probe twin are one): "judging 4 check(s) on customer and probe traffic"."""
        both = " on customer and probe traffic" if self.twins else ""
        return f"judging {len(self.judges) - len(self.twins)} check(s){both}"

    @property
    def signals(self) -> set[str]:
        return {s for _, s, _ in self.judges}

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.judges]

    def _frozen(self) -> dict[str, list[float]]:
        """Thresholds frozen or re-set (the baseline drifted) since the last call,
        remembered in `carry`: a later bake starts from the latest."""
        out: dict[str, list[float]] = {}
        for name, _, judge in self.judges:
            frozen = getattr(judge, "thresholds", None)
            if not frozen or any(t is None for t in frozen):
                continue
            now = [float(t) for t in frozen]
            if self.carry.get(name) != now:
                self.carry[name] = out[name] = now
        return out

    def look(
        self,
        t_s: float,
        observations: Mapping[str, Mapping[Cohort | str, Observation]],
        *,
        errored: Mapping[str, str] | None = None,
        may_pass: bool = True,
    ) -> Step:
        """Feed one look (per signal: canary and baseline observations) and judge.

        `errored` names the signals that raised or timed out at this look, with why; a signal
        whose observation says `failed` has errored too. Their checks are not fed. `may_pass` is False while hosts of the wave are still switching.
        """
        cfg = self.config
        errored = dict(errored or {})
        for signal, per in observations.items():
            for o in per.values():
                if o.status is ObservationStatus.FAILED and signal not in errored:
                    errored[signal] = o.detail or "the signal could not be read"
                if o.available and signal not in errored:
                    self.requests_seen += max(0, int(o.requests))
        # A signal neither observed nor errored was not asked at this look (its next window
        # is not due yet: its delay or its resolution): its checks keep their last word and
        # its error streak neither grows nor resets.
        waiting = {s for s in self.signals if s not in observations and s not in errored}
        for signal in self.signals - waiting:
            self.errors[signal] = self.errors.get(signal, 0) + 1 if signal in errored else 0
        results: list[CheckResult] = []
        for name, signal, judge in self.judges:
            if signal in waiting:
                last = self.last_results.get(name)
                results.append(
                    last
                    if last is not None
                    else CheckResult(
                        name, Outcome.CONTINUE, f"waiting for signal {signal}'s first window"
                    )
                )
                continue
            if signal in errored:
                results.append(
                    CheckResult(
                        name,
                        Outcome.ERROR,
                        f"signal {signal} failed ({self.errors[signal]} look(s) in a row): "
                        f"{errored[signal]}",
                    )
                )
                continue
            per = observations.get(signal, {})
            canary = _get(per, Cohort.CANARY) or Observation.missing("no canary observation")
            baseline = _get(per, Cohort.BASELINE) or Observation.missing("no baseline observation")
            r = judge.look(t_s, canary, baseline)
            results.append(
                r if r.name == name else CheckResult(name, r.outcome, r.reason, r.numbers)
            )
        self.last_results = {r.name: r for r in results}
        results = self._merged(results)
        verdict = combine(results, t_s) if results else _no_checks(t_s, cfg.bake.min)
        step = Step(t_s, verdict, self._decide(t_s, verdict, may_pass), self._frozen())
        self.last = step
        return step

    def _decide(self, t_s: float, verdict: Verdict, may_pass: bool) -> Verdict | None:
        cfg = self.config
        if verdict.outcome is Outcome.FAIL:
            return verdict
        if self.purpose == "guard":
            return self._guard(t_s, verdict)
        worst = max(self.errors.items(), key=lambda kv: kv[1], default=("", 0))
        if worst[1] >= cfg.judge.consecutive_error_limit:
            failing = [r for r in verdict.checks if r.outcome is Outcome.ERROR]
            why = failing[0].reason if failing else f"signal {worst[0]} failed"
            return Verdict(
                Outcome.ERROR,
                f"no evidence: {why} (limit {cfg.judge.consecutive_error_limit} looks)",
                verdict.checks,
            )
        if verdict.outcome is Outcome.PASS and t_s >= cfg.bake.min and may_pass:
            return verdict
        if verdict.outcome is Outcome.INCONCLUSIVE:
            if self.inconclusive_since is None:
                self.inconclusive_since = t_s
            if t_s - self.inconclusive_since >= cfg.judge.inconclusive_limit:
                return verdict
        elif verdict.outcome is not Outcome.CONTINUE or not _only_errors(verdict):
            self.inconclusive_since = None
        if t_s >= cfg.bake.max and may_pass:
            return self.final(t_s)
        return None

    def _guard(self, t_s: float, verdict: Verdict) -> Verdict | None:
        if any(r.outcome in (Outcome.ERROR, Outcome.INCONCLUSIVE) for r in verdict.checks):
            self.empty_looks += 1
        duration = self.config.guard.duration
        if t_s < duration:
            return None
        blind = (
            f"; {self.empty_looks} look(s) had no evidence (a signal failed or traffic was thin)"
            if self.empty_looks
            else ""
        )
        # Each check the guard watched to its end without a fail passed as watched (the
        # guard never certifies, so its judges still say "continue"); one whose last look
        # had no evidence keeps saying so.
        checks = tuple(
            CheckResult(
                r.name,
                Outcome.PASS,
                f"watched {t_s:.0f} s, no regression found: {r.reason}",
                r.numbers,
            )
            if r.outcome is Outcome.CONTINUE
            else r
            for r in verdict.checks
        )
        return Verdict(
            Outcome.PASS,
            f"guard: watched {t_s:.0f} s after the last wave, no regression found "
            f"({len(verdict.checks)} check(s){', with a holdback' if self.relative else ', guard rails only'})"
            f"{blind}",
            checks,
        )

    def final(self, t_s: float) -> Verdict:
        """The judges' final word when the bake's time is up (undecided is inconclusive)."""
        b = self.config.bake
        finals = [
            r if r.name == name else CheckResult(name, r.outcome, r.reason, r.numbers)
            for name, _, judge in self.judges
            for r in (judge.final(t_s),)
        ]
        finals = self._merged(finals)
        final = combine(finals, t_s) if finals else _no_checks(t_s, b.min)
        if final.outcome is Outcome.CONTINUE:
            final = Verdict(
                Outcome.INCONCLUSIVE, f"max bake {b.max:g}s reached: {final.reason}", final.checks
            )
        if final.outcome is Outcome.INCONCLUSIVE and self.requests_seen == 0:
            # said first: with no traffic at all, a longer bake or a bigger wave would not help
            final = Verdict(
                Outcome.INCONCLUSIVE,
                f"the signals saw no traffic on either cohort in {t_s:.0f} s of bake (no "
                f"customer traffic, or the signals cannot see it): {final.reason}",
                final.checks,
            )
        return final

    def _merged(self, results: list[CheckResult]) -> list[CheckResult]:
        """Each check with its probe twin as one result (as they are without a probe)."""
        if not self.twins:
            return results
        by_name = {r.name: r for r in results}
        return [
            merge_probe(r, by_name[self.twins[r.name]]) for r in results if r.name in self.twins
        ]

    def replay(
        self,
        looks: Iterable[
            tuple[float, Mapping[str, Mapping[Cohort | str, Observation]], Mapping[str, str]]
        ],
    ) -> Step | None:
        """Feed recorded looks (t_s, observations, errored) in order; the last step, if any.

        The judges are deterministic, so replaying a bake's journaled looks rebuilds exactly
        the evidence they had: a resumed bake continues from it instead of from zero.
        """
        step = None
        for t_s, observations, errored in looks:
            step = self.look(t_s, observations, errored=errored, may_pass=False)
        return step


def _get(per: Mapping[Cohort | str, Observation], cohort: Cohort) -> Observation | None:
    got = per.get(cohort)
    if got is None:
        got = per.get(str(cohort))
    return got


def _only_errors(verdict: Verdict) -> bool:
    """A look held at continue only by errored checks neither starts nor resets the
    inconclusive clock."""
    waiting = [r for r in verdict.checks if r.outcome is not Outcome.PASS]
    return bool(waiting) and all(r.outcome is Outcome.ERROR for r in waiting)


def _no_checks(t_s: float, min_bake: float) -> Verdict:
    outcome = Outcome.PASS if t_s >= min_bake else Outcome.CONTINUE
    return Verdict(outcome, f"no checks configured; baked {t_s:.0f}s", ())
