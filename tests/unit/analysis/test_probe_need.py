"""The bake derives what its checks need from the customers' baseline and steers the probe."""

from __future__ import annotations

from immunity.analysis import BakeAnalysis
from immunity.config.models import Config
from immunity.domain import Cohort, Observation
from immunity.judge.need import check_need
from immunity.signals.probe import NAME as PROBE


def config() -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": f"h{i}", "port": 8000 + i} for i in range(4)],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": [
                {"name": "errors", "signal": "lb", "kind": "errors"},
                {"name": "latency", "signal": "lb", "kind": "latency", "quantiles": [0.5]},
            ],
            "bake": {"min": "30s", "max": "300s", "interval": "1s"},
            "waves": [1, "100%"],
            "probe": {"rate": 10},
            "judge": {"error_floor": 0},
        }
    )


def look(n_b: int, x_b: int, probe_errors: int = 0) -> dict[str, dict[Cohort | str, Observation]]:
    return {
        "lb": {
            Cohort.CANARY: Observation(n_b // 3, 0, hosts=1),
            Cohort.BASELINE: Observation(n_b, x_b, hosts=3),
        },
        PROBE: {
            Cohort.CANARY: Observation(10, probe_errors, hosts=1),
            Cohort.BASELINE: Observation(30, probe_errors, hosts=3),
        },
    }


def test_the_need_comes_from_the_customer_checks_with_the_bakes_alpha() -> None:
    """Until the baseline has shown enough requests only the latency check can say what it
    needs; then the errors check, sized on the customers' baseline 5xx rate (0.2%: the probe's
    errors do not count), needs the most. Figures are `check_need`'s with the bake's own
    alpha (spent over 2 bakes and the probe twins)."""
    cfg = config()
    analysis = BakeAnalysis(cfg, relative=True, bakes=2)
    first = analysis.need(look(150, 0, probe_errors=5), 1, 3)
    assert first is not None and first.check == "latency"
    latency = check_need(
        cfg.checks[1], analysis.judge_config, canary_hosts=1, baseline_hosts=3, bake_max_s=300
    )
    assert latency is not None and first.rate == latency.rate
    for _ in range(19):
        got = analysis.need(look(500, 1, probe_errors=5), 1, 3)
    assert analysis.baseline_seen == {"lb": (150 + 19 * 500, 19)}
    errors = check_need(
        cfg.checks[0], analysis.judge_config, canary_hosts=1, baseline_hosts=3,
        bake_max_s=300, baseline_requests=150 + 19 * 500, baseline_errors=19,
    )  # fmt: skip
    assert got is not None and errors is not None
    assert got.check == "errors" and got.rate == errors.rate > latency.rate
    assert "baseline 5xx 0.20% over 9,650 requests" in got.why
    assert analysis.judge_config.alpha == cfg.judge.alpha / 4
