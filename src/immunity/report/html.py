"""The report's HTML: one jinja2 template, inline CSS and SVG, no script and no network."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jinja2

from immunity.domain import brief
from immunity.report import charts
from immunity.report.figures import figures

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>immunity: {{ d.app }} {{ d.label or d.release }} {{ d.outcome_words or d.outcome }} ({{ d.deployment_id }})</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 6px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.verdict{font-size:17px;padding:12px 16px;border-radius:6px;margin:10px 0 16px;border-left:6px solid}
.o-reverted,.o-revert_incomplete{background:#fdecea;border-color:#b00020}
.o-deployed,.o-rolled_back,.o-aborted{background:#e8f5e9;border-color:#2e7d32}
.o-held,.o-unfinished,.o-interrupted,.o-terminated{background:#fff3e0;border-color:#ef6c00}
table{border-collapse:collapse;margin:6px 0;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.fail{color:#b00020;font-weight:600}.pass{color:#2e7d32;font-weight:600}.inconclusive{color:#ef6c00;font-weight:600}
.chart svg{max-width:100%;height:auto} .muted{color:#777} code{font-size:12px}
.kv td:first-child{color:#555}
</style></head><body>
<h1>{{ d.app }}: {% if d.label and d.label != d.release %}{{ d.label }}{% else %}release {{ d.release }}{% endif %} — {{ d.outcome_words or d.outcome }}</h1>
<div class="muted">deployment <code>{{ d.deployment_id }}</code> · started {{ d.started_at|utc }} · {{ "%.1f"|format(d.duration_s) }} s</div>
<p class="verdict o-{{ d.outcome }}" id="verdict">{{ d.sentence }}</p>
<table class="kv">
<tr><td>outcome</td><td><b>{{ d.outcome_words or d.outcome }}</b></td></tr>
{% if d.detected_after_s is not none %}<tr><td>detected after</td><td>{{ "%.1f"|format(d.detected_after_s) }} s (from the first canary in the pool to the verdict)</td></tr>{% endif %}
{% if d.reverted_after_s is not none %}<tr><td>fleet reverted</td><td>in {{ "%.1f"|format(d.reverted_after_s) }} s {{ d.reverted_from }}</td></tr>{% endif %}
<tr><td>evidence</td><td>{{ d.looks }} look(s) recorded</td></tr>
</table>
{% if d.verdict and d.verdict.checks %}
<h2>Verdict per check</h2>
<table class="checks"><tr><th>check</th><th>verdict</th><th>why</th><th>figures (canary vs baseline)</th></tr>
{% for c in d.verdict.checks %}<tr><td>{{ c.name }}</td><td class="{{ c.outcome }}">{{ c.outcome }}</td><td>{{ c.reason|brief }}</td>
<td class="figures">{% for source, text in c.numbers|figures(c.outcome) %}<div><span class="muted">{{ source }}:</span> {{ text }}</div>{% endfor %}</td></tr>{% endfor %}
</table><p class="muted">Evidence is an e-value: the check fails (or passes) when it reaches the bar after "of". Every raw number is in the report's JSON beside this page.</p>{% endif %}

<h2>Timeline</h2>
<div class="chart" id="timeline">{{ timeline|safe }}</div>
{% if d.timeline.waves %}<table><tr><th>wave</th><th>hosts</th><th>started</th><th>ended</th></tr>
{% for w in d.timeline.waves %}<tr><td>{{ w.get("label") or "wave %s"|format(w.wave) }}</td><td>{{ w.hosts|join(", ") }}</td><td class="n">{{ w.start|secs }} s</td><td class="n">{{ w.end|secs if w.end is not none else "" }}{% if w.end is not none %} s{% endif %}</td></tr>{% endfor %}
</table>{% endif %}

<h2>Canary vs baseline</h2>
{% if signals %}{% for name, svg in signals %}<div class="chart signal" id="signal-{{ name }}">{{ svg|safe }}</div>{% endfor %}
{% else %}<p class="muted">No per-look evidence was journaled for this deployment (no bake ran, or the journal predates per-look evidence).</p>{% endif %}
{% if d.verdicts %}<table><tr><th>at</th><th>wave</th><th>verdict</th><th>reason</th></tr>
{% for v in d.verdicts %}<tr><td class="n">{{ v.t|secs }} s</td><td>{{ "guard" if v.guard else v.wave }}</td><td class="{{ v.outcome }}">{{ v.outcome }}</td><td>{{ v.reason|brief }}</td></tr>{% endfor %}
</table>{% endif %}

<h2>What customers saw</h2>
{% if d.impact %}
{% if impact_svg %}<div class="chart" id="impact">{{ impact_svg|safe }}</div>{% endif %}
<table><tr><th>phase</th><th>from</th><th>to</th><th>requests</th><th>failed</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>longest stall s</th></tr>
{% for p in d.impact.phases %}<tr><td>{{ p.phase }}</td><td class="n">{{ p.start|secs }}</td><td class="n">{{ p.end|secs }}</td><td class="n">{{ p.requests }}</td><td class="n{% if p.failed %} fail{% endif %}">{{ p.failed }}</td>
<td class="n">{{ "%.1f"|format(p.p50_ms) }}</td><td class="n">{{ "%.1f"|format(p.p99_ms) }}</td><td class="n">{{ "%.1f"|format(p.max_ms) }}</td><td class="n">{{ "%.2f"|format(p.longest_stall_s) }}</td></tr>{% endfor %}
</table><p class="muted">A probe of {{ d.impact.rps|num }} requests/s to {{ d.impact.url }} through the public address, for the whole deployment. Failed: no answer or a status not in {{ d.impact.expect_status|join(", ") }}.</p>
{% else %}<p class="muted" id="no-impact">Not measured: immunity.yaml has no <code>impact</code> block, so nothing stood in for the customers during this deployment. To see here what customers saw in each phase (before, each wave, its bake, the revert, after), add a probe through the public address, e.g. <code>impact: {url: "https://shop.example.com", rps: 5}</code> (see <code>impact</code> in docs/config.md); on the sandbox, <code>immunity sandbox up --impact</code> writes one.</p>{% endif %}

<h2>Revert</h2>
{% if d.revert %}
<p>The immune response began at {{ d.revert.start|secs }} s{% if d.revert.reason %} ({{ d.revert.reason|brief }}){% endif %}{% for r in d.revert.resumed %}, was taken up again by a resume at {{ r|secs }} s{% endfor %}{% if d.revert.end is not none %} and ended at {{ d.revert.end|secs }} s{% endif %}{% if d.revert.reverted_after_s is not none %}: the whole fleet was back {{ "%.1f"|format(d.revert.reverted_after_s) }} s {{ d.revert.reverted_from }}{% endif %}.</p>
<table><tr><th>host</th><th>back on</th><th>at</th></tr>
{% for h in d.revert.hosts %}<tr><td>{{ h.host }}</td><td>{{ h.release }}</td><td class="n">{{ h.t|secs }} s</td></tr>{% endfor %}</table>
{% if d.revert.needs_human %}<p class="fail">A human is needed for: {{ d.revert.needs_human|join(", ") }}</p>{% endif %}
{% else %}<p class="muted">Nothing was reverted.</p>{% endif %}
<p class="muted">Written by immunity from the deployment's journal. Times are seconds since the deployment started ({{ d.started_at|utc }}).</p>
</body></html>
"""


def _utc(iso: str | None) -> str:
    """An ISO 8601 instant as people read it: `2026-11-30 10:30:02 UTC`."""
    if not iso:
        return "?"
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _secs(v: Any) -> str:
    return f"{float(v):.1f}" if isinstance(v, int | float) else ""


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


_env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_env.filters["num"] = _num
_env.filters["secs"] = _secs  # seconds to the tenth, as the header, `show` and serve give them
_env.filters["utc"] = _utc
_env.filters["figures"] = figures
_env.filters["brief"] = brief  # the journal, `show` and the JSON keep reasons whole
_template = _env.from_string(TEMPLATE)


def render(data: dict[str, Any]) -> str:
    """The report page for `data` (from `immunity.report.build`).

    Raises `stopping.ReportStopped` between charts once a signal asked to stop."""
    from immunity.report.stopping import checkpoint

    checkpoint()
    timeline = charts.scope_ids(charts.timeline_svg(data), "tl-")
    signals = []
    for i, (name, s) in enumerate(sorted(data["series"].items())):
        checkpoint()
        signals.append((name, charts.scope_ids(charts.signal_svg(name, s, data), f"s{i}-")))
    impact = data.get("impact")
    checkpoint()
    impact_svg = charts.impact_svg(impact, data) if impact else None
    checkpoint()
    return _template.render(
        d=data,
        timeline=timeline,
        signals=signals,
        impact_svg=charts.scope_ids(impact_svg, "im-") if impact_svg else None,
    )
