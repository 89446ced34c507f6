"""A check's `numbers` as labelled figures a release manager reads: "errors 4.3% vs 0%
baseline", "p90 212 ms vs 198 ms baseline", "p99 557 ms against a bar of 1,000 ms".

Input: one check's `numbers` from a verdict (`CheckResult.numbers`, as journaled). The judges
write them under fixed keys (judge/sequential.py, judge/thresholds.py); the kind of check is
read from which keys are there, so the report needs neither the config nor the judges:

| keys | check | figures |
| --- | --- | --- |
| `canary_errors`, `baseline_errors` | `errors` | 5xx rate of each cohort |
| `canary_bad`, `bar` (`max_ms` for latency) | `error_rate_max` / `latency_max` | the canary against the bar |
| `<label>_canary_requests` (`p50`, `p90`, `t0`...) | `latency` | each quantile of each cohort, and the share of requests over its threshold |

A merged check carries the probe's figures under `probe_` (and a probe guard rail its twin
against the baseline under `probe_vs_baseline_`): each source is one line. Every line ends
with the evidence against the bar it needs ("evidence to fail 3,309 of 2,500"; to pass, for a
check that passed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from immunity.judge.wording import count, evalue, ms, pct

SOURCES = (("", "customers"), ("probe_vs_baseline_", "probe vs baseline"), ("probe_", "probe"))
"""Key prefix → where the figures come from (longest prefix first)."""


def _split(numbers: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The numbers per source, prefixes removed."""
    out: dict[str, dict[str, float]] = {}
    for key, value in numbers.items():
        for prefix, source in SOURCES[1:]:
            if key.startswith(prefix):
                out.setdefault(source, {})[key.removeprefix(prefix)] = float(value)
                break
        else:
            out.setdefault("customers", {})[key] = float(value)
    return out


def _evidence(n: Mapping[str, float], prefix: str = "", side: str = "fail") -> str:
    """ "evidence to fail 3,309 of 2,500": the e-value against the bar it must reach."""
    got, need = n.get(f"{prefix}e_{side}"), n.get(f"e_{side}_needed")
    if got is None or need is None:
        return ""
    return f"evidence to {side} {_e(got)} of {_e(need)}"


def _e(v: float) -> str:
    """An e-value as the reasons write it: "327", "1.2 million", "below 0.01" (never a
    300-digit number: the judges cap e-values at e^700)."""
    return evalue(math.log(v)) if v > 0 else "0"


def _errors(n: Mapping[str, float]) -> str:
    cn, bn = n.get("canary_requests", 0.0), n.get("baseline_requests", 0.0)
    if cn == 0 and bn == 0:
        return "no requests"
    return (
        f"errors {pct(n.get('canary_rate', 0.0))} vs {pct(n.get('baseline_rate', 0.0))} "
        f"baseline ({count(n.get('canary_errors', 0.0))} of {count(cn)} vs "
        f"{count(n.get('baseline_errors', 0.0))} of {count(bn)} requests)"
    )


def _rail(n: Mapping[str, float]) -> str:
    requests = n.get("canary_requests", 0.0)
    if requests == 0:
        return "no canary requests"
    if "max_ms" in n:
        label = f"p{100 * (1 - n.get('bar', 0.01)):.3g}"
        value = n.get("canary_quantile_ms")
        seen = ms(value) if value is not None else "n/a"
        return (
            f"{label} {seen} against a bar of {ms(n['max_ms'])} "
            f"({pct(n.get('canary_rate', 0.0))} of {count(requests)} requests over it)"
        )
    return (
        f"errors {pct(n.get('canary_rate', 0.0))} against a bar of {pct(n.get('bar', math.nan))} "
        f"({count(n.get('canary_bad', 0.0))} of {count(requests)} requests)"
    )


_LABEL = re.compile(r"^(p\d+(?:\.\d+)?|t\d+)_canary_requests$")


def _latency(n: Mapping[str, float], side: str) -> list[str]:
    out = []
    for key in n:
        m = _LABEL.match(key)
        if not m:
            continue
        label = m.group(1)
        cn, bn = n[key], n.get(f"{label}_baseline_requests", 0.0)
        threshold = n.get(f"{label}_threshold_ms")
        # a quantile's label ("p90"); a configured or guard-rail threshold's ("t0") says nothing
        name = f"{label} " if label.startswith("p") else ""
        if cn == 0 and bn == 0:
            # nothing counted: a threshold not set yet counts none (the reason says why)
            said = "threshold not set yet" if threshold is None else "no requests"
            out.append(f"{name}{said}".strip())
            continue
        head = name
        if f"{label}_canary_ms" in n and f"{label}_baseline_ms" in n:
            canary, baseline = n[f"{label}_canary_ms"], n[f"{label}_baseline_ms"]
            head = f"{name}{ms(canary)} vs {ms(baseline)} baseline: "
        if threshold is None:
            out.append(f"{head}threshold not set yet ({count(bn)} baseline requests)")
            continue
        slow_c = n.get(f"{label}_canary_slow", 0.0) / cn if cn else 0.0
        slow_b = n.get(f"{label}_baseline_slow", 0.0) / bn if bn else 0.0
        evidence = _evidence(n, f"{label}_", side)
        out.append(
            f"{head}{pct(slow_c)} vs {pct(slow_b)} of requests over {ms(threshold)} "
            f"({count(cn)} vs {count(bn)} requests)" + (f"; {evidence}" if evidence else "")
        )
    for said, whole in (("no requests", "no requests"), ("not set yet", "thresholds not set yet")):
        if out and all(line.endswith(said) for line in out):
            return [whole]  # not once per quantile
    return out


def figures(numbers: Mapping[str, float], outcome: str = "fail") -> list[tuple[str, str]]:
    """(source, text) lines for one check's numbers: source is "customers", "probe" or
    "probe vs baseline"; a source with no figures of a known kind is left out. The evidence
    named is the pass evidence for a check that passed, else the fail evidence."""
    side = "pass" if outcome == "pass" else "fail"
    lines: list[tuple[str, str]] = []
    per = _split(numbers)
    for source in ("customers", "probe", "probe vs baseline"):
        n = per.get(source, {})
        if "canary_errors" in n and "baseline_errors" in n:
            text, seen = _errors(n), n.get("canary_requests", 0.0) + n.get("baseline_requests", 0.0)
        elif "canary_bad" in n and "bar" in n:
            text, seen = _rail(n), n.get("canary_requests", 0.0)
        else:
            lines += [(source, t) for t in _latency(n, side)]
            continue
        evidence = _evidence(n, "", side) if seen else ""
        lines.append((source, text + (f"; {evidence}" if evidence else "")))
    return lines
