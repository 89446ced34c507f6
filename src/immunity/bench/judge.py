"""`immunity bench judge`: replay labelled releases through immunity's judge and two references.

Immunity's judge here is exactly the production one: `build_judge` for an `errors` and a
`latency` check with the default `JudgeConfig`, fed one interval at a time from the end of
warm-up (the engine starts the bake when the canary is back in the pool after warm-up),
combined with `combine`, and stopped the way the engine stops: at the first fail, at a pass
(only after the minimum bake), after `inconclusive_limit` seconds of inconclusive looks, or
at the end of the data with each judge's `final`. The references are in `references`.

Per judge and class: `n`, `label`, `rate` (detection rate of a bad class: share of FAIL
verdicts; false-alarm rate of a good class: also the share of FAIL verdicts) and `median_s`
(median seconds from scenario start to the verdict), plus the pass / inconclusive shares and
the median time to FAIL. On the generated set, `targets` checks the issue's targets.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from immunity.bench import DEFAULT_SEED
from immunity.bench.generate import HEADER, ClassSpec, build, default_classes
from immunity.bench.references import fixed_threshold, mann_whitney
from immunity.bench.scenarios import Header, Scenario, read_scenarios, write_scenarios
from immunity.config.models import CheckConfig, JudgeConfig
from immunity.domain import Observation, Outcome
from immunity.judge import build_judge, combine

JUDGES = ("immunity", "fixed-threshold", "mann-whitney")
MIN_BAKE_S = 120.0
CHUNK = 10


def judge_immunity(
    s: Scenario,
    header: Header,
    config: JudgeConfig | None = None,
    min_bake_s: float = MIN_BAKE_S,
) -> tuple[str, float, str]:
    """(outcome, seconds from scenario start, reason) of the production judge on `s`."""
    cfg = config or JudgeConfig()
    checks = [
        CheckConfig(name="errors", signal="bench", kind="errors"),
        CheckConfig(name="latency", signal="bench", kind="latency"),
    ]
    judges = [build_judge(c, cfg, min_bake_s) for c in checks]
    dt = header.interval_s
    bounds = header.bounds_ms
    start = min(round(s.warmup_s / dt), s.intervals)
    c, b = s.canary, s.baseline
    inconclusive_since: float | None = None
    t_s = 0.0
    for i in range(start, s.intervals):
        t_s = (i - start + 1) * dt
        canary = Observation(
            int(c.requests[i]),
            int(c.errors[i]),
            bounds,
            c.latency[i].tolist(),
            True,
            s.canary_hosts,
        )
        baseline = Observation(
            int(b.requests[i]),
            int(b.errors[i]),
            bounds,
            b.latency[i].tolist(),
            True,
            s.baseline_hosts,
        )
        verdict = combine([j.look(t_s, canary, baseline) for j in judges], t_s)
        if verdict.outcome is Outcome.FAIL or verdict.outcome is Outcome.PASS:
            return str(verdict.outcome), s.warmup_s + t_s, verdict.reason
        if verdict.outcome is Outcome.INCONCLUSIVE:
            inconclusive_since = t_s if inconclusive_since is None else inconclusive_since
            if t_s - inconclusive_since >= cfg.inconclusive_limit:
                return "inconclusive", s.warmup_s + t_s, verdict.reason
        else:
            inconclusive_since = None
    final = combine([j.final(t_s) for j in judges], t_s)
    outcome = "inconclusive" if final.outcome is Outcome.CONTINUE else str(final.outcome)
    return outcome, s.warmup_s + t_s, final.reason


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
    outcome, at, reason = judge_immunity(s, header, config, min_bake_s)
    fixed = fixed_threshold(s, header.bounds_ms, header.interval_s)
    mw = mann_whitney(s, header.bounds_ms, header.interval_s)
    return {
        "id": s.id,
        "class": s.cls,
        "label": s.label,
        "warmup_s": s.warmup_s,
        "first_outage_s": _first_outage(s),
        "verdicts": {
            "immunity": (outcome, at),
            "fixed-threshold": fixed,
            "mann-whitney": mw,
        },
        "reason": reason,
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
            classes[cls] = entry
        judges[name] = {"classes": classes}
    return {"judges": judges}


def _pool(classes: Sequence[str], rate: str) -> list[str]:
    return [c for c in classes if c.endswith("@" + rate)]


def targets(rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for immunity on the generated set at 50 requests/s."""
    cls = summary["judges"]["immunity"]["classes"]
    out: list[dict[str, Any]] = []
    at50 = _pool(list(cls), "50rps")
    good = [c for c in at50 if cls[c]["label"] == "good"]
    n_good = sum(cls[c]["n"] for c in good)
    fa = sum(cls[c]["rate"] * cls[c]["n"] for c in good) / n_good if n_good else None
    out.append(
        {
            "target": f"false alarms <= 1% over {n_good} good releases at 50 rps",
            "value": fa,
            "met": n_good >= 400 and fa is not None and fa <= 0.01,
        }
    )
    for kind in ("err_x5", "err_+2pp", "err_gross", "lat_+50%", "lat_tail"):
        c = f"{kind}@50rps"
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
    if "err_gross@50rps" in cls:
        e = cls["err_gross@50rps"]
        out.append(
            {
                "target": "err_gross@50rps: caught within 5 s after warm-up",
                "value": e["within_5s_after_warmup"],
                "met": e["within_5s_after_warmup"] >= 0.95,
            }
        )
    if "intermittent@50rps" in cls:
        e = cls["intermittent@50rps"]
        out.append(
            {
                "target": "intermittent@50rps: caught at the first outage",
                "value": e.get("first_occurrence_rate"),
                "met": e.get("first_occurrence_rate", 0.0) >= 0.95,
            }
        )
    med_good = _median(
        r["verdicts"]["immunity"][1] for r in rows if r["class"] in good and r["label"] == "good"
    )
    if good:
        out.append(
            {
                "target": "good releases at 50 rps: median verdict <= 150 s",
                "value": med_good,
                "unit": "s",
                "met": med_good is not None and med_good <= 150,
            }
        )
    return out


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
) -> dict[str, Any]:
    """Judge a labelled set (a scenario file, or the generated one) with all three judges.

    `config` replaces the default `JudgeConfig` and `classes` the generated set (both for
    experiments and tests).
    """
    started = time.monotonic()
    cfg = config or JudgeConfig()
    n_workers = workers if workers is not None else (1 if quick else (os.cpu_count() or 1))
    rows: list[dict[str, Any]] = []
    if scenarios is not None:
        header, given = read_scenarios(scenarios)
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
        title=f"judge benchmark: {result.get('scenarios', '?')} scenarios ({result.get('source')})",
        caption="[green]good[/] classes: false alarms; [red]bad[/] classes: detection "
        "(share of FAIL verdicts), then the median seconds from scenario start to the verdict",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("class", no_wrap=True)
    table.add_column("n", justify="right")
    for name in JUDGES:
        table.add_column(name.replace("-", "-\n"), justify="right", no_wrap=True)
    table.add_column("immunity\npass/inc.", justify="right", no_wrap=True)
    for cls in classes:
        imm = judges["immunity"]["classes"][cls]
        colour = "green" if imm["label"] == "good" else "red"
        table.add_row(
            f"[{colour}]{cls}[/]",
            str(imm["n"]),
            *[_cell(judges[n]["classes"].get(cls)) for n in JUDGES],
            f"{imm['pass']:.0%}/{imm['inconclusive']:.0%}",
        )
    console.print(table)
    for t in result.get("targets", []):
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
        console.print(f"{mark}  {t['target']}: {shown}{extra}")
    console.print(f"[dim]{result.get('elapsed_s', '?')} s[/]")
