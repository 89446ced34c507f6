"""The report's charts, drawn by matplotlib as inline SVG (text kept as text, no fonts fetched).

Every chart shares the deployment's time axis (seconds since it started), marks each wave's
start and the moment of every verdict, so the eye can line them up across charts.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

CANARY = "#d62728"
BASELINE = "#1f77b4"
VERDICT = {"fail": "#b00020", "pass": "#2e7d32", "inconclusive": "#ef6c00"}
STEP_COLOR = {
    "drain": "#f2c14e",
    "stop": "#f78154",
    "install": "#4d9de0",
    "start": "#7768ae",
    "verify": "#3bb273",
    "warmup": "#e15554",
    "enable": "#5bc0be",
}

plt.rcParams.update(
    {
        "svg.fonttype": "none",  # text stays <text>: searchable, small, no embedded glyphs
        "svg.hashsalt": "immunity",  # stable ids: the same report renders the same bytes
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def _legend(ax: Any, **kw: Any) -> None:
    """A legend only when something on the axes has a label (matplotlib warns otherwise, and
    the warning would land in the deploy's output)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def to_svg(fig: Figure) -> str:
    """The figure as an inline `<svg>` element (XML prolog and DOCTYPE removed)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _marks(
    ax: Any, data: Mapping[str, Any], label: bool = True, verdict_label: bool = True
) -> None:
    for w in data["timeline"]["waves"]:
        ax.axvline(w["start"], color="#999", lw=0.8, ls=":")
        if w.get("label") == "guard" and w.get("end") is not None:  # the guard's span
            ax.axvspan(w["start"], w["end"], color="#999", alpha=0.08, lw=0)
        if label:
            ax.annotate(
                w.get("label") or f"wave {w['wave']}",
                (w["start"], 0.99),
                xycoords=("data", "axes fraction"),
                xytext=(3, 0),
                textcoords="offset points",
                fontsize=7,
                color="#666",
                va="top",
            )
    for v in data["verdicts"]:
        color = VERDICT.get(str(v["outcome"]), "#555")
        ax.axvline(v["t"], color=color, lw=1.6, ls="--")
        if label and verdict_label and v["outcome"] == "fail":
            ax.annotate(
                f"verdict: {v['outcome']} at {v['t']:.1f}s",
                (v["t"], 0.86),
                xycoords=("data", "axes fraction"),
                fontsize=8,
                color=color,
                fontweight="bold",
                ha="left",
                xytext=(4, 0),
                textcoords="offset points",
            )
    rv = data.get("revert")
    if rv and rv.get("end") is not None:
        ax.axvspan(rv["start"], rv["end"], color=CANARY, alpha=0.07, lw=0)


def timeline_svg(data: Mapping[str, Any]) -> str:
    """Each host's steps against time; revert steps hatched; waves and verdicts marked."""
    hosts = data["timeline"]["hosts"]
    names = sorted(hosts) or ["(no host steps)"]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(names) + 1.3))
    seen: set[str] = set()
    end_t = float(data["duration_s"] or 1.0)
    for y, name in enumerate(names):
        for s in hosts.get(name, []):
            end = s["end"] if s["end"] is not None else end_t
            revert = s["purpose"] == "revert"
            label = None if s["step"] in seen else s["step"]
            seen.add(s["step"])
            ax.barh(
                y,
                max(end - s["start"], end_t / 400),
                left=s["start"],
                color=STEP_COLOR.get(s["step"], "#999"),
                edgecolor="#b00020" if s["ok"] is False else ("#333" if revert else "none"),
                hatch="///" if revert else None,
                lw=1.2 if s["ok"] is False or revert else 0,
                height=0.6,
                label=label,
            )
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the deployment started (hatched: revert)")
    ax.set_xlim(0, end_t * 1.02)
    _marks(ax, data, verdict_label=False)  # the bars would hide it; the signal charts say it
    _legend(ax, ncol=7, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    ax.set_title("Timeline: each host's steps", loc="left", fontsize=10)
    return to_svg(fig)


def _line(ax: Any, t: Sequence[float], ys: Sequence[float | None], **kw: Any) -> None:
    pts = [(a, b) for a, b in zip(t, ys, strict=True) if b is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)


def signal_svg(name: str, s: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """Canary vs baseline error rate (top) and latency p50/p99 (bottom) for one signal."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5.2), sharex=True)
    t = s["t"]
    for cohort, color in (("canary", CANARY), ("baseline", BASELINE)):
        rates = [None if r is None else r * 100 for r in s[cohort]["rate"]]
        _line(a1, t, rates, color=color, lw=2, label=f"{cohort} error rate", marker=".", ms=3)
        _line(a2, t, s[cohort]["p99"], color=color, lw=2, label=f"{cohort} p99")
        _line(a2, t, s[cohort]["p50"], color=color, lw=1, ls="--", label=f"{cohort} p50")
    a1.set_ylabel("5xx / requests (%)")
    a1.set_ylim(bottom=0)
    _legend(a1, fontsize=8, loc="upper left")
    a1.set_title(
        f"Signal {name}: canary vs baseline (rolling over the last looks)", loc="left", fontsize=10
    )
    a2.set_ylabel("latency (ms)")
    a2.set_ylim(bottom=0)
    _legend(a2, fontsize=8, loc="upper left", ncol=2)
    a2.set_xlabel("seconds since the deployment started")
    a2.set_xlim(0, float(data["duration_s"] or 1.0) * 1.02)
    _marks(a1, data)
    _marks(a2, data, label=False)
    return to_svg(fig)


def impact_svg(impact: Mapping[str, Any], data: Mapping[str, Any]) -> str | None:
    """What customers saw, per second: failed requests and p99/max latency, phases shaded."""
    sec = impact.get("seconds") or {}
    t = sec.get("t") or []
    if not t:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True)
    a1.bar(t, sec.get("failed", []), width=1.0, color=CANARY, label="failed requests")
    a1.plot(t, sec.get("requests", []), color="#555", lw=1, label="requests")
    a1.set_ylabel("per second")
    _legend(a1, fontsize=8, loc="upper left")
    a1.set_title(f"What customers saw through {impact.get('url', '')}", loc="left", fontsize=10)
    _line(a2, t, sec.get("p99_ms", []), color="#6a1b9a", lw=1.5, label="p99")
    _line(a2, t, sec.get("max_ms", []), color="#6a1b9a", lw=0.8, ls=":", label="max")
    a2.set_ylabel("latency (ms)")
    a2.set_ylim(bottom=0)
    _legend(a2, fontsize=8, loc="upper left")
    a2.set_xlabel("seconds since the deployment started")
    a2.set_xlim(0, float(data["duration_s"] or 1.0) * 1.02)
    for ax in (a1, a2):
        _marks(ax, data, label=ax is a1)
    return to_svg(fig)


_ID = re.compile(r'id="([^"]+)"')


def scope_ids(svg: str, prefix: str) -> str:
    """Prefix every id (and its references) so several inline SVGs do not collide."""
    ids = set(_ID.findall(svg))
    for i in sorted(ids, key=len, reverse=True):
        svg = svg.replace(f'id="{i}"', f'id="{prefix}{i}"')
        svg = svg.replace(f"url(#{i})", f"url(#{prefix}{i})")
        svg = svg.replace(f'href="#{i}"', f'href="#{prefix}{i}"')
    return svg
