"""The live view drawn from the engine's events, at the sizes people use (80×24, 160×48)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from immunity.cli.live import LiveView, bar, quantile
from immunity.domain import Event

HOSTS = [f"h{i}" for i in range(1, 13)]


def ev(kind: str, message: str = "", **data: Any) -> Event:
    return Event(kind, "shop", "d1", "v2", message, data=data)


def feed(view: LiveView) -> None:
    view(ev("deployment.started", "deploying v2", fallbacks={h: "v1" for h in HOSTS}))
    view(ev("wave.started", "wave 2", wave=2, hosts=["h2", "h3"]))
    view(ev("host.step_started", "", host="h1", step="warmup", purpose="deploy"))
    view(ev("host.switched", "", host="h1", release="v2", purpose="deploy"))
    view(ev("host.step_started", "", host="h2", step="drain", purpose="deploy"))
    view(
        ev(
            "bake.started",
            "wave 2: judging 3 check(s)",
            wave=2,
            bake=2,
            purpose="wave",
            checks=["errors", "latency", "error-rate-guard"],
            kinds={"errors": "errors", "latency": "latency", "error-rate-guard": "error_rate_max"},
            signals={"errors": "lb", "latency": "lb", "error-rate-guard": "lb"},
            needed={
                "errors": {"e_fail_needed": 100, "e_pass_needed": 20},
                "latency": {"e_fail_needed": 200, "e_pass_needed": 20},
                "error-rate-guard": {"e_fail_needed": 100, "e_pass_needed": 20},
            },
            min_s=30,
            max_s=600,
        )
    )
    reason = "errors: canary 5xx 4.8% vs baseline 0.1% over 352 vs 728 requests " * 6
    for look in (1, 2):
        view(
            ev(
                "bake.looked",
                reason,
                look=look,
                t_s=float(look),
                obs={
                    "lb": {
                        "canary": {"n": 176, "x": 8, "lat": [0, 100, 70, 6]},
                        "baseline": {"n": 364, "x": 0, "lat": [10, 300, 54]},
                    },
                    **({"bounds": {"lb": [5, 10, 25, 50, 100]}} if look == 1 else {}),
                },
                checks={
                    "errors": {"o": "continue", "s": {"e_fail": 15.4, "e_pass": 0.004}},
                    "latency": {"o": "continue", "s": {"p50_e_fail": 1.0, "p50_e_pass": 2.0}},
                    "error-rate-guard": {"o": "fail", "s": {"e_fail": 150, "e_pass": 0.0}},
                },
                outcome="continue",
            )
        )


def screen(width: int, height: int) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, height=height, color_system=None)
    view = LiveView(
        title="deploying v2",
        hosts=HOSTS,
        waves=3,
        quantiles={"latency": [0.5, 0.9]},
        live=False,
        console=Console(file=io.StringIO()),
    )
    feed(view)
    console.print(view.render(width, height))
    return buf.getvalue().rstrip("\n").splitlines()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 48)])
def test_the_live_view_fits_the_terminal_and_shows_wave_clock_hosts_and_checks(
    width: int, height: int
) -> None:
    """Header with wave N of M and the bake clock against min/max, host rows, one row per
    check with both cohorts' values and the evidence, and the verdict, within the screen."""
    lines = screen(width, height)
    text = "\n".join(lines)
    assert len(lines) <= height
    assert max(len(line) for line in lines) <= width
    assert "wave 2/3" in lines[0]
    assert "bake 0:0" in lines[0] and "min 0:30" in lines[0] and "max 10:00" in lines[0]
    assert "h2" in text and "drain" in text
    row = next(line for line in lines if line.lstrip().startswith("errors"))
    of = " of " if width >= 100 else "/"  # 80 columns: compact values, whose in "from"
    assert f"4.55%{of}352" in row  # 16 of 352 over two looks
    assert f"0.00%{of}728" in row
    assert "15/100" in row
    guard = next(line for line in lines if "error-rate" in line)
    assert "fail" in guard
    assert any("p50" in line and "latency" in line for line in lines)
    assert "errors: canary 5xx" in text  # the verdict's first lines


def test_a_fleet_taller_than_the_screen_shows_the_hosts_in_flight_and_counts_the_rest() -> None:
    """At 80×24 twelve hosts do not fit: the ones mid-step are listed, the rest summed up."""
    text = "\n".join(screen(80, 24))
    assert "drain" in text
    assert "+2" in text and "2 waiting v1" in text


def test_every_host_has_a_row_on_a_tall_terminal() -> None:
    """At 160×48 each of the twelve hosts gets its own row, with the release it runs."""
    lines = screen(160, 48)
    for h in HOSTS:
        assert any(line.lstrip().startswith(h + " ") for line in lines), h
    assert any(line.lstrip().startswith("h3 ") and "v1" in line for line in lines)


def test_plain_output_prints_a_line_per_step_and_per_change_of_verdict() -> None:
    """Off a terminal: timestamped lines; a bake's looks print only when the verdict changes."""
    buf = io.StringIO()
    view = LiveView(
        title="deploying v2",
        hosts=HOSTS,
        live=False,
        console=Console(file=buf, width=200, color_system=None),
    )
    feed(view)
    lines = buf.getvalue().splitlines()
    assert sum("bake.looked" in line for line in lines) == 1
    assert any("host.step_started" in line for line in lines)
    assert all(line[:2].isdigit() and line[2] == ":" for line in lines)


def test_quantile_interpolates_inside_the_bucket_and_says_when_it_is_past_the_bounds() -> None:
    """p50 of 10 requests in [0,5) and 10 in [5,10) is 5 ms; the overflow bucket is 'inf'."""
    assert 5.0 == quantile([5, 10], [10, 10, 0], 0.5)
    assert None is quantile([5, 10], [0, 0, 0], 0.5)
    assert float("inf") == quantile([5, 10], [0, 0, 4], 0.5)


def test_evidence_bars_are_drawn_on_a_log_scale_toward_the_bar() -> None:
    """An e-value of 10 against a bar of 100 is half the bar; 1 (no evidence) is empty."""
    assert "▮▮▯▯ 10/100" == bar(10, 100, 4)
    assert "▯▯▯▯ 1.0/100" == bar(1, 100, 4)
    assert "10/100" == bar(10, 100, 0)


def history_lines(figures: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    from immunity.cli.show import print_history

    buf = io.StringIO()
    print_history(
        # the wide table (160 columns, piped): whole reasons; below 120 one line each
        Console(file=buf, width=160, color_system=None),
        {"app": "shop", "deployments": rows, "figures": figures},
    )
    return buf.getvalue()


def test_history_states_its_period_gives_rates_in_percent_and_keeps_whole_reasons() -> None:
    """Two deployments minutes apart: no daily rate, the failure rate as a percentage of the
    finished ones, the resumed deployment marked, and a long reason wrapped, not cut."""
    reason = "errors: canary 5xx 4.9% vs baseline 0% over 2,912 vs 5,840 requests " * 3
    rows = [
        {
            "started_at": "2026-11-30T01:00:00+00:00",
            "release": "v2",
            "outcome": "deployed",
            "category": "deployed",
            "duration_s": 80.0,
            "reason": "ok",
            "resumed": 1,
            "interrupted": True,
        },
        {
            "started_at": "2026-11-30T01:02:00+00:00",
            "release": "v3",
            "outcome": "reverted",
            "category": "worse",
            "duration_s": 30.0,
            "reason": reason,
            "resumed": 0,
            "interrupted": False,
        },
    ]
    figures = {
        "deployments": 2,
        "period_s": 180.0,
        "deployments_per_day": None,
        "finished": 2,
        "change_failure_rate": 0.5,
        "found_worse": 1,
        "not_judged": 0,
        "interrupted": 1,
        "median_verdict_to_reverted_s": 4.2,
    }
    text = history_lines(figures, rows)
    flat = " ".join(text.split())
    assert "2 deployment(s) over 3 min;" in flat and "a day" not in flat
    assert "change-failure rate 50% (1 of 2 judged found worse)" in flat
    assert "resumed ×1" in flat
    assert "(found worse)" in flat
    assert "5,840 requests" in flat and flat.count("2,912") == 3  # the whole reason


def test_with_no_customers_a_check_shows_its_probe_traffic_in_one_row() -> None:
    """A quiet hour: the customers' signal counts nothing, the probe does. Each check is one
    row (its "(probe)" twin is judged with it) showing the probe's values, marked as such,
    never "no requests" for a canary that served the probe's requests."""
    buf = io.StringIO()
    view = LiveView(
        title="deploying v3",
        hosts=HOSTS[:3],
        live=False,
        console=Console(file=buf, width=300, color_system=None),
    )
    names = ["errors", "error-rate-guard", "errors (probe)", "error-rate-guard (probe)"]
    signals = {n: "probe" if n.endswith("(probe)") else "lb" for n in names}
    view(ev("bake.started", "wave 1", wave=1, bake=1, purpose="wave", checks=names,
            kinds={n: "errors" if "guard" not in n else "error_rate_max" for n in names},
            signals=signals, needed={}, min_s=20, max_s=90))  # fmt: skip
    view(
        ev(
            "bake.looked",
            "errors: on probe traffic: canary 5xx 6.0% vs baseline 0% over 233 vs 466",
            look=20,
            t_s=20.0,
            obs={
                "lb": {"canary": {"n": 0, "x": 0}, "baseline": {"n": 0, "x": 0}},
                "probe": {"canary": {"n": 233, "x": 14}, "baseline": {"n": 466, "x": 0}},
            },
            checks={
                "errors": {"o": "fail", "s": {"e_fail": 1, "probe_e_fail": 609}},
                "error-rate-guard": {"o": "continue", "s": {"e_fail": 1}},
            },
            outcome="fail",
        )
    )
    assert list(view.checks) == ["errors", "error-rate-guard"]
    line = next(line for line in buf.getvalue().splitlines() if "bake.looked" in line)
    assert "errors fail (canary 6.01% of 233 (probe), baseline 0.00% of 466 (probe))" in line
    assert "no requests" not in line


def test_history_rate_counts_only_judged_releases_and_a_resumed_run_is_not_interrupted(
    tmp_path: Any,
) -> None:
    """Six deployments: two deployed (one of them interrupted, then resumed to the end),
    one found worse, two not judged (inconclusive), one still interrupted. The
    change-failure rate is 1 of the 3 judged (not 1 of 6, nor of the 5 finished); only the
    run left stopped counts as interrupted; the resumed one counts as resumed."""
    import datetime as dt

    import anyio

    from immunity.journal import open_journal
    from immunity.report.history import history

    async def build() -> dict[str, Any]:
        j = open_journal(tmp_path / "journal.db", None)
        try:
            plan = [
                ("v2", "deployed", "pass", []),
                ("v3", "reverted", "fail", []),
                ("v4", "inconclusive", "inconclusive", []),
                ("v4", "held", "inconclusive", []),
                ("v4", "deployed", "pass", ["deployment.interrupted", "deployment.resumed"]),
                ("v5", None, None, ["deployment.interrupted"]),
            ]
            for release, outcome, verdict, kinds in plan:
                rec = await j.begin("shop", release, {})
                for kind in kinds:
                    await j.append(rec.id, kind, data={})
                if outcome is not None:
                    result = {"verdict": {"outcome": verdict}, "reverted_after_s": 3.0}
                    await j.finish(rec.id, outcome, f"{release} {outcome}", {"result": result})
            return await history(j, "shop", dt.datetime.now(dt.UTC))
        finally:
            await j.close()

    data = anyio.run(build)
    f = data["figures"]
    assert (f["judged"], f["found_worse"], f["change_failure_rate"]) == (3, 1, 0.3333)
    assert (f["not_judged"], f["interrupted"], f["resumed"]) == (2, 1, 1)
    text = " ".join(history_lines(f, data["deployments"]).split())
    assert "change-failure rate 33% (1 of 3 judged found worse; 2 not judged" in text
    assert "1 interrupted (not finished); 1 resumed and finished" in text


def _probe_view() -> tuple[LiveView, io.StringIO]:
    buf = io.StringIO()
    view = LiveView(
        title="deploying v3",
        hosts=HOSTS[:3],
        live=False,
        console=Console(file=buf, width=300, color_system=None),
    )
    names = ["errors", "error-rate-guard", "errors (probe)", "error-rate-guard (probe)"]
    view(ev("bake.started", "wave 1", wave=1, bake=1, purpose="wave", checks=names,
            kinds={n: "errors" if "guard" not in n else "error_rate_max" for n in names},
            signals={n: "probe" if n.endswith("(probe)") else "lb" for n in names},
            needed={n: {"e_fail_needed": 600, "e_pass_needed": 40} for n in names},
            min_s=20, max_s=90))  # fmt: skip
    return view, buf


def _row(view: LiveView, name: str) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(view._checks_table(200))
    return next(line for line in buf.getvalue().splitlines() if line.strip().startswith(name))


def test_a_row_decided_by_the_probe_shows_the_probes_values_and_bars() -> None:
    """Customers and probe both bring traffic; the probe certifies the pass (its e-value
    651.9 ≥ 20, the customers' 20.8 < 40): the row shows the probe's counts and its bar,
    as the verdict's sentence does ("on probe traffic: ..."), not the customers' 1.0/40."""
    view, _ = _probe_view()
    view(ev("bake.looked", "continue", look=30, t_s=30.0,
            obs={"lb": {"canary": {"n": 40, "x": 0}, "baseline": {"n": 160, "x": 0}},
                 "probe": {"canary": {"n": 366, "x": 0}, "baseline": {"n": 1464, "x": 0}}},
            checks={"errors": {"o": "pass", "r": "on probe traffic: canary 5xx 0% ...",
                               "s": {"e_fail": 1, "e_pass": 20.8,
                                     "probe_e_fail": 0.03, "probe_e_pass": 651.9}},
                    "error-rate-guard": {"o": "continue",
                                         "s": {"e_fail": 1, "e_pass": 20.8,
                                               "probe_e_fail": 1000, "probe_e_pass": 1}}},
            outcome="continue"))  # fmt: skip
    errors = _row(view, "errors")
    assert "of 366 (probe)" in errors and "652/40" in errors and "pass" in errors, errors
    # the customers brought traffic and speak for the guard: their numbers, their bars
    guard = _row(view, "error-rate-guard")
    assert "of 40" in guard and "(probe)" not in guard, guard
    assert "1.0/600" in guard and "21/40" in guard, guard  # not the probe's 1k/600


def test_a_decided_row_without_a_sentence_shows_the_side_that_reached_its_bar() -> None:
    """No sentence journaled for the look: a pass whose customers' e-value (20.8) is under
    its bar (40) while the probe's (651.9) is over it was the probe's; a fail whose
    customers' e-value reached 600 was the customers'."""
    view, _ = _probe_view()
    view(ev("bake.looked", "x", look=30, t_s=30.0,
            obs={"lb": {"canary": {"n": 40, "x": 0}, "baseline": {"n": 160, "x": 0}},
                 "probe": {"canary": {"n": 366, "x": 9}, "baseline": {"n": 1464, "x": 0}}},
            checks={"errors": {"o": "pass", "s": {"e_pass": 20.8, "probe_e_pass": 651.9}},
                    "error-rate-guard": {"o": "fail",
                                         "s": {"e_fail": 700, "probe_e_fail": 5000}}},
            outcome="fail"))  # fmt: skip
    assert "(probe)" in _row(view, "errors")
    guard = _row(view, "error-rate-guard")
    assert "(probe)" not in guard and "700/600" in guard, guard


def test_resume_replays_the_bake_so_far_so_the_table_counts_what_the_judge_counts() -> None:
    """`resume` takes up a bake whose looks are in the journal (the judges replay them): the
    view, given those entries first, shows the checks with their kinds and the counts of
    every look, before and after the resume ("420 vs 412 requests", not "no requests")."""
    view = LiveView(title="resuming", hosts=HOSTS[:3], live=False,
                    console=Console(file=io.StringIO(), width=200, color_system=None))  # fmt: skip
    started = ev("bake.started", "", wave=1, bake=1, purpose="wave", checks=["errors"],
                 kinds={"errors": "errors"}, signals={"errors": "lb"},
                 needed={"errors": {"e_fail_needed": 300, "e_pass_needed": 40}},
                 min_s=20, max_s=90)  # fmt: skip

    def look(i: int, n_c: int, n_b: int) -> Event:
        return ev("bake.looked", "", look=i, t_s=float(i), outcome="continue",
                  obs={"lb": {"canary": {"n": n_c, "x": 1}, "baseline": {"n": n_b, "x": 0}}},
                  checks={"errors": {"o": "continue", "s": {"e_fail": 2.0, "e_pass": 3.0}}})  # fmt: skip

    view.replay([started, look(1, 200, 200), look(2, 200, 200)])
    view(ev("bake.resumed", "", wave=1, bake=1, looks=2, t_s=2.0))
    view(look(3, 20, 12))
    row = _row(view, "errors")
    assert "of 420" in row and "of 412" in row and "3.0/40" in row, row


def test_a_deployed_rows_reason_covers_every_wave_not_only_the_last_guard_rails() -> None:
    """The record's reason is the last bake's (wave 3: the guard rails alone); history's
    row names what passed in each wave, then that sentence."""
    import datetime as dt

    from immunity.journal.base import DeploymentRecord, JournalEntry
    from immunity.report.history import _whole_reason

    t = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)

    def passed(seq: int, wave: int, names: list[str]) -> JournalEntry:
        checks = [{"name": n, "outcome": "pass"} for n in names]
        verdict = {"outcome": "pass", "checks": checks}
        return JournalEntry(
            seq, "d1", t, "verdict.reached", data={"wave": wave, "verdict": verdict}
        )

    entries = [
        passed(1, 1, ["errors", "latency", "error-rate-guard"]),
        passed(2, 2, ["errors", "latency", "error-rate-guard"]),
        passed(3, 3, ["error-rate-guard"]),
    ]
    rec = DeploymentRecord("d1", "shop", "v2", t, t, "deployed", "error-rate-guard: 0% of 3,842")
    text = _whole_reason(rec, entries) or ""
    assert text.startswith("wave 1: errors, latency, error-rate-guard passed; wave 2: errors")
    assert text.endswith(
        "wave 3: error-rate-guard passed. Last verdict: error-rate-guard: 0% of 3,842"
    )
    reverted = DeploymentRecord("d2", "shop", "v3", t, t, "reverted", "errors: worse")
    assert _whole_reason(reverted, entries) is None


def _quiet_hour_view(width: int = 80) -> LiveView:
    """Five hosts, four checks each with its probe twin; the customers brought wave 3's
    canary 4,503 requests, then stopped: the probe alone brings requests from look 2 on."""
    view = LiveView(
        title="deploying v7",
        hosts=HOSTS[:5],
        waves=3,
        quantiles={"latency": [0.5, 0.9]},
        live=False,
        console=Console(file=io.StringIO(), width=300, color_system=None),
    )
    names = ["errors", "latency", "p99-guard", "error-rate-guard"]
    kinds = dict(zip(names, ["errors", "latency", "latency_max", "error_rate_max"], strict=True))
    every = names + [n + " (probe)" for n in names]
    view(ev("wave.started", "wave 3", wave=3, hosts=["h4"]))
    view(ev("bake.started", "wave 3", wave=3, bake=3, purpose="wave", checks=every,
            kinds={n: kinds[n.removesuffix(" (probe)")] for n in every},
            signals={n: "probe" if n.endswith("(probe)") else "lb" for n in every},
            needed={n: {"e_fail_needed": 600, "e_pass_needed": 40} for n in every},
            min_s=20, max_s=90))  # fmt: skip
    bounds = {"probe": [5, 10, 100, 500, 1000], "lb": [5, 10, 100, 500, 1000]}
    customers = {"canary": {"n": 4503, "x": 0, "lat": [4000, 503]},
                 "baseline": {"n": 9000, "x": 0, "lat": [8000, 1000]}}  # fmt: skip
    probe = {"canary": {"n": 1763, "x": 0, "lat": [0, 10, 500, 1200, 53]},
             "baseline": {"n": 478, "x": 0, "lat": [0, 5, 100, 350, 23]}}  # fmt: skip
    quiet = {"canary": {"n": 0, "x": 0}, "baseline": {"n": 0, "x": 0}}
    for look, obs in ((1, {"lb": customers, "bounds": bounds}), (2, {"lb": quiet, "probe": probe})):
        view(ev("bake.looked", "x", look=look, t_s=float(look), obs=obs, outcome="continue",
                checks={n: {"o": "continue", "s": {"e_fail": 1, "e_pass": 1}} for n in names}))  # fmt: skip
    return view


def test_at_80_columns_check_names_and_whose_numbers_they_are_stay_visible() -> None:
    """Trial 3 finding 11: at 80x24 "error-rate…" and "0.00% of 83 (…" were cut, so it was
    not visible whether the numbers were the customers' or the probe's. The check column
    keeps whole names, a "from" column says probe or customers (trial 4 #4: it said
    "real"), the values are compact."""
    view = _quiet_hour_view()
    buf = io.StringIO()
    Console(file=buf, width=80, height=24, color_system=None).print(view.render(80, 24))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in ("errors", "latency", "p99-guard", "error-rate-guard"):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "probe" in row and "…" not in row, row
    guard = next(line for line in lines if line.startswith("error-rate-guard "))
    assert "0.0%/1.8k" in guard and "guardrail" in guard, guard


def test_plain_lines_show_the_probes_numbers_once_it_takes_over() -> None:
    """Trial 3 finding 11: after the customers stopped mid-wave, the timestamped bake.looked
    lines kept repeating their frozen numbers ("canary 0.00% of 4,503"); once only the probe
    brings the canary requests, a line shows the probe's."""
    view = _quiet_hour_view()
    buf = io.StringIO()
    view.console = Console(file=buf, width=400, color_system=None)
    view(ev("bake.looked", "x", look=30, t_s=30.0, outcome="continue",
            obs={"lb": {"canary": {"n": 0, "x": 0}, "baseline": {"n": 0, "x": 0}},
                 "probe": {"canary": {"n": 40, "x": 0}, "baseline": {"n": 40, "x": 0}}},
            checks={"errors": {"o": "continue", "s": {"e_fail": 1, "e_pass": 1}}}))  # fmt: skip
    line = buf.getvalue()
    assert "errors continue (canary 0.00% of 1,803 (probe)" in line, line
    assert "4,503" not in line


def test_the_header_counts_planned_waves_only_and_drops_the_counter_at_the_end() -> None:
    """Trial 3 finding 11: after success the header read "wave 5/3": the guard and the
    holdback's switch go on counting waves past the plan. The holdback's switch reads
    "holdback"; once the run ended, the outcome alone."""
    view = _quiet_hour_view()
    head = lambda: view._header(120).plain  # noqa: E731
    assert "wave 3/3" in head()
    view(ev("guard.started", "guard", wave=4, holdback="h5", held_back=["h5"]))
    view(ev("bake.started", "guard", wave=4, bake=4, purpose="guard", checks=[], max_s=20))
    assert "/3" not in head() and "guard" in head()
    view(ev("wave.started", "wave 5", wave=5, hosts=["h5"]))
    assert "holdback" in head() and "5/3" not in head()
    view(ev("deployment.succeeded", "every host serves v7"))
    assert "succeeded" in head() and "wave" not in head() and "holdback" not in head()


def test_a_latency_guard_rail_is_shown_at_its_own_quantile_without_configured_quantiles() -> None:
    """`immunity demo` draws the view without the config's quantiles: a p99 guard rail's
    canary value is its p99 (from the judge's `bar`, 1%), not a p50 under a p99 check's name
    (the demo printed "p99-guard continue (canary p50 8.3 ms, …)")."""
    buf = io.StringIO()
    view = LiveView(
        title="deploying v2",
        hosts=["h1", "h2"],
        live=False,
        console=Console(file=buf, width=200, color_system=None),
    )
    view(ev("wave.started", "wave 1", wave=1, hosts=["h1"]))
    view(
        ev(
            "bake.started",
            "wave 1: judging 1 check(s)",
            wave=1,
            bake=1,
            purpose="wave",
            checks=["p99-guard"],
            kinds={"p99-guard": "latency_max"},
            signals={"p99-guard": "lb"},
            needed={"p99-guard": {"e_fail_needed": 400, "e_pass_needed": 20}},
            min_s=2,
            max_s=60,
        )
    )
    view(
        ev(
            "bake.looked",
            "",
            look=1,
            t_s=1.0,
            obs={
                "lb": {
                    "canary": {"n": 100, "x": 0, "lat": [50, 40, 9, 1]},
                    "baseline": {"n": 200, "x": 0, "lat": [100, 80, 20]},
                },
                "bounds": {"lb": [5, 10, 25]},
            },
            checks={"p99-guard": {"o": "continue", "s": {"bar": 0.01, "e_fail": 1.0}}},
            outcome="continue",
        )
    )
    line = next(x for x in buf.getvalue().splitlines() if "bake.looked" in x)
    assert "p99-guard continue (canary p99 " in line and "p50" not in line, line


def test_bars_keep_a_decimal_in_thousands_and_a_switching_host_shows_both_releases() -> None:
    """Trial 4 #2: bars of 2,500 and 1,600 both printed "2k" (and 3,385 "3k"); #1: a host
    warming up v4 read "v2" until it switched (`serve` said v4): it reads "v2 → v4", and
    "v4" once switched; #4: the 80-column "from" column said "real" for customer traffic."""
    assert bar(3385, 2500, 0) == "3.4k/2.5k"
    assert bar(3135, 1600, 0) == "3.1k/1.6k"
    assert bar(2000, 12_000, 0) == "2k/12k"
    view = LiveView(
        title="deploying v4", hosts=["h1", "h2"], live=False, console=Console(file=io.StringIO())
    )
    view(Event("deployment.started", "shop", "d1", "v4", "", data={"fallbacks": {"h1": "v2"}}))
    start = {"host": "h1", "release": "v4", "purpose": "deploy"}
    view(Event("host.step_started", "shop", "d1", "v4", "", data={**start, "step": "warmup"}))

    def h1_row() -> str:
        buf = io.StringIO()
        Console(file=buf, width=80, height=24, color_system=None).print(view.render(80, 24))
        return next(ln for ln in buf.getvalue().splitlines() if ln.lstrip().startswith("h1 "))

    assert h1_row().split()[1:4] == ["v2", "→", "v4"], h1_row()
    view(Event("host.switched", "shop", "d1", "v4", "", data=start))
    assert h1_row().split()[1:3] == ["v4", "serving"], h1_row()
    row = next(ln for ln in screen(80, 24) if ln.lstrip().startswith("errors"))
    assert row.split()[1] == "customers", row
