"""One deployment in full on a terminal: `immunity show`, and the summary after every run.

Drawn from the report's data (`immunity.report.load`, itself read from the journal), so the
terminal, the HTML report and `--json` say the same thing: the verdict in one sentence, every
wave's verdict with each check's result and numbers, each host's steps, the customers' view
where it was measured, and what was reverted and when.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from immunity.domain import brief, outcome_words, reason_beside

OUTCOME_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def _secs(v: Any) -> str:
    return f"{float(v):.1f}s" if v is not None else "–"


def print_waves(con: Console, data: Mapping[str, Any], *, short: bool = False) -> None:
    """Each wave's (and the guard's) verdict, with every check's outcome and sentence;
    `short`: each sentence as `domain.brief` gives it (the deployment's closing summary;
    `show` prints them whole)."""
    said = brief if short else str
    waves = {w.get("wave"): w for w in (data.get("timeline") or {}).get("waves") or []}
    verdicts: Sequence[Mapping[str, Any]] = data.get("verdicts") or []
    if not verdicts:
        con.print(Text("  no verdict was reached", style="dim"))
        return
    for v in verdicts:
        wave = v.get("wave")
        hosts = ", ".join((waves.get(wave) or {}).get("hosts") or [])
        head = Text("  ")
        guard = bool(v.get("guard")) or wave is None
        head.append("guard" if guard else f"wave {wave}", style="bold")
        held = list(v.get("held_back") or [])
        if guard and held:
            head.append(
                f" (after the last wave: every host on the release but {', '.join(held)}, "
                "held back on the old release)"
            )
        elif guard:
            head.append(" (every host on the release, after the last wave)")
        elif hosts:
            head.append(f" ({hosts})")
        outcome = str(v.get("outcome") or "")
        head.append(f"  {outcome}", style=OUTCOME_STYLE.get(outcome, ""))
        if v.get("t") is not None:  # the clock named: `detected after` and replay use others
            head.append(f"  {float(v['t']):.1f} s into the deployment", style="dim")
        con.print(head)
        checks = v.get("checks") or []
        if not checks:
            con.print(Text("    " + said(str(v.get("reason") or "")), style="dim"))
        for c in checks:
            line = Text("    ")
            line.append(f"{c.get('name')}: ", style="bold")
            o = str(c.get("outcome") or "")
            line.append(o, style=OUTCOME_STYLE.get(o, ""))
            line.append(f" — {said(str(c.get('reason') or ''))}")
            con.print(line)


def print_deployment(con: Console, data: Mapping[str, Any]) -> None:
    """The whole deployment: header, sentence, waves, hosts' steps, customers, revert."""
    head = Text()
    head.append(str(data.get("deployment_id")), style="bold")
    head.append(f"  {data.get('app')}  {data.get('label') or data.get('release')}  ")
    outcome = str(data.get("outcome"))
    head.append(outcome_words(outcome), style={"deployed": "green"}.get(outcome, "yellow"))
    head.append(f"  started {str(data.get('started_at') or '')[:19]}")
    head.append(f", {_secs(data.get('duration_s'))}")
    con.print(head)
    con.print(Text(str(data.get("sentence") or "")))
    con.print(Text("verdicts", style="bold underline"))
    print_waves(con, data)
    hosts: Mapping[str, Sequence[Mapping[str, Any]]] = (data.get("timeline") or {}).get(
        "hosts"
    ) or {}
    if hosts:
        t = Table(title="hosts' steps (seconds from the start)", title_justify="left")
        for col in ("host", "steps", "release"):
            t.add_column(col, overflow="fold")
        for name, steps in hosts.items():
            cells = []
            release = ""
            for s in steps:
                took = (
                    f"{float(s['end']) - float(s['start']):.1f}s"
                    if s.get("end") is not None
                    else "unfinished"
                )
                mark = "" if s.get("ok") else " FAILED" if s.get("ok") is False else ""
                tag = "↩" if s.get("purpose") == "revert" else ""
                cells.append(f"{tag}{s['step']}@{float(s['start']):.0f} {took}{mark}")
                release = str(s.get("release") or release)
            t.add_row(Text(name), Text(", ".join(cells)), Text(release))
        con.print(t)
    impact = data.get("impact")
    if impact:
        print_impact(con, impact)
    revert = data.get("revert")
    if revert:
        line = Text("revert: ", style="bold")
        line.append(f"started at {_secs(revert.get('start'))}")
        for at in revert.get("resumed") or []:  # stopped by a signal, taken up by `resume`
            line.append(f", resumed at {_secs(at)}")
        if revert.get("end") is not None:
            line.append(f", done at {_secs(revert.get('end'))}")
        if revert.get("reverted_after_s") is not None:
            since = revert.get("reverted_from")
            if since is None:  # data written before `reverted_from`
                since = "after the verdict" if data.get("verdict") else ""
            took = f"fleet back in {_secs(revert['reverted_after_s'])} {since}".strip()
            line.append(f" ({took})")
        moved = ", ".join(f"{h['host']}→{h['release']}" for h in revert.get("hosts") or [])
        if moved:
            line.append(f"; {moved}")
        if revert.get("needs_human"):
            line.append(f"; a human is needed for {', '.join(revert['needs_human'])}", "red")
        con.print(line)


def print_impact(con: Console, impact: Mapping[str, Any]) -> None:
    """The customers' view per phase (failed requests, p50/p99/max, longest stall)."""
    phases = impact.get("phases") if isinstance(impact, Mapping) else None
    if not phases:
        return
    t = Table(title="customers' view", title_justify="left")
    for col in ("phase", "requests", "failed", "p50", "p99", "max", "longest stall"):
        t.add_column(col, justify="right" if col != "phase" else "left")
    for p in phases:

        def ms(key: str, p: Mapping[str, Any] = p) -> str:
            v = p.get(key)
            return f"{float(v):.0f} ms" if v is not None else "–"

        stall = p.get("longest_stall_s")
        t.add_row(
            str(p.get("phase", "")),
            str(p.get("requests", "")),
            str(p.get("failed", "")),
            ms("p50_ms"),
            ms("p99_ms"),
            ms("max_ms"),
            f"{float(stall):.2f} s" if stall is not None else "–",
        )
    con.print(t)


CATEGORY_WORDS = {
    "deployed": "deployed",
    "worse": "found worse",
    "inconclusive": "not judged",
    "aborted": "aborted, not judged",
    "unchanged": "no-op: already running",
    "before_start": "stopped in preflight, no host touched",
    "interrupted": "interrupted",
    "rollback": "rollback",
    "ended_by_rollback": "then rolled back",
    "unfinished": "unfinished",
    "other": "other",
}


def span(seconds: float) -> str:
    """A period in words: `45 s`, `12 min`, `5.5 h`, `3.2 days`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


NARROW = 120
"""Below this many columns `history` prints one line per deployment, its reason cut short."""


def print_history(con: Console, data: Mapping[str, Any], config: str | None = None) -> None:
    """`immunity history`: every deployment with its outcome and reason, then the figures as
    percentages over a stated period. At `NARROW` columns or more each reason is whole
    (wrapped, never cut); below that (an 80-column terminal, `COLUMNS=80` when piped) each
    deployment is one line with its id, the reason cut to fit: `immunity show -c <config> ID`
    prints it whole."""
    narrow = con.width < NARROW
    t = Table(
        title=Text(f"{data['app']}: deployments"),
        title_justify="left",
        expand=True,
        box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
        pad_edge=not narrow,
        collapse_padding=narrow,
    )
    if narrow:
        t.add_column("id", no_wrap=True)
        t.add_column("release", no_wrap=True, overflow="ellipsis", max_width=12)
        t.add_column("outcome", no_wrap=True, overflow="ellipsis", max_width=22)
        t.add_column("took", justify="right", no_wrap=True)
        t.add_column("reason", no_wrap=True, overflow="ellipsis", ratio=1, min_width=8)
    else:
        t.add_column("started", no_wrap=True)
        t.add_column("release", overflow="fold")
        t.add_column("outcome", overflow="fold")
        t.add_column("took", justify="right", no_wrap=True)
        t.add_column("reason", overflow="fold", ratio=1)
    sep = ", " if narrow else "\n"
    for d in data["deployments"]:
        took = f"{d['duration_s']:.0f}s" if d.get("duration_s") is not None else ""
        said = outcome_words(str(d["outcome"]))
        outcome = Text(said)
        cat = CATEGORY_WORDS.get(str(d.get("category")), "")
        if d.get("rollback"):
            cat = ""  # its release column says it is one
        cat = cat.removeprefix(f"{said}, ")  # "aborted (not judged)", not "aborted (aborted, …)"
        if cat and cat not in (said, d["outcome"]):
            outcome.append(f" ({cat})", style="dim")
        if d.get("resumed") and d.get("category") != "aborted":  # its abort was the resume
            outcome.append(f"{sep}resumed ×{d['resumed']}", style="yellow")
        elif d.get("interrupted") and d.get("outcome") not in ("interrupted", "terminated"):
            outcome.append(f"{sep}interrupted", style="yellow")
        reason = reason_beside(str(d["outcome"]), str(d.get("reason") or ""))
        t.add_row(
            Text(str(d.get("id") or "") if narrow else str(d["started_at"])[:19].replace("T", " ")),
            Text(str(d.get("label") or d["release"])),
            outcome,
            took,
            Text(" ".join(reason.split()) if narrow else reason),
        )
    con.print(t)
    if narrow and data["deployments"]:
        con.print(
            f"whole reasons: `immunity show -c {config or 'FILE'} ID`",
            highlight=False,
            soft_wrap=True,
        )
    f = data["figures"]
    n = int(f.get("deployments") or 0)
    if not n:
        con.print("no deployments yet")
        return
    period = span(float(f.get("period_s") or 0.0))
    rollbacks = int(f.get("rollbacks") or 0)
    line = Text(
        f"{n} deployment(s)"
        + (f" and {rollbacks} rollback(s)" if rollbacks else "")
        + f" over {period}"
    )
    if f.get("deployments_per_day") is not None:
        line.append(f" ({f['deployments_per_day']:g} a day)")
    # the rate's denominator is the releases judged (deployed or found worse), as it says
    judged = int(f.get("judged", f.get("finished")) or 0)
    rated = f.get("change_failure_rate") is not None and judged
    unjudged = f.get("not_judged") or f.get("no_verdict") or f.get("aborted")
    if rated:
        line.append(
            f"; change-failure rate {100 * float(f['change_failure_rate']):.0f}% "
            f"({f['found_worse']} of {judged} judged found worse"
        )
    elif unjudged:
        line.append("; no change-failure rate (no release judged yet")
    if rated or unjudged:
        if f.get("not_judged"):
            line.append(f"; {f['not_judged']} not judged for lack of evidence")
        if f.get("aborted"):
            line.append(f"; {f['aborted']} aborted (`resume --abort`)")
        if f.get("no_verdict"):
            line.append(f"; {f['no_verdict']} reverted without a verdict")
        if unjudged and judged:
            line.append(", not counted")
        line.append(")")
    if f.get("interrupted"):
        line.append(f"; {f['interrupted']} interrupted (not finished)")
    if f.get("ended_by_rollback"):
        line.append(f"; {f['ended_by_rollback']} interrupted, then rolled back")
    if f.get("unchanged"):
        line.append(
            f"; {f['unchanged']} no-op deploy(s) of the release already running, not counted"
        )
    if f.get("resumed"):
        line.append(f"; {f['resumed']} resumed and finished")
    if f.get("median_verdict_to_reverted_s") is not None:
        line.append(f"; median verdict→fleet reverted {f['median_verdict_to_reverted_s']:.1f} s")
    con.print(line)
