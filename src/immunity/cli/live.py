"""The live view of a run: a header, one row per host, one row per check, the verdict.

Fed by the engine's events (the same kinds as the journal, see docs/journal.md): host steps
move the host rows, `wave.started`/`bake.started` set the header's wave counter and bake
clock, every `bake.looked` updates the check rows with the canary's and the baseline's values
so far in this bake and the evidence toward fail and toward pass (e-value against the bar it
must reach, drawn on a log scale: 1 is no evidence, the bar is a full bar).

On a terminal it redraws in place (rich `Live`) and uses the terminal's width and height: at
80×24 the header, the hosts in flight, the checks and the first lines of the verdict fit; on a
taller terminal every host gets a row. Elsewhere (a CI log, a pipe) it prints plain
timestamped lines, one per step and per change of verdict.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from immunity.domain import PROBE_SIGNAL, Event, brief, histogram_quantile

PROBE_SUFFIX = " (probe)"
"""A check's twin on probe traffic is named after it with this suffix (`analysis.wave`)."""

PHASE_STYLE = {
    "drain": "yellow",
    "stop": "yellow",
    "install": "cyan",
    "start": "cyan",
    "verify": "cyan",
    "warmup": "magenta",
    "enable": "yellow",
    "serving": "green",
    "failed": "bold red",
    "waiting": "dim",
}
STATE_STYLE = {
    "pass": "green",
    "fail": "bold red",
    "continue": "",
    "inconclusive": "yellow",
    "error": "red",
}
IN_FLIGHT = {"drain", "stop", "install", "start", "verify", "warmup", "enable", "failed"}


def clock(seconds: float) -> str:
    """`m:ss` (or `h:mm:ss`) for a duration in seconds."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def quantile(bounds: Sequence[float], buckets: Sequence[float], q: float) -> float | None:
    """The `q` quantile (ms) of a latency histogram (see `histogram_quantile`); None when empty,
    `inf` past the last bound."""
    v = histogram_quantile(bounds, [int(b) for b in buckets], q)
    return None if math.isnan(v) else v


def ms_text(v: float | None) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "over range"
    return f"{v:,.0f} ms" if v >= 10 else f"{v:.1f} ms"


def bar(e: float | None, needed: float | None, width: int) -> str:
    """Evidence `e` against the bar `needed`, on a log scale: `▮▮▯▯ 3.2/100`."""
    if e is None or not needed or needed <= 1:
        return ""
    frac = 0.0 if e <= 1 else min(1.0, math.log(e) / math.log(needed))
    full = round(frac * width)
    glyphs = "▮" * full + "▯" * (width - full) + " " if width else ""
    return f"{glyphs}{_short(e)}/{_short(needed)}"


def _short(x: float) -> str:
    if x >= 1e6:
        return "≥1M"
    if x >= 10_000:
        return f"{x / 1000:.0f}k"
    if x >= 1000:  # 2,500 and 1,600 are "2.5k" and "1.6k", not both "2k"
        return f"{x / 1000:.1f}".removesuffix(".0") + "k"
    if x >= 10:
        return f"{x:.0f}"
    return f"{x:.1f}"


@dataclass
class _Host:
    release: str = ""
    target: str = ""
    """The release a step in flight moves the host to (`release` is the one it served
    before): the row reads "v2 → v4" until `host.switched`."""
    phase: str = "waiting"
    since: float = field(default_factory=time.monotonic)
    note: str = ""


@dataclass
class _Check:
    name: str
    kind: str = ""
    signal: str = ""
    needed: Mapping[str, float] = field(default_factory=dict)
    state: str = "continue"
    stats: Mapping[str, float] = field(default_factory=dict)
    n: dict[str, float] = field(default_factory=lambda: {"canary": 0.0, "baseline": 0.0})
    x: dict[str, float] = field(default_factory=lambda: {"canary": 0.0, "baseline": 0.0})
    lat: dict[str, list[float]] = field(default_factory=lambda: {"canary": [], "baseline": []})
    probed: bool = False
    """The check also judges probe traffic (its "(probe)" twin, merged into this row)."""
    reason: str = ""
    """The check's last journaled sentence (`r`): "on probe traffic: ..." when the probe
    decided or speaks for it."""
    pn: dict[str, float] = field(default_factory=lambda: {"canary": 0.0, "baseline": 0.0})
    px: dict[str, float] = field(default_factory=lambda: {"canary": 0.0, "baseline": 0.0})
    plat: dict[str, list[float]] = field(default_factory=lambda: {"canary": [], "baseline": []})
    probe_now: bool = False
    """At the last look only the probe brought the canary requests (the customers' signal
    counted none): the probe has taken over, and its numbers are the ones that move."""


class LiveView:
    """What a person watches during `deploy`, `resume` and `rollback`; an event sink."""

    def __init__(
        self,
        *,
        title: str,
        hosts: Sequence[str],
        waves: int = 0,
        releases: Mapping[str, str | None] | None = None,
        quantiles: Mapping[str, Sequence[float]] | None = None,
        live: bool,
        console: Console,
    ) -> None:
        self.title = title
        self.quantiles = dict(quantiles or {})
        self.console = console
        self.waves = waves
        self.wave = 0
        self.stage = ""  # "wave 2/3", "guard", "holdback", "" once the run ended
        self.phase = "preflight"
        self.hosts = {h: _Host(release=(releases or {}).get(h) or "") for h in hosts}
        self.checks: dict[str, _Check] = {}
        self.bounds: dict[str, list[float]] = {}
        self.bake_at: float | None = None
        self.bake_t = 0.0
        self.bake_min = 0.0
        self.bake_max = 0.0
        self.bake_purpose = "wave"
        self.verdict = ""
        self._last_printed_outcome: str | None = None
        self._live = (
            Live(self, console=console, refresh_per_second=4, transient=False) if live else None
        )

    # -- the sink ---------------------------------------------------------------------------

    def __enter__(self) -> LiveView:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live:
            self._live.refresh()
            self._live.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        self.apply(event)
        if self._live:
            self._live.refresh()
        else:
            self._print(event)

    def replay(self, events: Sequence[Event]) -> None:
        """Take up an interrupted run's journal before `resume` goes on: the bake's checks
        (kinds, signals, bars) and the evidence of its looks so far, which the judges replay
        too, so the table counts what the verdict line counts (it showed "no requests" and
        empty bars next to "420 vs 412 requests"). Nothing is printed."""
        for event in events:
            self.apply(event)
        self.verdict = ""

    def apply(self, event: Event) -> None:
        """Update the view's state from one event."""
        d = event.data
        kind = event.kind
        host = d.get("host")
        if isinstance(host, str) and host in self.hosts:
            self._host(self.hosts[host], kind, d, event.message)
        if kind in ("deployment.started", "deployment.resumed", "rollback.started"):
            fallbacks = d.get("fallbacks") or d.get("targets") or {}
            for name, rel in dict(fallbacks).items():
                row = self.hosts.get(name)
                if row is not None and not row.release and kind != "rollback.started":
                    row.release = str(rel)
            self.phase = "rolling back" if kind == "rollback.started" else "switching"
            if kind == "deployment.resumed":
                self.title = f"{self.title} {event.release}"
                for row in self.hosts.values():  # already on the release: nothing to wait for
                    if row.release == event.release and row.phase == "waiting":
                        row.phase = "serving"
        elif kind == "wave.started":
            self.wave = int(d.get("wave", self.wave))
            self.phase = "switching"
            # past the planned waves: the holdback's switch after the guard (the wave index
            # goes on counting, so the header read "wave 5/3")
            past = bool(self.waves) and self.wave > self.waves
            self.stage = "holdback" if past else f"wave {self.wave}"
            if self.waves and not past:
                self.stage += f"/{self.waves}"
        elif kind == "guard.started":
            self.stage = ""  # the phase and the clock say "guard"
        elif kind == "bake.started":
            self.bake_at = time.monotonic()
            self.bake_t = 0.0
            self.bake_min = float(d.get("min_s", 0.0))
            self.bake_max = float(d.get("max_s", 0.0))
            self.bake_purpose = str(d.get("purpose", "wave"))
            self.phase = "guard" if self.bake_purpose == "guard" else "baking"
            kinds, signals, needed = d.get("kinds", {}), d.get("signals", {}), d.get("needed", {})
            names = list(d.get("checks", []))
            # a check's "(probe)" twin is judged with it and journaled as one result: one row
            twins = {
                n for n in names if n.endswith(PROBE_SUFFIX) and n[: -len(PROBE_SUFFIX)] in names
            }
            self.checks = {
                n: _Check(
                    n,
                    kinds.get(n, ""),
                    signals.get(n, ""),
                    needed.get(n, {}),
                    probed=n + PROBE_SUFFIX in twins,
                )
                for n in names
                if n not in twins
            }
        elif kind == "bake.resumed":
            self.bake_t = float(d.get("t_s", 0.0))
            self.bake_at = time.monotonic() - self.bake_t
            self.phase = "baking"
        elif kind == "bake.looked":
            self._look(d)
            self.verdict = brief(event.message) or self.verdict
        elif kind in ("bake.finished", "verdict.reached", "verdict.failed"):
            self.verdict = brief(event.message) or self.verdict
            self.bake_at = None
            self.phase = "decided"
        elif kind == "immune.started":
            self.phase = "reverting"
            self.verdict = brief(event.message) or self.verdict
        elif kind.startswith("deployment.") and kind not in ("deployment.started",):
            if kind in ("deployment.stopping", "deployment.signal_repeated"):
                self.phase = "stopping"
            elif kind != "deployment.resumed":
                self.phase = kind.split(".", 1)[1].replace("_", " ")
                self.stage = ""  # ended: the outcome alone, no wave counter

    def _host(self, row: _Host, kind: str, d: Mapping[str, Any], message: str) -> None:
        purpose = d.get("purpose")
        if kind == "host.step_started":
            row.phase, row.since = str(d.get("step")), time.monotonic()
            row.note = "revert" if purpose == "revert" else ""
            to = d.get("release")
            row.target = str(to) if to and str(to) != row.release else ""
        elif kind == "host.step_failed":
            row.phase, row.since = "failed", time.monotonic()
            row.note = message
        elif kind == "host.switched":
            row.phase, row.since = "serving", time.monotonic()
            row.release = str(d.get("release"))
            row.target = ""
            row.note = "reverted" if purpose == "revert" else ""

    def _look(self, d: Mapping[str, Any]) -> None:
        self.bake_t = float(d.get("t_s", self.bake_t))
        self.bake_at = time.monotonic() - self.bake_t
        obs = d.get("obs") or {}
        for sig, b in (obs.get("bounds") or {}).items():
            self.bounds[sig] = [float(v) for v in b]
        for name, c in (d.get("checks") or {}).items():
            chk = self.checks.setdefault(name, _Check(name))
            chk.state = str(c.get("o", chk.state))
            chk.stats = c.get("s") or chk.stats
            if c.get("r") is not None or chk.state == "continue":
                chk.reason = brief(str(c.get("r") or ""))
            sources = [(obs.get(chk.signal) or {}, chk.n, chk.x, chk.lat)]
            if chk.probed:
                sources.append((obs.get(PROBE_SIGNAL) or {}, chk.pn, chk.px, chk.plat))
                mine = float(((obs.get(chk.signal) or {}).get("canary") or {}).get("n", 0))
                probe = float(((obs.get(PROBE_SIGNAL) or {}).get("canary") or {}).get("n", 0))
                if mine or probe:  # a look that saw nothing changes nothing
                    chk.probe_now = mine == 0 < probe
            for per, ns, xs, lats in sources:
                for cohort in ("canary", "baseline"):
                    o = per.get(cohort) or {}
                    ns[cohort] += float(o.get("n", 0))
                    xs[cohort] += float(o.get("x", 0))
                    lat = o.get("lat") or []
                    acc = lats[cohort]
                    if len(acc) < len(lat):
                        acc.extend([0.0] * (len(lat) - len(acc)))
                    for i, v in enumerate(lat):
                        acc[i] += float(v)

    def _print(self, event: Event) -> None:
        """Plain output: a timestamped line per step and per change of the bake's verdict."""
        kind = event.kind
        if kind in ("host.step_finished", "signal.checked"):
            return
        message = brief(event.message)  # the journal and `show` keep the whole reason
        if kind == "bake.looked":
            outcome = str(event.data.get("outcome", ""))
            look = int(event.data.get("look", 0))
            if outcome == self._last_printed_outcome and look % 30:
                return  # a line every 30 looks while nothing changes
            self._last_printed_outcome = outcome
            summary = "; ".join(
                f"{c.name} {c.state} (canary {v[0]}, baseline {v[1]})"
                for c in self.checks.values()
                for v in [self._values(c, wide=True)]
            )
            message = f"t={float(event.data.get('t_s', 0.0)):.0f}s {outcome}: {summary}"
        line = Text()
        line.append(f"{event.at:%H:%M:%S} ", style="dim")
        line.append(f"{kind:<24} ")
        line.append(message)
        self.console.print(line, highlight=False, soft_wrap=True)

    # -- drawing ----------------------------------------------------------------------------

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width, options.height or console.size.height)

    def render(self, width: int, height: int) -> Group:
        """The whole view for a terminal of `width` × `height`."""
        parts: list[Any] = [self._header(width)]
        checks = self._checks_table(width) if self.checks else None
        verdict_lines = 2 if height <= 30 else 6
        used = 1 + (len(self.checks) + 2 if checks else 0) + verdict_lines + 3
        rows = max(3, height - used - 2)
        parts.append(self._hosts_table(width, rows))
        if checks:
            if len(self.hosts) < rows:
                parts.append(Text(""))
            parts.append(checks)
        if self.verdict:
            text = Text(self.verdict, overflow="fold")
            lines = list(text.wrap(self.console, width))
            if len(lines) > verdict_lines:
                lines = lines[:verdict_lines]
                lines[-1].truncate(width - 1, overflow="ellipsis")
                lines[-1].append("…")
            parts.append(Text("\n").join(lines))
        return Group(*parts)

    def _header(self, width: int) -> Text:
        t = Text()
        t.append(self.title, style="bold")
        if self.stage:
            t.append(f"  {self.stage}")
        elif self.waves and not self.wave:
            t.append(f"  wave –/{self.waves}")
        t.append(f"  {self.phase}", style="cyan")
        if self.bake_at is not None:
            elapsed = time.monotonic() - self.bake_at
            what = "guard" if self.bake_purpose == "guard" else "bake"
            t.append(f"  {what} {clock(elapsed)}")
            if self.bake_purpose != "guard" and self.bake_min:
                t.append(f" (min {clock(self.bake_min)}", style="dim")
                t.append(f", max {clock(self.bake_max)})", style="dim")
            elif self.bake_max:
                t.append(f" of {clock(self.bake_max)}", style="dim")
        t.truncate(width, overflow="ellipsis")
        return t

    def _hosts_table(self, width: int, rows: int) -> Table:
        t = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, padding=(0, 1))
        t.add_column("host", no_wrap=True, ratio=2)
        t.add_column("release", no_wrap=True, ratio=2)
        t.add_column("phase", no_wrap=True, ratio=2)
        t.add_column("for", no_wrap=True, justify="right", ratio=1)
        t.add_column("note", no_wrap=True, overflow="ellipsis", ratio=6)
        names = list(self.hosts)
        hidden: list[str] = []
        if len(names) > rows:
            # the hosts mid-step first, then the others in fleet order; the rest summed up
            busy = [n for n in names if self.hosts[n].phase in IN_FLIGHT]
            keep = set((busy + [n for n in names if n not in busy])[: rows - 1])
            hidden = [n for n in names if n not in keep]
            names = [n for n in names if n in keep]
        now = time.monotonic()
        for name in names:
            h = self.hosts[name]
            style = PHASE_STYLE.get(h.phase, "")
            t.add_row(
                Text(name),
                Text(f"{h.release or '?'} → {h.target}" if h.target else h.release or "?"),
                Text(h.phase, style=style),
                clock(now - h.since),
                Text(h.note, style="dim"),
            )
        if hidden:
            counts: dict[str, int] = {}
            for n in hidden:
                h = self.hosts[n]
                key = f"{h.phase} {h.release}".strip()
                counts[key] = counts.get(key, 0) + 1
            summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            t.add_row(Text(f"+{len(hidden)}", style="dim"), "", "", "", Text(summary, style="dim"))
        return t

    def _checks_table(self, width: int) -> Table:
        bw = 10 if width >= 140 else 4 if width >= 110 else 0
        # narrow (80 columns): whose numbers a row shows (the probe's or the customers')
        # gets its own short column and the values are compact, so neither the check's
        # name nor the probe's mark is cut off
        narrow = width < 100
        pad = (0, 1, 0, 0) if narrow else (0, 1)  # one space between columns, not two
        t = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, padding=pad)
        longest = max((len(n) for n in self.checks), default=5)
        if narrow:
            t.add_column("check", no_wrap=True, overflow="ellipsis", width=min(18, longest))
            t.add_column("from", no_wrap=True, width=9)
        else:
            t.add_column(
                "check", no_wrap=True, overflow="ellipsis", min_width=min(16, longest), ratio=3
            )
        t.add_column("canary", no_wrap=True, overflow="ellipsis", ratio=4)
        t.add_column("baseline", no_wrap=True, overflow="ellipsis", ratio=4)
        ew = bw + (1 if bw else 0) + (8 if narrow else 9)  # bar, a space, "3.4k/2.5k"
        t.add_column("to fail", no_wrap=True, overflow="ellipsis", width=ew)
        t.add_column("to pass", no_wrap=True, overflow="ellipsis", width=ew)
        t.add_column("state", no_wrap=True, overflow="ellipsis", width=12 if width >= 110 else 8)
        for c in self.checks.values():
            canary, baseline = self._values(c, wide=width >= 120, compact=narrow)
            source = [Text("probe", style="magenta") if on_probe(c) else Text("customers")]
            t.add_row(
                Text(c.name),
                *(source if narrow else []),
                Text(canary) if isinstance(canary, str) else canary,
                Text(baseline) if isinstance(baseline, str) else baseline,
                bar(_max_stat(c.stats, "e_fail", on_probe(c)), _needed(c, "e_fail_needed"), bw),
                bar(_min_stat(c.stats, "e_pass", on_probe(c)), _needed(c, "e_pass_needed"), bw),
                Text(c.state, style=STATE_STYLE.get(c.state, "")),
            )
        return t

    def _values(self, c: _Check, *, wide: bool, compact: bool = False) -> tuple[str, str]:
        """The canary's and the baseline's value so far in this bake, in the check's terms;
        `compact` (a narrow table, whose check column carries the probe's mark): "0.0%/83",
        "p50 162ms", no "(probe)" suffix."""
        out = []
        probe_side = on_probe(c)
        for cohort in ("canary", "baseline"):
            n, x, lats = c.n[cohort], c.x[cohort], c.lat[cohort]
            if probe_side:  # the probe speaks for the check: its values, as the summary's
                n, x, lats = c.pn[cohort], c.px[cohort], c.plat[cohort]
            if c.kind in ("latency", "latency_max"):
                side = _side(c.stats, probe_side)
                qs_wanted = list(self.quantiles.get(c.name, ())) or (
                    # a guard rail's quantile is 1 - its `bar` (p99: 0.01), not a label
                    [round(1.0 - float(side["bar"]), 6)]
                    if c.kind == "latency_max" and "bar" in side
                    else [_q(lab) for lab in _labels(side)]
                )
                bounds = self.bounds.get(PROBE_SIGNAL if probe_side else c.signal, [])
                qs = [
                    f"p{100 * q:g} {ms_text(quantile(bounds, lats, q))}"
                    for q in (qs_wanted or [0.5])[: 3 if wide else 1]
                ]
                if compact:
                    qs = [v.replace(" ms", "ms").replace(" s", "s") for v in qs]
                out.append(" ".join(qs) if n else "no requests")
            else:
                if compact:  # "4.55%/352", "0.5%/1.3k": nine characters at most
                    pct = 100 * x / n if n else 0.0
                    places = (2 if n < 1000 else 1) - (1 if pct >= 10 else 0)
                    out.append(f"{pct:.{places}f}%/{_short(n)}" if n else "no requests")
                else:
                    out.append(f"{100 * x / n:.2f}% of {n:,.0f}" if n else "no requests")
            if probe_side and not compact:
                out[-1] += " (probe)"
        if c.kind in ("error_rate_max", "latency_max"):
            out[1] = "guardrail" if compact else "(guard rail)"
        return out[0], out[1]


def _q(label: str) -> float:
    try:
        return float(label.lstrip("p")) / 100.0
    except ValueError:
        return 0.5


def _labels(stats: Mapping[str, float]) -> list[str]:
    seen: list[str] = []
    for k in stats:
        if k.startswith("p") and k.endswith("_e_fail"):
            lab = k[: -len("_e_fail")]
            if lab not in seen:
                seen.append(lab)
    return seen


def on_probe(c: _Check) -> bool:
    """Whether the probe's evidence speaks for check `c` now, by `judge.merge_probe`'s rule:
    its sentence says so ("on probe traffic: ..."), or, before any sentence, the customers
    brought the canary nothing while the probe did. The row's values and bars then show the
    probe's side, as the verdict line does; otherwise the customers'."""
    if not c.probed:
        return False
    if c.reason:
        return c.reason.startswith(("on probe traffic", "probe traffic"))
    if c.state in ("pass", "fail"):  # decided: by the side whose evidence reached its bar
        key = "e_pass" if c.state == "pass" else "e_fail"
        pick = _min_stat if c.state == "pass" else _max_stat
        need = _needed(c, key + "_needed")
        mine, probe = pick(c.stats, key, False), pick(c.stats, key, True)
        if need and mine is not None and mine >= need:
            return False
        if need and probe is not None and probe >= need:
            return True
    # undecided: the probe speaks once it alone brings the canary requests, even after the
    # customers brought some (their numbers froze when they stopped)
    return c.probe_now or c.n["canary"] == 0 < c.pn["canary"]


def _side(stats: Mapping[str, float], probe: bool) -> dict[str, float]:
    """The customers' numbers (no `probe_` prefix) or the probe's (prefix dropped)."""
    if probe:
        return {k[len("probe_") :]: v for k, v in stats.items() if k.startswith("probe_")}
    return {k: v for k, v in stats.items() if not k.startswith("probe_")}


def _max_stat(stats: Mapping[str, float], suffix: str, probe: bool = False) -> float | None:
    side = _side(stats, probe)
    vals = [float(v) for k, v in side.items() if k == suffix or k.endswith("_" + suffix)]
    return max(vals) if vals else None


def _min_stat(stats: Mapping[str, float], suffix: str, probe: bool = False) -> float | None:
    side = _side(stats, probe)
    vals = [float(v) for k, v in side.items() if k == suffix or k.endswith("_" + suffix)]
    return min(vals) if vals else None


def _needed(c: _Check, key: str) -> float | None:
    v = c.needed.get(key) if isinstance(c.needed, Mapping) else None
    if v is None:
        v = c.stats.get(key)
    return float(v) if v is not None else None
