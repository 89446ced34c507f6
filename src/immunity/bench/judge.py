"""`immunity bench judge`: replay labelled releases through immunity's judge and two references.

Immunity's judge here is exactly the production one: `build_judge` for an `errors` and a
`latency` check with the default `JudgeConfig`, its alpha spent over `BAKES` bakes as
`analysis.spending` does (three waves and a guard: the scenario's bake is the first wave's,
at alpha / 2; the watch stands for a later bake, at alpha / 6),
fed one interval at a time from the end of warm-up, combined with `combine`, and stopped
the way the analysis stops a bake: at the first fail, at a pass (only after the minimum
bake), after `inconclusive_limit` seconds of inconclusive looks, or at `bake.max` (600 s)
with each judge's `final`. After a pass the release is *watched* for the rest of the
scenario by fresh judges that never certify, as the guard period does: a fail there is the
scenario's verdict (the first fail at any time, else the pass). The references are in
`references` and give one verdict each at warm-up + 120 s.

Per judge and class: `n`, `label`, `rate` (detection rate of a bad class: share of FAIL
verdicts; false-alarm rate of a good class: also the share of FAIL verdicts, the watch
included) and `median_s` (median seconds from scenario start to the verdict), plus the pass
/ inconclusive shares and the median time to FAIL; for immunity also `bake_pass` (share
whose bake passed by `bake.max`), `median_pass_s`, `watch_fail` (failed in the watch after
a pass) and, for late-onset classes, `median_fail_after_onset_s`. On the generated set,
`targets` checks issue 9's targets.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from immunity.analysis.spending import bake_share, share_of
from immunity.bench import DEFAULT_SEED
from immunity.bench.generate import BAKE_S, HEADER, ClassSpec, build, default_classes
from immunity.bench.references import fixed_threshold, mann_whitney
from immunity.bench.scenarios import (
    Header,
    Scenario,
    ScenarioError,
    read_scenarios,
    write_scenarios,
)
from immunity.config.models import CheckConfig, JudgeConfig
from immunity.domain import HostCounts, Observation, Outcome, Verdict
from immunity.judge import build_judge, combine

JUDGES = ("immunity", "fixed-threshold", "mann-whitney")
MIN_BAKE_S = 120.0
MAX_BAKE_S = float(BAKE_S)
BAKES = 4
"""Bakes sharing a deployment's false-alarm bound in the model: the default three waves and a
guard (the watch after a pass)."""
CHUNK = 10


@dataclass(frozen=True)
class Judged:
    """Immunity's verdict on one scenario.

    `outcome`/`at_s`/`reason`: the scenario's verdict (the first fail at any time, in the bake
    or in the watch after a pass, else the bake's pass or inconclusive) and when, in seconds
    from the scenario's start. `bake`/`bake_at_s`: how the bake itself ended.
    """

    outcome: str
    at_s: float
    reason: str
    bake: str
    bake_at_s: float


def _observations(
    s: Scenario, header: Header, i: int, by_host: bool = True
) -> tuple[Observation, Observation]:
    c, b = s.canary, s.baseline
    bounds = header.bounds_ms
    hosts = (
        tuple(
            HostCounts(int(h.requests[i]), int(h.errors[i]), h.latency[i].tolist())
            for h in s.baseline_by_host
        )
        if by_host
        else ()
    )
    return (
        Observation(
            int(c.requests[i]), int(c.errors[i]), bounds, c.latency[i].tolist(), True,
            s.canary_hosts,
        ),
        Observation(
            int(b.requests[i]), int(b.errors[i]), bounds, b.latency[i].tolist(), True,
            s.baseline_hosts, by_host=hosts,
        ),
    )  # fmt: skip


def judge_immunity(
    s: Scenario,
    header: Header,
    config: JudgeConfig | None = None,
    min_bake_s: float = MIN_BAKE_S,
    max_bake_s: float = MAX_BAKE_S,
    bakes: int = BAKES,
) -> Judged:
    """The production judge on `s`, stopped the way the analysis stops a bake, then watched.

    The bake runs at the first bake's share of alpha and the watch at a later bake's (the
    deployment's false-alarm bound spent over its `bakes` bakes, `analysis.spending`). Looks
    start at the end of warm-up. The bake ends at the
    first fail, at a pass (only after `min_bake_s`), after `inconclusive_limit` seconds of
    inconclusive looks, or at `max_bake_s` with each judge's `final`. After a pass, fresh
    judges watch the same cohorts until the scenario's data ends, as the guard does after the
    last wave (they never certify; only a fail ends them): a fail there is the scenario's
    verdict.
    """
    base = config or JudgeConfig()
    cfg = share_of(base, bake_share(bakes, 1))
    watch_cfg = share_of(base, bake_share(bakes, 2))
    checks = [
        CheckConfig(name="errors", signal="bench", kind="errors"),
        CheckConfig(name="latency", signal="bench", kind="latency"),
    ]
    judges = [build_judge(c, cfg, min_bake_s) for c in checks]
    dt = header.interval_s
    start = min(round(s.warmup_s / dt), s.intervals)
    inconclusive_since: float | None = None
    passed: Verdict | None = None
    passed_at = passed_t = 0.0
    t_s = 0.0
    for i in range(start, s.intervals):
        t_s = (i - start + 1) * dt
        canary, baseline = _observations(s, header, i)
        verdict = combine([j.look(t_s - passed_t, canary, baseline) for j in judges], t_s)
        at = s.warmup_s + t_s
        if passed is not None:
            if verdict.outcome is Outcome.FAIL:
                return Judged("fail", at, f"(watch) {verdict.reason}", "pass", passed_at)
            continue
        if verdict.outcome is Outcome.FAIL:
            return Judged("fail", at, verdict.reason, "fail", at)
        if verdict.outcome is Outcome.INCONCLUSIVE:
            inconclusive_since = t_s if inconclusive_since is None else inconclusive_since
            if t_s - inconclusive_since >= cfg.inconclusive_limit:
                return Judged("inconclusive", at, verdict.reason, "inconclusive", at)
        else:
            inconclusive_since = None
        if verdict.outcome is not Outcome.PASS and t_s >= max_bake_s:
            verdict = combine([j.final(t_s) for j in judges], t_s)
            if verdict.outcome is not Outcome.PASS:
                outcome = (
                    "inconclusive" if verdict.outcome is Outcome.CONTINUE else str(verdict.outcome)
                )
                return Judged(outcome, at, verdict.reason, outcome, at)
        if verdict.outcome is Outcome.PASS:
            passed, passed_at, passed_t = verdict, at, t_s
            judges = [build_judge(c, watch_cfg, math.inf) for c in checks]  # the watch
    if passed is not None:
        return Judged("pass", passed_at, passed.reason, "pass", passed_at)
    final = combine([j.final(t_s) for j in judges], t_s)
    outcome = "inconclusive" if final.outcome is Outcome.CONTINUE else str(final.outcome)
    at = s.warmup_s + t_s
    return Judged(outcome, at, final.reason, outcome, at)


def _first_outage(s: Scenario) -> float | None:
    starts = s.meta.get("outage_starts_s") if s.meta else None
    if not starts:
        return None
    after = [float(x) for x in starts if float(x) + 3 > s.warmup_s]
    return after[0] if after else None


def judge_all(
    s: Scenario, header: Header, min_bake_s: float, config: JudgeConfig | None = None
) -> dict[str, Any]:
    """Every judge's verdict on one scenario (small, picklable)."""
    cfg = config or JudgeConfig()
    j = judge_immunity(s, header, config, min_bake_s)
    meta = s.meta or {}
    beyond = (
        float(meta["canary_error_ratio"]) > cfg.error_tolerance
        or float(meta["canary_latency_odds"]) > cfg.latency_tolerance
        if "canary_error_ratio" in meta and "canary_latency_odds" in meta
        else None
    )
    fixed = fixed_threshold(s, header.bounds_ms, header.interval_s)
    mw = mann_whitney(s, header.bounds_ms, header.interval_s)
    return {
        "id": s.id,
        "class": s.cls,
        "label": s.label,
        "warmup_s": s.warmup_s,
        "first_outage_s": _first_outage(s),
        "onset_s": float(s.meta["onset_s"]) if s.meta and "onset_s" in s.meta else None,
        "bake": (j.bake, j.bake_at_s),
        "verdicts": {
            "immunity": (j.outcome, j.at_s),
            "fixed-threshold": fixed,
            "mann-whitney": mw,
        },
        "reason": j.reason,
        "host_beyond_tolerance": beyond,
    }


def _work_generated(
    spec: ClassSpec, indices: Sequence[int], seed: int, min_bake_s: float, config: JudgeConfig
) -> list[dict[str, Any]]:
    return [judge_all(build(spec, i, seed), HEADER, min_bake_s, config) for i in indices]


def _work_given(
    scenarios: Sequence[Scenario], header: Header, min_bake_s: float, config: JudgeConfig
) -> list[dict[str, Any]]:
    return [judge_all(s, header, min_bake_s, config) for s in scenarios]


def _context() -> BaseContext:
    """fork where there is one (fast, no re-import of __main__), spawn elsewhere."""
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


def _median(values: Iterable[float]) -> float | None:
    v = list(values)
    return float(np.median(v)) if v else None


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per judge, per class: n, label, rate, median_s and the detail behind them."""
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_class[r["class"]].append(r)
    judges: dict[str, Any] = {}
    for name in JUDGES:
        classes: dict[str, Any] = {}
        for cls, rs in by_class.items():
            verdicts = [r["verdicts"][name] for r in rs]
            n = len(verdicts)
            fails = [at for o, at in verdicts if o == "fail"]
            after = [
                at - r["warmup_s"] for (o, at), r in zip(verdicts, rs, strict=True) if o == "fail"
            ]
            entry: dict[str, Any] = {
                "n": n,
                "label": rs[0]["label"],
                "rate": len(fails) / n,
                "median_s": _median(at for _, at in verdicts),
                "pass": sum(o == "pass" for o, _ in verdicts) / n,
                "inconclusive": sum(o == "inconclusive" for o, _ in verdicts) / n,
                "median_fail_s": _median(fails),
                "median_fail_after_warmup_s": _median(after),
            }
            firsts = [
                (o, at, r["first_outage_s"])
                for (o, at), r in zip(verdicts, rs, strict=True)
                if r["first_outage_s"] is not None
            ]
            if firsts:
                entry["first_occurrence_rate"] = sum(
                    o == "fail" and at <= first + 3 + 2 for o, at, first in firsts
                ) / len(firsts)
            if rs[0]["label"] == "bad":
                entry["within_5s_after_warmup"] = sum(a <= 5 for a in after) / n
            if name == "immunity" and rs[0]["label"] == "good":
                known = [r for r in rs if r.get("host_beyond_tolerance") is not None]
                within = [
                    o == "fail"
                    for (o, _), r in zip(verdicts, rs, strict=True)
                    if r.get("host_beyond_tolerance") is False
                ]
                if known:
                    entry["host_beyond_tolerance"] = sum(
                        bool(r["host_beyond_tolerance"]) for r in known
                    ) / len(known)
                    entry["n_within_tolerance"] = len(within)
                    entry["rate_within_tolerance"] = sum(within) / len(within) if within else None
            if name == "immunity":
                bakes = [r["bake"] for r in rs]
                entry["bake_pass"] = sum(o == "pass" for o, _ in bakes) / n
                entry["median_pass_s"] = _median(at for o, at in bakes if o == "pass")
                entry["watch_fail"] = (
                    sum(
                        o == "fail" and bo == "pass"
                        for (o, _), (bo, _) in zip(verdicts, bakes, strict=True)
                    )
                    / n
                )
                onsets = [
                    at - r["onset_s"]
                    for (o, at), r in zip(verdicts, rs, strict=True)
                    if o == "fail" and r["onset_s"] is not None and at >= r["onset_s"]
                ]
                if any(r["onset_s"] is not None for r in rs):
                    entry["median_fail_after_onset_s"] = _median(onsets)
            classes[cls] = entry
        judges[name] = {"classes": classes}
    return {"judges": judges}


def _pool(classes: Sequence[str], rate: str) -> list[str]:
    return [c for c in classes if c.endswith("@" + rate)]


def _caught(cls: dict[str, Any], name: str, least: float) -> dict[str, Any] | None:
    if name not in cls:
        return None
    e = cls[name]
    return {
        "target": f"{name}: >= {least:.0%} caught",
        "value": e["rate"],
        "median_after_warmup_s": e["median_fail_after_warmup_s"],
        "met": e["rate"] >= least,
    }


FEW_TO_TELL_1PCT = 1000
"""Good releases needed before a false-alarm share can be called within 1% or not: fewer
(the quick run's dozen) cannot tell 0% from 1%, and the target's `met` is None."""


def _one_percent(value: float | None, n: int) -> dict[str, Any]:
    """`met` and `note` of a "false alarms <= 1%" target over `n` releases."""
    if n < FEW_TO_TELL_1PCT or value is None:
        return {"met": None, "note": f"too few releases to tell (n={n})"}
    return {"met": value <= 0.01}


def targets(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets (and the earlier ones, now at 40 requests/s) on the generated set.

    Each: `target` (text), `value`, `met` (True, False, or None with a `note` when there
    are too few releases to tell, `FEW_TO_TELL_1PCT`)."""
    cls = summary["judges"]["immunity"]["classes"]
    out: list[dict[str, Any]] = []
    good = [c for c in cls if cls[c]["label"] == "good"]
    n_good = sum(cls[c]["n"] for c in good)
    fa = sum(cls[c]["rate"] * cls[c]["n"] for c in good) / n_good if n_good else None
    out.append(
        {
            "target": f"false alarms <= 1% pooled over {n_good} good releases of every class, "
            "including the watch after a pass",
            "value": fa,
            **_one_percent(fa, n_good),
        }
    )
    n_within = sum(cls[c].get("n_within_tolerance", 0) for c in good)
    if n_within:
        fa_within = (
            sum(
                (cls[c].get("rate_within_tolerance") or 0.0) * cls[c]["n_within_tolerance"]
                for c in good
            )
            / n_within
        )
        out.append(
            {
                "target": f"(diagnosis) false alarms <= 1% on the {n_within} good releases whose "
                "canary host alone is within the tolerance (x1.25: the bound's null); the "
                "others' canary is worse than tolerated by its host's own spread",
                "value": fa_within,
                **_one_percent(fa_within, n_within),
            }
        )
    for rate in ("40rps", "8rps"):
        t = _caught(cls, f"late_err_x5@{rate}", 0.90)
        if t is not None:
            t["median_after_onset_s"] = cls[f"late_err_x5@{rate}"]["median_fail_after_onset_s"]
            out.append(t)
    good8 = [c for c in _pool(good, "8rps")]
    n8 = sum(cls[c]["n"] for c in good8)
    if n8:
        share = sum(cls[c]["bake_pass"] * cls[c]["n"] for c in good8) / n8
        out.append(
            {
                "target": f"good releases at 8 rps pass (not inconclusive) by bake.max "
                f"({n8} releases): >= 90%",
                "value": share,
                "met": share >= 0.90,
            }
        )
    for t in (_caught(cls, "err_x3@8rps", 0.90),):
        if t is not None:
            out.append(t)
    for kind in ("err_x5", "err_+2pp", "err_gross", "lat_+50%", "lat_tail"):
        c = f"{kind}@40rps"
        if c not in cls:
            continue
        e = cls[c]
        med = e["median_fail_after_warmup_s"]
        out.append(
            {
                "target": f"{c}: >= 95% caught, median <= 60 s after warm-up",
                "value": e["rate"],
                "median_after_warmup_s": med,
                "met": e["rate"] >= 0.95 and med is not None and med <= 60,
            }
        )
    if "err_gross@40rps" in cls:
        e = cls["err_gross@40rps"]
        out.append(
            {
                "target": "err_gross@40rps: caught within 5 s after warm-up",
                "value": e["within_5s_after_warmup"],
                "met": e["within_5s_after_warmup"] >= 0.95,
            }
        )
    if "intermittent@40rps" in cls:
        e = cls["intermittent@40rps"]
        out.append(
            {
                "target": "intermittent@40rps: caught at the first outage",
                "value": e.get("first_occurrence_rate"),
                "met": e.get("first_occurrence_rate", 0.0) >= 0.95,
            }
        )
    good40 = _pool(good, "40rps")
    med_pass = _median(
        r["bake"][1] for r in rows if r["class"] in good40 and r["bake"][0] == "pass"
    )
    if good40:
        out.append(
            {
                "target": "good releases at 40 rps: median time to pass <= 150 s",
                "value": med_pass,
                "unit": "s",
                "met": med_pass is not None and med_pass <= 150,
            }
        )
    return out


def select(names: Iterable[str], patterns: str | None) -> set[str]:
    """The class names matching any of `patterns`, comma-separated shell globs (`fnmatch`,
    case-sensitive: 'err_x3@8rps,good*'); every name when `patterns` is None.

    Raises ScenarioError when a pattern matches no class (a typo must not silently judge
    nothing), naming the pattern and the classes there are.
    """
    pool = list(dict.fromkeys(names))
    if patterns is None:
        return set(pool)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    if not wanted:
        raise ScenarioError("--classes: expected comma-separated class globs, got nothing")
    chosen: set[str] = set()
    for pat in wanted:
        hit = {n for n in pool if fnmatch.fnmatchcase(n, pat)}
        if not hit:
            raise ScenarioError(
                f"--classes: {pat!r} matches no class",
                hint="classes are KIND@RATE, e.g. good@40rps, err_x3@8rps, no_traffic@0rps; "
                f"there are: {', '.join(sorted(pool))}",
            )
        chosen |= hit
    return chosen


def run(
    scenarios: Path | None,
    json_out: Path | None,
    seed: int = DEFAULT_SEED,
    quick: bool = False,
    *,
    write_scenarios_to: Path | None = None,
    workers: int | None = None,
    min_bake_s: float = MIN_BAKE_S,
    config: JudgeConfig | None = None,
    classes: Sequence[ClassSpec] | None = None,
    only: str | None = None,
) -> dict[str, Any]:
    """Judge a labelled set (a scenario file, or the generated one) with all three judges.

    `config` replaces the default `JudgeConfig` and `classes` the generated set (both for
    experiments and tests). `only` keeps the classes matching its comma-separated globs
    (see `select`); the result says which (`only`), and targets are computed on what ran.
    """
    started = time.monotonic()
    cfg = config or JudgeConfig()
    n_workers = workers if workers is not None else (1 if quick else (os.cpu_count() or 1))
    rows: list[dict[str, Any]] = []
    if scenarios is not None:
        header, given = read_scenarios(scenarios)
        keep = select((s.cls for s in given), only)
        given = [s for s in given if s.cls in keep]
        chunks = [given[i : i + CHUNK] for i in range(0, len(given), CHUNK)]
        if n_workers <= 1:
            for ch in chunks:
                rows += _work_given(ch, header, min_bake_s, cfg)
        else:
            with ProcessPoolExecutor(n_workers, mp_context=_context()) as pool:
                futures = [pool.submit(_work_given, ch, header, min_bake_s, cfg) for ch in chunks]
                for f in futures:
                    rows += f.result()
        source = str(scenarios)
    else:
        specs = list(classes) if classes is not None else default_classes(quick)
        keep = select((spec.name for spec in specs), only)
        specs = [spec for spec in specs if spec.name in keep]
        if write_scenarios_to is not None:
            write_scenarios(
                write_scenarios_to,
                HEADER,
                (build(spec, i, seed) for spec in specs for i in range(spec.count)),
            )
        tasks = [
            (spec, list(range(i, min(i + CHUNK, spec.count))))
            for spec in specs
            for i in range(0, spec.count, CHUNK)
        ]
        if n_workers <= 1:
            for spec, idx in tasks:
                rows += _work_generated(spec, idx, seed, min_bake_s, cfg)
        else:
            with ProcessPoolExecutor(n_workers, mp_context=_context()) as pool:
                futures = [
                    pool.submit(_work_generated, spec, idx, seed, min_bake_s, cfg)
                    for spec, idx in tasks
                ]
                for f in futures:
                    rows += f.result()
        source = "generated"
    result = summarize(rows)
    result["source"] = source
    result["seed"] = seed
    result["quick"] = quick
    result["min_bake_s"] = min_bake_s
    result["scenarios"] = len(rows)
    result["only"] = only
    if scenarios is None:
        result["targets"] = targets(rows, result)
    result["false_alarm_reasons"] = [
        f"{r['id']}: {r['reason']}"
        for r in rows
        if r["label"] == "good" and r["verdicts"]["immunity"][0] == "fail"
    ][:20]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    rate = entry["rate"]
    shown = f"{rate:.1%}" if 0 < rate < 0.1 else f"{rate:.0%}"
    med = entry["median_s"]
    return f"{shown} {med:.0f}s" if med is not None else f"{shown} -"


def render(result: dict[str, Any], console: Console) -> None:
    """Print one table: per class, each judge's rate and median seconds to verdict."""
    judges = result["judges"]
    classes = list(judges["immunity"]["classes"])
    table = Table(
        title=f"judge benchmark: {result.get('scenarios', '?')} scenarios ({result.get('source')}"
        + (f", classes {result['only']}" if result.get("only") else "")
        + ")",
        caption="[green]good[/] classes: false alarms; [red]bad[/] classes: detection "
        "(share of FAIL verdicts), then the median seconds from scenario start to the verdict",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("class", no_wrap=True)
    table.add_column("n", justify="right")
    for name in JUDGES:
        table.add_column(name.replace("-", "-\n"), justify="right", no_wrap=True)
    table.add_column("immunity\npass/inc.", justify="right", no_wrap=True)
    table.add_column("bake\npass, med.", justify="right", no_wrap=True)
    table.add_column("watch\nfail", justify="right", no_wrap=True)
    for cls in classes:
        imm = judges["immunity"]["classes"][cls]
        colour = "green" if imm["label"] == "good" else "red"
        table.add_row(
            f"[{colour}]{cls}[/]",
            str(imm["n"]),
            *[_cell(judges[n]["classes"].get(cls)) for n in JUDGES],
            f"{imm['pass']:.0%}/{imm['inconclusive']:.0%}",
            f"{imm['bake_pass']:.0%} "
            + (f"{imm['median_pass_s']:.0f}s" if imm["median_pass_s"] is not None else "-"),
            f"{imm['watch_fail']:.1%}",
        )
    console.print(table)
    for t in result.get("targets", []):
        if t["met"] is None:
            mark = f"[yellow]{t.get('note', 'cannot tell')}[/]:"
        else:
            mark = "[green]met[/]" if t["met"] else "[red]missed[/]"
        value = t["value"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            shown = "n/a"
        elif t.get("unit") == "s":
            shown = f"{value:.0f} s"
        else:
            shown = f"{value:.1%}"
        extra = (
            f", median {t['median_after_warmup_s']:.0f} s after warm-up"
            if t.get("median_after_warmup_s") is not None
            else ""
        )
        if t.get("median_after_onset_s") is not None:
            extra += f", median {t['median_after_onset_s']:.0f} s after onset"
        console.print(f"{mark}  {t['target']}: {shown}{extra}")
    console.print(f"[dim]bench judge took {result.get('elapsed_s', '?')} s (wall clock)[/]")
