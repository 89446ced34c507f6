"""Verdict reasons as people read them: short where they are shown (terminal, report,
notifications, CD outputs), whole in the journal and `show`; the outcome said once."""

from __future__ import annotations

import json

from immunity.domain import CheckResult, Event, Outcome, brief, reason_beside
from immunity.judge import combine, merge_probe
from immunity.notify.common import event_dict
from immunity.notify.slack import slack_payload

CUSTOMERS = CheckResult(
    "errors",
    Outcome.CONTINUE,
    "the signal sees no traffic on either cohort for 32 s (no customer traffic, or the signal "
    "cannot see it)",
    {"canary_requests": 0.0},
)
PROBE = CheckResult(
    "errors",
    Outcome.PASS,
    "canary 5xx 0% vs baseline 0% over 736 vs 1,473 requests: no regression of ×2 odds or "
    "more (pass e-value 327 ≥ 40) after 20 s",
    {"canary_requests": 736.0},
)


def test_a_check_passed_on_probe_traffic_reads_without_the_customers_aside() -> None:
    """`merge_probe`'s pass carries "(customers: …)" in the journal; `brief` gives the
    probe's reason alone, nested parentheses and all."""
    merged = merge_probe(CUSTOMERS, PROBE)
    assert "(customers: the signal sees no traffic" in merged.reason
    assert f"on probe traffic: {PROBE.reason}" == brief(merged.reason)


def test_a_pass_of_every_check_reads_as_its_head() -> None:
    """`combine`'s "all N check(s) passed after T s: errors: …; latency: …" keeps its head
    wherever it is quoted ("wave 1 passed: …"): each check's reason is shown beside it."""
    other = CheckResult("latency", Outcome.PASS, "no latency regression (pass e-value 50 ≥ 40)")
    verdict = combine([merge_probe(CUSTOMERS, PROBE), other], 32.0)
    assert "all 2 check(s) passed after 32 s" == brief(verdict.reason)
    assert "wave 1 passed: all 2 check(s) passed after 32 s" == brief(
        f"wave 1 passed: {verdict.reason}"
    )


def test_a_slack_message_carries_the_short_reason() -> None:
    """The Slack body for a verdict judged on probe traffic has no "(customers: …)" aside: a
    failed check's probe reason, a pass's head."""
    failed = CheckResult("errors", Outcome.FAIL, merge_probe(CUSTOMERS, PROBE).reason)
    for v, said in (
        (combine([merge_probe(CUSTOMERS, PROBE)], 20.0), "all 1 check(s) passed after 20 s"),
        (combine([failed], 20.0), "errors: on probe traffic: canary 5xx 0% vs baseline 0%"),
    ):
        event = Event(
            "verdict.reached", "shop", "d1", "v2", v.reason, data={"verdict": v.to_dict()}
        )
        body = json.dumps(slack_payload(event), ensure_ascii=False)
        assert said in body and "(customers:" not in body, body


def test_a_reason_that_restates_its_outcome_loses_the_restatement() -> None:
    """After "interrupted v4", "held v5", "aborted v3" the reason does not say it again."""
    assert "SIGINT received; hosts in flight finished" == reason_beside(
        "interrupted", "SIGINT received; hosts in flight finished"
    )
    assert "a signal received; hosts in flight finished, fleet in the pool" == reason_beside(
        "interrupted", "interrupted by signal; hosts in flight finished, fleet in the pool"
    )
    assert "a signal received during the revert (x)" == reason_beside(
        "terminated", "terminated by signal during the revert (x)"
    )
    assert "SIGINT during preflight, before any host was touched" == reason_beside(
        "interrupted", "interrupted by SIGINT during preflight, before any host was touched"
    )
    assert "latency: p90 over" == reason_beside("held", "held: latency: p90 over")
    assert "with `resume --abort`; v3 was not judged" == reason_beside(
        "aborted", "aborted with `resume --abort`; v3 was not judged"
    )
    assert "x" == reason_beside("rolled_back", "rolled back: x")
    assert "errors: canary 5xx 4%" == reason_beside("reverted", "errors: canary 5xx 4%")


def test_a_webhook_body_has_the_short_message_and_the_whole_verdict() -> None:
    """The webhook's `message` is short; its `data` keeps the journaled verdict, reasons whole."""
    failed = CheckResult("errors", Outcome.FAIL, merge_probe(CUSTOMERS, PROBE).reason)
    v = combine([failed], 20.0)
    body = event_dict(
        Event("verdict.failed", "shop", "d1", "v2", v.reason, data={"verdict": v.to_dict()})
    )
    assert "(customers:" not in body["message"] and "on probe traffic" in body["message"]
    assert (
        "(customers: the signal sees no traffic" in body["data"]["verdict"]["checks"][0]["reason"]
    )


def test_the_reports_sentence_says_each_outcome_once() -> None:
    """The report's and `show`'s sentence for every outcome whose reason restates it (as the
    engine writes them, and as older journals did) names the outcome once."""
    import datetime as dt

    from immunity.journal.base import DeploymentRecord
    from immunity.report.data import verdict_sentence

    at = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    cases = {
        ("interrupted", "interrupted by signal; hosts in flight finished, fleet in the pool"): (
            "the deployment of v4 was interrupted: a signal received; hosts in flight finished, "
            "fleet in the pool."
        ),
        ("interrupted", "SIGINT received; hosts in flight finished, fleet in the pool"): (
            "the deployment of v4 was interrupted: SIGINT received; hosts in flight finished, "
            "fleet in the pool."
        ),
        ("terminated", "SIGTERM received; hosts in flight finished, fleet in the pool"): (
            "the deployment of v4 was terminated: SIGTERM received; hosts in flight finished, "
            "fleet in the pool."
        ),
        ("held", "held: latency: p90 over"): (
            "v4 was held: the verdict stayed inconclusive: latency: p90 over."
        ),
        (
            "unchanged",
            "every host already serves v4: nothing was deployed, no host touched (`deploy "
            "--force` walks every host again)",
        ): (
            "v4 already ran on every host: nothing was deployed, no host touched (`deploy "
            "--force` walks every host again)."
        ),
    }
    for (outcome, reason), said in cases.items():
        record = DeploymentRecord("d1", "shop", "v4", at, at, outcome, reason)
        assert said == verdict_sentence(record, {"reason": reason})


def test_a_latency_checks_figures_give_each_cohorts_quantile_in_ms() -> None:
    """The report's figures of a real latency judge's numbers once its p90 threshold is set:
    "p90 <canary> ms vs <baseline> ms baseline: x% vs y% of requests over <threshold> ms"."""
    import re

    from immunity.config.models import JudgeConfig
    from immunity.domain import Observation
    from immunity.judge import LatencyJudge
    from immunity.report.figures import figures

    bounds = (5.0, 10.0, 25.0, 50.0, 100.0)
    judge = LatencyJudge("latency", JudgeConfig(), min_bake_s=30.0, quantiles=(0.9,))
    result = None
    for t in range(1, 61):
        result = judge.look(
            float(t),
            Observation(100, 0, bounds, (10, 40, 30, 15, 5, 0), hosts=1),
            Observation(200, 0, bounds, (30, 100, 50, 16, 4, 0), hosts=2),
        )
    assert result is not None
    lines = [text for source, text in figures(result.numbers, str(result.outcome))]
    assert any(
        re.fullmatch(
            r"p90 [\d.]+ ms vs [\d.]+ ms baseline: [\d.]+% vs [\d.]+% of requests over "
            r"[\d.]+ ms \([\d,]+ vs [\d,]+ requests\); evidence to (fail|pass) \S+ of \S+",
            line,
        )
        for line in lines
    ), lines
