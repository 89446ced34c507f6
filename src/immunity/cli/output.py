"""Everything the CLI prints: errors with their exit codes, the live host table, results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from immunity.errors import ConfigError, ImmunityError

if TYPE_CHECKING:  # the live view (rich.live) is imported by the commands that draw it
    from immunity.cli.live import LiveView

# Text from users, configs and adapters is printed as it is: no emoji codes (`:100:` in
# `file.yaml:100:10` would become an emoji) and no highlighting; styles come only from
# our own markup, and text from outside goes through `plain()` / `escape()`.
out = Console(emoji=False, highlight=False)
err = Console(stderr=True, emoji=False, highlight=False)
# Tables stay readable when output goes to a file or a CI log (no terminal to size them):
# 160 columns, unless COLUMNS says how wide (rich reads it; `COLUMNS=80 immunity history | less`).
if not out.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
    out = Console(width=160, emoji=False, highlight=False)
if not err.is_terminal and not os.environ.get("COLUMNS", "").isdigit():
    err = Console(stderr=True, width=160, emoji=False, highlight=False)

__all__ = ["err", "escape", "out", "plain", "show_error", "write_json"]


def plain(text: object, style: str = "") -> Text:
    """`text` as a rich Text that is never read as markup (for table cells)."""
    return Text(str(text), style=style)


def show_error(exc: ImmunityError, config: str | None = None) -> int:
    """Print an ImmunityError for a human, with the next step (naming `config` when
    known); return its exit code."""
    if isinstance(exc, ConfigError):
        for p in exc.problems:
            err.print(p, markup=False, highlight=False, soft_wrap=True)
    else:
        style = "bold red" if exc.label == "error" else "bold yellow"
        err.print(f"[{style}]{exc.label}[/] [dim]({exc.reference})[/]: ", end="")
        err.print(exc.message, markup=False, highlight=False, soft_wrap=True)
    step = error_next_step(exc).replace("<config>", config or "FILE")
    hint = exc.hint
    if hint and config:  # adapters and the engine do not know the path: "-c FILE" in theirs
        hint = hint.replace("-c FILE", f"-c {config}").replace("-c <config>", f"-c {config}")
    line = next_line(hint, step)
    if line:
        # one line however long (a path, a command to copy): the terminal wraps it, a log
        # or a script reading the last line gets it whole
        err.print("[yellow]next[/]: " + escape(line), highlight=False, soft_wrap=True)
    return exc.exit_code


def next_line(hint: str | None, step: str = "") -> str:
    """The one `next:` line that ends every refusal and failure: the error's hint (what to
    fix, often with the command), then the generic step when the hint names no command."""
    hint = (hint or "").strip()
    if not hint or not step:
        return hint or step
    return hint + (" " if hint.endswith((".", "?", "!", ":")) else "; ") + step


_ERROR_STEPS = {
    "preflight-failed": "nothing was touched: fix what is named, then run the same command again",
    "journal-error": "no further step was taken: make the journal writable again (disk, "
    "permissions, database), then see the fleet with `immunity status -c <config>` and "
    "finish with `immunity resume -c <config>`",
    "journal-unavailable": "nothing was touched: once the journal answers, run the same "
    "command again",
    "journal-locked": "nothing more was changed: once the process or session named is out of "
    "the way (woken, stopped or ended), run the same command again; `immunity resume -c "
    "<config>` finishes a run it left unfinished",
    "revert-incomplete": "see the fleet with `immunity status -c <config>`, then put it back "
    "with `immunity rollback -c <config>`",
    "balancer-error": "check the balancer settings and that it answers; `immunity status "
    "-c <config>` shows what each host serves",
    "host-error": "check the driver settings and that the host answers; `immunity status "
    "-c <config>` shows what each host serves",
    "signal-error": "check the signal's settings and that its source answers",
    "step-failed": "see the fleet with `immunity status -c <config>`",
    "capacity-exhausted": "see the fleet with `immunity status -c <config>`",
    "adapter-error": "check the adapter named and that it answers; `immunity status -c "
    "<config>` shows what each host serves",
    "lease-lost": "nothing more: another process took the run over; `immunity status -c "
    "<config>` shows it",
    "notify-error": "check the notifier's settings (URL, token) and that its receiver answers",
    "nothing-to-resume": "`immunity status -c <config>` shows the fleet, `immunity history -c "
    "<config>` the deployments",
    "nothing-to-roll-back": "`immunity status -c <config>` shows the fleet, `immunity history "
    "-c <config>` the deployments",
    "unknown-deployment": "`immunity history -c <config>` lists every deployment with its id",
}


def error_next_step(exc: ImmunityError) -> str:
    """The next step for an error whose hint does not already give one ("" when it does, or
    when the error says it itself, as config errors and lease errors do); an error of no
    kind listed, with no hint, gets `status` (nothing else would end with a `next:` line)."""
    if exc.hint and ("`immunity " in exc.hint or "immunity config validate" in exc.hint):
        return ""
    step = _ERROR_STEPS.get(exc.reference, "")
    if not step and not exc.hint:
        step = "see the fleet with `immunity status -c <config>`"
    return step


_SIGNAL_FAILED = ("the signal failed", "is not evidence", "the signal has no data", "no evidence: ")
_STARVED = "the canary gets too little of the traffic"
_SEPARATES_NOTHING = "the threshold separates almost none of the"
_DOES_NOT_FIT = "does not fit the latencies this signal measures"
"""`judge.sequential.SEPARATES_NOTHING_WORDS` and `DOES_NOT_FIT` (not imported: the judges
load numpy and scipy)."""


def evidence_step(reason: str, config: str, probe: Any = None) -> str:
    """What gets a release judged next time, from why it was not (an inconclusive or held
    run's `reason`) and the config's `probe` block (a `ProbeConfig`, or None when absent).

    A signal that could not be read needs fixing, not traffic; a canary starved by the
    balancer needs its share; a latency threshold that separated almost none of plenty of
    requests needs another threshold; otherwise there was too little traffic: the probe (add
    it, or raise its rate) or a longer bake."""
    c = f"-c {config}"
    if any(s in reason for s in _SIGNAL_FAILED):
        return (
            "a signal could not be read, so more traffic would not help: fix what the reason "
            f"names (the signal's settings, its source), check with `immunity deploy {c} "
            "--release <release> --dry-run`, then deploy again"
        )
    if _STARVED in reason:
        return (
            "the balancer sent the canary less than its share of the traffic: check the "
            "canary's weight and any stickiness (cookies, `balance source`) in the balancer, "
            "then deploy again"
            + (
                ""
                if probe is not None
                else "; a `probe` block also sends requests straight to the hosts"
            )
        )
    if _SEPARATES_NOTHING in reason and _DOES_NOT_FIT in reason:
        return (
            "a latency check counted plenty of requests, but nearly all of them (or none) on "
            "both cohorts were slower than its configured threshold, so it could not tell them "
            "apart and more traffic would not help: set the check's `thresholds_ms` within the "
            "latencies its signal measures, or remove them to compare at the baseline's "
            "quantiles; then deploy again"
        )
    if _SEPARATES_NOTHING in reason:
        return (
            "a latency check counted plenty of requests, but the latency of both cohorts moved "
            "away from the threshold it set from the baseline early in the bake (nearly every "
            "request on one side of it), so it could not tell them apart; this was not too "
            "little traffic: deploy again when the fleet's latency is steady"
        )
    none = "no traffic" in reason  # none at all: a longer bake would not help
    longer = "" if none else ", or lengthen bake.max"
    if probe is None:
        return (
            f"there was {'no' if none else 'too little'} traffic to judge (no customers at "
            f"this hour?): add a `probe` block to {config} (e.g. `probe: {{paths: [/], rate: "
            "10}`: immunity then sends its own requests straight to the canary and baseline "
            "hosts during each bake; docs/config.md, `probe`), or deploy when customers are "
            f"there{longer}; then deploy again"
        )
    limits = [f"raise `probe.rate` (now {probe.rate:g} requests/s per host)"]
    if probe.max_share < 1.0:
        limits.append(
            f"raise `probe.max_share` (now {probe.max_share:.0%}: with no customers it lets "
            "the probe send nothing)"
        )
    return (
        f"there was {'no' if none else 'too little'} traffic to judge, even with the probe: "
        + ", ".join(limits)
        + f"{longer}; then deploy again"
    )


def next_step(
    outcome: str,
    config: str,
    needs_human: list[str] | None = None,
    *,
    reason: str = "",
    probe: Any = None,
    deployment_id: str = "",
) -> str:
    """What the operator does after an outcome, with the exact command ("" when nothing);
    `deployment_id` names the run in the `immunity show` it points to.

    For an inconclusive or held run, `reason` and `probe` (the config's `probe` block or
    None) say what would get the release judged (`evidence_step`)."""
    c = f"-c {config}"
    hosts = ", ".join(needs_human or []) or "the hosts named above"
    if " during the revert (rollback requested)" in reason:  # engine.immune.revert's words
        stopped = f"`immunity resume {c}` finishes the rollback (the hosts not rolled back yet)"
    elif " during the revert (" in reason:  # a revert (verdict, `resume --abort`) stopped
        stopped = (
            f"`immunity resume {c}` finishes the revert (every host back on the release it "
            "ran before); the release is not deployed further"
        )
    else:
        stopped = (
            f"finish the deployment with `immunity resume {c}`, or revert it with "
            f"`immunity resume {c} --abort`"
        )
    steps = {
        "reverted": "the fleet serves its previous release; see why with "
        f"`{' '.join(('immunity show', c, deployment_id)).strip()}`, "
        "fix the release and deploy a new one",
        "revert_incomplete": f"look at {hosts} (the journal says what failed: "
        f"`immunity status {c}`), then put the fleet back with `immunity rollback {c}`",
        "inconclusive": "the fleet serves its previous release; the release was not found "
        f"worse, only not judged (`immunity show {c}` says why); "
        + evidence_step(reason, config, probe),
        "aborted": "every host serves the release it ran before; the release was not judged, "
        f"not found worse: deploy when ready with `immunity deploy {c} --release NAME`",
        "superseded": f"another process took the deployment over; see it with "
        f"`immunity status {c}`",
        "held": f"continue with `immunity resume {c}` (judged again), or revert with "
        f"`immunity resume {c} --abort`; " + evidence_step(reason, config, probe),
        "interrupted": stopped,
        "terminated": stopped,
        "failed": f"the fleet was reverted to one release before the error was reported; see "
        f"`immunity status {c}` and the traceback, then deploy again or `immunity rollback {c}`",
    }
    return steps.get(outcome, "")


def write_json(data: Any, dest: str | None) -> None:
    """`--json FILE` (or `-` for stdout)."""
    if dest is None:
        return
    text = json.dumps(data, indent=2, default=str) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:  # checked before the command ran (cli.paths.writable); a late failure: one line
        from immunity.cli.paths import wrote

        wrote("the JSON result", dest, lambda: Path(dest).write_text(text, encoding="utf-8"))


def live_view(
    hosts: list[str],
    title: str,
    *,
    waves: int = 0,
    releases: dict[str, str | None] | None = None,
    quantiles: dict[str, list[float]] | None = None,
    live: bool = True,
) -> LiveView:
    """The live view on stderr: redrawn in place on a terminal, plain lines elsewhere."""
    from immunity.cli.live import LiveView

    return LiveView(
        title=title,
        hosts=hosts,
        waves=waves,
        releases=releases,
        quantiles=quantiles,
        live=live and err.is_terminal,
        console=err,
    )


def print_plan(plan: dict[str, Any]) -> None:
    """`deploy --dry-run`: the preflight's findings and the plan, wave by wave."""
    out.print(
        f"[bold]dry run[/]: {plan['app']} → {plan['release']} on {plan['hosts']} host(s); "
        f"preflight passed, nothing was changed",
        highlight=False,
    )
    fb = ", ".join(f"{h}={plan['active'].get(h)}→{r}" for h, r in plan["fallbacks"].items())
    out.print(f"  now (host=active→fallback on revert): {fb}", highlight=False)
    if plan.get("unchanged"):
        out.print(
            f"  every host already serves {plan['release']}: nothing to do; `deploy` touches no "
            "host, bakes nothing and ends `unchanged` (exit 0), journaled but not counted as a "
            "deployment (`rollback` still goes back past it); `--force` walks every host again",
            markup=False,
            highlight=False,
        )
        return
    if plan.get("force") and set(plan["active"].values()) == {plan["release"]}:
        out.print(
            f"  --force: every host already serves {plan['release']} and is walked again "
            "(drain, restart, warm up, enable), baked on the guard rails",
            markup=False,
            highlight=False,
        )
    if plan["already_on_release"] and not plan.get("force"):
        out.print(
            f"  already on {plan['release']} (skipped): {', '.join(plan['already_on_release'])}",
            highlight=False,
        )
    out.print(
        f"  capacity: at most {plan['max_unavailable']} host(s) out of the pool at once; "
        f"never fewer than {plan['min_in_pool']} of {plan['hosts']} serving",
        highlight=False,
    )
    t = Table(title="plan")
    for col in ("wave", "hosts", "moments (out → in pool: canary/baseline)", "judged by"):
        t.add_column(col, overflow="fold")
    for w in plan["waves"]:
        moments = "; ".join(
            f"{','.join(m['out'])} out → {m['in_pool']}: {m['canary']}/{m['baseline']}"
            for m in w["moments"]
        )
        judged = ", ".join(w["checks"]) or "nothing (no checks)"
        if w.get("holdback"):
            judged = "switched after the guard (the holdback)"
        elif not w["relative"]:
            judged += " (no baseline left: guard rails only)"
        g = plan.get("guard")
        if w.get("holdback") and g:  # the guard watches before the holdback switches
            t.add_row(
                "guard",
                "every host but " + ", ".join(w["hosts"]),
                f"nothing switched: {g['duration_s']:g}s watching",
                ", ".join(g["checks"]) or "nothing (no checks)",
            )
        t.add_row(
            "holdback" if w.get("holdback") else f"wave {w['wave']}",
            ", ".join(w["hosts"]),
            moments or "nothing to switch",
            judged,
        )
    out.print(t)
    b = plan["bake"]
    out.print(
        f"  bake after each wave: min {b['min_s']:g}s, max {b['max_s']:g}s, a look every "
        f"{b['interval_s']:g}s (window lags {b['lag_s']:g}s); inconclusive → "
        f"{plan['on_inconclusive']}",
        highlight=False,
    )
    g = plan.get("guard")
    if g:
        against = (
            f"against the holdback {g['holdback']} (on the old release)"
            if g["holdback"] and g.get("relative", True)
            else f"with the guard rails only ({g['holdback']} switched last)"
            if g["holdback"]
            else "with the guard rails only (no holdback)"
        )
        out.print(
            f"  guard after the last wave: {g['duration_s']:g}s watching every new host "
            f"{against}: {', '.join(g['checks']) or 'no checks'}; a fail reverts the whole fleet",
            markup=False,
            highlight=False,
        )
    if "bakes" in plan:
        alphas = plan["alpha_per_bake"]
        later = f", {alphas[1]:.4g} each after it" if len(alphas) > 1 else ""
        out.print(
            f"  false alarms: alpha spent over {plan['bakes']} bake(s): {alphas[0]:.4g} for the "
            f"first wave's{later}",
            highlight=False,
        )
    for c in plan["checks"]:
        limit = f" max {c['max']:g}" if c["max"] is not None else ""
        out.print(
            f"  check {c['name']} ({c['kind']}{limit}) on signal {c['signal']}: needs {c['needs']}",
            markup=False,
            highlight=False,
        )
    if not plan["checks"]:
        out.print("  no checks: every wave passes after bake.min", highlight=False)


def print_replay(data: dict[str, Any], config: str) -> None:
    """`immunity replay`: per bake, what happened beside what the new checks would decide."""
    t = Table(title=f"replay of {data['deployment_id']} ({data['release']}) with {config}")
    for col in ("wave", "evidence", "what happened", "with the new checks"):
        t.add_column(col, overflow="fold")

    def at(v: dict[str, Any]) -> str:
        # bake.looked's clock: seconds since the bake started (`show` counts from the
        # deployment's start), named so the two are not read as one
        return f" {v['t_s']:.1f} s into the bake" if v.get("t_s") is not None else ""

    for b in data["bakes"]:
        o, r = b["original"], b["replayed"]
        t.add_row(
            f"{b['wave']}" + (" (guard)" if b["purpose"] == "guard" else ""),
            f"{b['looks']} looks, {b['evidence_s']:.1f}s",
            escape(f"{o['outcome']}{at(o)}: {o['reason']}"),
            escape(f"{r['outcome']}{at(r)}: {r['reason']}"),
        )
    out.print(t)
    if not data["bakes"]:
        out.print("no bake was recorded for this deployment: nothing to re-judge")
    o, r = data["original"], data["replayed"]
    out.print(f"what happened: {o['outcome']}: {escape(str(o['reason'] or ''))}", highlight=False)
    out.print(
        f"with the new checks: [bold]{escape(r['outcome'])}[/]: {escape(r['reason'])}",
        highlight=False,
    )
