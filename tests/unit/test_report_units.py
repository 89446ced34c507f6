"""Small pieces of the report and the CD outputs, read back the way their readers read them."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pytest
import yaml

from immunity.cli import ci
from immunity.config import parse
from immunity.config.models import ImpactConfig
from immunity.impact import phases

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from cd_parsers import parse_github_output, parse_octopus  # noqa: E402


def test_a_multi_line_reason_survives_github_output_and_octopus(tmp_path: Path) -> None:
    """A value with newlines, `=` and `<<` reads back whole from $GITHUB_OUTPUT, and from an
    Octopus setVariable, as the runner and Calamari parse them."""
    reason = "errors: canary 5xx 4%\nsecond line = x << EOF\n"
    result = {"outcome": "reverted", "release": "v3", "reason": reason, "exit_code": 3}
    out = tmp_path / "out"
    out.write_text("earlier=kept\n")
    gh = ci.GithubReporter({"GITHUB_OUTPUT": str(out)}, stream=open(tmp_path / "log", "w"))  # noqa: SIM115
    gh.finish(result, None, None)
    got = parse_github_output(out.read_text())
    assert got["reason"] == reason
    assert got["earlier"] == "kept"
    assert got["outcome"] == "reverted"
    stream = tmp_path / "octo"
    with open(stream, "w") as f:
        ci.OctopusReporter(stream=f).finish(result, None, None)
    assert parse_octopus(stream.read_text()).variables()["Immunity.VerdictReason"] == reason


def test_secret_values_are_the_configs_environment_references() -> None:
    """Every ${NAME} the config reads is masked, longest first; short values are not."""
    env = {"ES_API_KEY": "k3y-abcdef", "WINRM_PASSWORD": "pw-123456789", "SHORT": "ab"}
    text = "api_key: ${ES_API_KEY}\npassword: ${WINRM_PASSWORD}\nx: ${SHORT}\ny: ${UNSET:-d}\n"
    assert ci.secret_values(text, env) == ["pw-123456789", "k3y-abcdef"]


def test_impact_phases_cut_the_probe_record_at_the_journaled_moments() -> None:
    """Requests fall in the phase of their send time; a gap without a successful answer is
    the phase's longest stall; failures follow expect_status."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    base = t0.timestamp()
    at = lambda s: t0 + dt.timedelta(seconds=s)  # noqa: E731
    moments = [
        (at(2), "wave.started", {"wave": 1}),
        (at(4), "bake.started", {"wave": 1}),
        (at(8), "immune.started", {}),
        (at(9), "deployment.reverted", {}),
    ]
    records = [
        {"at": base + s / 10, "status": 200, "latency_ms": 5.0}
        for s in range(0, 100)
        if not 50 <= s < 75  # no answer sent 5.0-7.5 s: the probe saw nothing served
    ] + [{"at": base + 5.0 + i / 10, "status": 503, "latency_ms": 1.0} for i in range(25)]
    cfg = ImpactConfig(url="http://user:pw@shop.example/", rps=10, expect_status=[200])
    got = phases(records, moments, base, base + 10, t0, cfg)
    assert [p["phase"] for p in got["phases"]] == ["before", "wave 1", "bake 1", "revert", "after"]
    bake = got["phases"][2]
    assert (bake["requests"], bake["failed"]) == (40, 25)
    assert bake["longest_stall_s"] == pytest.approx(2.6, abs=0.01)  # 4.905 -> 7.505
    assert got["phases"][0]["failed"] == 0
    assert got["url"] == "http://shop.example/"  # credentials never journaled
    assert sum(got["seconds"]["requests"]) == len(records)


@pytest.mark.parametrize("page", ["report.md", "octopus.md"])
def test_the_documented_impact_blocks_are_valid(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `impact:` example of the docs validates on top of the IIS/ALB example config."""
    for var in ("WINRM_USER", "WINRM_PASSWORD", "ES_URL", "ES_API_KEY", "SLACK_WEBHOOK_URL"):
        monkeypatch.setenv(var, "https://x.example" if var.endswith("URL") else "x")
    base = yaml.safe_load((ROOT / "examples/iis-alb-elasticsearch.yaml").read_text())
    blocks = [
        b
        for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / page).read_text(), re.S)
        if b.startswith("impact:")
    ]
    assert blocks
    for block in blocks:
        text = yaml.safe_dump({**base, **yaml.safe_load(block)}, sort_keys=False)
        parse(text, f"{page}.yaml")


def test_the_guard_s_verdict_is_shown_as_the_guard_not_as_another_wave() -> None:
    """`deploy`'s summary and `show` name the watch after the last wave "guard"."""
    import io

    from rich.console import Console

    from immunity.cli.show import print_waves

    data = {
        "timeline": {"waves": [{"wave": 1, "hosts": ["h1"]}, {"wave": 2, "hosts": ["h2"]}]},
        "verdicts": [
            {"t": 30.0, "wave": 1, "guard": False, "outcome": "pass", "checks": []},
            {"t": 60.0, "wave": 2, "guard": False, "outcome": "pass", "checks": []},
            {"t": 80.0, "wave": 3, "guard": True, "outcome": "pass", "checks": []},
        ],
    }
    buf = io.StringIO()
    print_waves(Console(file=buf, width=120, color_system=None), data)
    text = buf.getvalue()
    assert "wave 1 (h1)" in text and "wave 2 (h2)" in text
    assert "guard (every host on the release, after the last wave)  pass" in text
    assert "wave 3" not in text


@pytest.mark.parametrize("outcome", ["inconclusive", "held"])
def test_the_sentence_says_inconclusive_once(outcome: str) -> None:
    """The journal's reason starts "inconclusive: ..."; the sentence (the head of `show`
    and of the HTML report) says what happened in its own words, then the reason without
    its leading "inconclusive:" (it read "v6: inconclusive: inconclusive: not enough...")."""
    from immunity.journal.base import DeploymentRecord
    from immunity.report.data import verdict_sentence

    t = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    reason = "inconclusive: not enough evidence to judge v6: errors: no traffic for 90 s"
    record = DeploymentRecord("d1", "shop", "v6", t, t, outcome, reason)
    text = verdict_sentence(record, {"reason": reason})
    assert text.lower().count("inconclusive") <= 1, text
    assert "not enough evidence to judge v6: errors: no traffic for 90 s." in text
    assert text.startswith("v6 could not be judged and the fleet was reverted: ") or (
        text.startswith("v6 was held: the verdict stayed inconclusive: ")
    )


def test_a_resumed_wave_keeps_every_host_it_started_with() -> None:
    """Wave 2 (h2, h3) was interrupted after h2 switched; `resume` starts wave 2 again with
    h3 alone. The timeline (and so `show` and the summary after the run) says wave 2 was
    h2 and h3, once, not "wave 2 (h3)"."""
    from immunity.journal.base import JournalEntry
    from immunity.report.data import timeline

    t0 = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)

    def e(seq: int, kind: str, **data: object) -> JournalEntry:
        return JournalEntry(seq, "d1", t0 + dt.timedelta(seconds=seq), kind, data=data)

    entries = [
        e(1, "wave.started", wave=1, hosts=["h1"]),
        e(2, "wave.passed", wave=1),
        e(3, "wave.started", wave=2, hosts=["h2", "h3"]),
        e(4, "deployment.interrupted"),
        e(5, "deployment.resumed"),
        e(6, "wave.started", wave=2, hosts=["h3"]),
        e(7, "wave.passed", wave=2),
    ]
    waves = timeline(entries, t0)["waves"]
    assert [(w["wave"], w["hosts"]) for w in waves] == [(1, ["h1"]), (2, ["h2", "h3"])]
    assert (waves[1]["start"], waves[1]["end"]) == (3.0, 7.0)


def test_an_incomplete_revert_is_called_a_rejection_only_after_a_failing_verdict() -> None:
    """`revert_incomplete` ends a failed verdict's revert, but also an abort's, an
    inconclusive run's or a rollback's: the sentence (the head of `show` and of the report)
    and the notification's title said "v7 rejected" for all of them."""
    from immunity.domain import Event
    from immunity.journal.base import DeploymentRecord
    from immunity.notify.common import summarize
    from immunity.report.data import verdict_sentence

    t = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    record = DeploymentRecord("d1", "shop", "v7", t, t, "revert_incomplete", "x")
    aborted = verdict_sentence(record, {"reason": "aborted with `resume --abort`"})
    failed = verdict_sentence(record, {"reason": "errors", "verdict": {"outcome": "fail"}})
    assert aborted.startswith("the revert of v7 did not finish"), aborted
    assert failed.startswith("v7 was rejected but the revert did not finish"), failed
    title = summarize(Event("deployment.revert_incomplete", "shop", "d1", "v7", "")).title
    assert "rejected" not in title and "INCOMPLETE" in title, title


def test_a_revert_finished_by_resume_is_reverted_at_the_runs_end() -> None:
    """The CD outputs' `reverted_at` is the verdict's time plus `reverted_after_s`; for a
    revert a resume finished (`reverted_from: resume`) that time counts from the resume,
    so the sum fell between the verdict and the resume: it is the run's end instead."""
    from immunity.cli.ci import outputs

    result = {
        "outcome": "reverted",
        "detected_after_s": 20.5,
        "reverted_after_s": 2.2,
        "reverted_from": "resume",
        "finished_at": "2026-11-30T07:39:35.324700+00:00",
        "verdict": {"outcome": "fail", "decided_at": "2026-11-30T07:39:13.000000+00:00"},
    }
    assert "2026-11-30T07:39:35.324700+00:00" == outputs(result, None)["reverted_at"]
    verdict = {**result, "reverted_from": "verdict"}
    assert "2026-11-30T07:39:15.200000+00:00" == outputs(verdict, None)["reverted_at"]


def test_a_rollbacks_report_names_the_releases_it_moved_in_words() -> None:
    """Trial 3 finding 13: `show` of a rollback read "rollback:v5  rolled_back" and "the
    fleet was rolled back"; it reads "rollback v5 → v4  rolled back" and says from what to
    what."""
    import io

    from rich.console import Console

    from immunity.cli.show import print_deployment
    from immunity.journal.base import DeploymentRecord
    from immunity.report.data import build, verdict_sentence

    at = dt.datetime(2026, 11, 30, 7, 47, tzinfo=dt.UTC)
    data = {"rollback": True, "fallbacks": {"h1": "v4", "h2": "v4"}, "previous": {"h1": "v5"}}
    rec = DeploymentRecord("d1", "shop", "rollback:v5", at, at, "rolled_back", "rollback requested", data)  # fmt: skip
    assert verdict_sentence(rec, {}).startswith("the fleet was rolled back from v5 to v4")
    buf = io.StringIO()
    print_deployment(Console(file=buf, width=200, color_system=None), build(rec, []))
    head = buf.getvalue().splitlines()[0]
    assert "rollback v5 → v4  rolled back" in head and "rolled_back" not in head, head


def test_the_ci_step_summary_says_the_outcome_in_words() -> None:
    """Trial 3 finding 13: the GitHub step summary's heading read "v5 rolled_back"; it reads
    "rolled back", with the outcome's value beside it in the table for whoever greps it."""
    md = ci.summary_markdown(
        {"outcome": "rolled_back", "release": "v5", "exit_code": 0, "deployment_id": "d1"}, None
    )
    assert "immunity: v5 rolled back" in md.splitlines()[0]
    assert "**rolled back** (`rolled_back`, exit 0)" in md


def test_each_verdict_time_names_its_clock_and_seconds_show_one_decimal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trial 4 #18: one rejection read "fail at 19.6s" (`show`), "detected after 16.9s" and
    replay's "fail at 16.1s", three clocks with no name; the GitHub summary printed
    "117.802 s" where the other views say 117.8. Each time now says which clock it is on."""
    import io

    from rich.console import Console

    from immunity.cli import output
    from immunity.cli.show import print_waves

    data = {
        "timeline": {"waves": [{"wave": 1, "hosts": ["h1"]}]},
        "verdicts": [{"t": 19.6, "wave": 1, "guard": False, "outcome": "fail", "checks": []}],
    }
    buf = io.StringIO()
    print_waves(Console(file=buf, width=120, color_system=None), data)
    assert "wave 1 (h1)  fail  19.6 s into the deployment" in buf.getvalue(), buf.getvalue()
    said = {"outcome": "fail", "t_s": 16.1, "reason": "errors: canary 5xx 5%"}
    replay = {
        "deployment_id": "d1",
        "release": "v3",
        "bakes": [
            {
                "wave": 1,
                "purpose": "wave",
                "looks": 30,
                "evidence_s": 16.1,
                "original": said,
                "replayed": said,
            }
        ],
        "original": {"outcome": "fail", "reason": "r"},
        "replayed": {"outcome": "fail", "reason": "r"},
    }
    buf = io.StringIO()
    monkeypatch.setattr(output, "out", Console(file=buf, width=300, color_system=None))
    output.print_replay(replay, "same.yaml")
    assert "fail 16.1 s into the bake: errors" in buf.getvalue(), buf.getvalue()
    md = ci.summary_markdown(
        {
            "outcome": "reverted",
            "release": "v3",
            "reason": "r",
            "deployment_id": "d1",
            "exit_code": 3,
            "duration_s": 117.802,
            "detected_after_s": 16.94,
        },
        None,
    )
    assert "| duration | 117.8 s |" in md, md
    assert "| detected after the first canary entered the pool | 16.9 s |" in md, md


def test_one_deployment_has_one_duration_in_every_view() -> None:
    """Trial 4 #18: one deployment read 128.45 (`--json`), 128.4 (`show`, the report) and
    128.5 (`serve`): the result's figure and the journal's finished_at (written a moment
    later) were each rounded their own way. Every view now gives the result's 128.4."""
    from immunity.journal.base import DeploymentRecord
    from immunity.report.data import build
    from immunity.report.html import render
    from immunity.serve.views import deployment_row

    t0 = dt.datetime(2026, 11, 30, 10, 30, 1, tzinfo=dt.UTC)
    record = DeploymentRecord(
        "d1", "shop", "v2", t0, t0 + dt.timedelta(seconds=128.47), "deployed", "ok",
        {"result": {"outcome": "deployed", "duration_s": 128.4}},
    )  # fmt: skip
    data = build(record, [])
    assert data["duration_s"] == 128.4
    assert "· 128.4 s</div>" in render(data)
    assert deployment_row(record)["duration_s"] == 128.4
