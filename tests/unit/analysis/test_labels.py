"""Latency thresholds are named for what they are in every wave's reasons."""

from __future__ import annotations

from immunity.analysis import BakeAnalysis
from immunity.config.models import Config
from immunity.judge.sequential import LatencyJudge


def _config(check: dict[str, object]) -> Config:
    return Config.model_validate(
        {
            "app": "shop",
            "hosts": [{"name": f"h{i}", "port": 8000 + i} for i in range(4)],
            "balancer": {"kind": "haproxy"},
            "driver": {"kind": "local"},
            "signals": [{"kind": "haproxy", "name": "lb"}],
            "checks": [{"name": "latency", "signal": "lb", "kind": "latency", **check}],
            "bake": {"min": "20s", "max": "90s", "interval": "1s"},
            "waves": [1, 2, "100%"],
        }
    )


def _labels(analysis: BakeAnalysis) -> list[str]:
    judge = next(j for name, _, j in analysis.judges if name == "latency")
    assert isinstance(judge, LatencyJudge)
    return list(judge.labels)


def test_thresholds_carried_from_wave_1_keep_their_quantiles_names() -> None:
    """Only `quantiles` were set: wave 1 names its thresholds p50 and p90, and so does
    wave 2, which judges the thresholds wave 1 froze (it said "configured")."""
    cfg = _config({"quantiles": [0.5, 0.9]})
    assert _labels(BakeAnalysis(cfg, relative=True, bakes=3, bake_no=1)) == ["p50", "p90"]
    wave2 = BakeAnalysis(cfg, relative=True, carry={"latency": [7.0, 10.0]}, bakes=3, bake_no=2)
    assert _labels(wave2) == ["p50", "p90"]


def test_thresholds_set_in_the_config_are_called_configured() -> None:
    cfg = _config({"thresholds_ms": [50.0, 200.0]})
    assert _labels(BakeAnalysis(cfg, relative=True, bakes=3, bake_no=2)) == [
        "configured",
        "configured",
    ]
