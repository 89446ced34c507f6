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


def test_a_threshold_re_set_by_drift_is_journaled_and_where_the_next_wave_starts() -> None:
    """Wave 1 freezes p90 at 7 ms, the fleet gets faster, the judge re-sets it to 5 ms: the
    look that does it says so (`Step.frozen`, journaled and carried), and wave 2's judge
    starts from 5 ms, still named p90."""
    import numpy as np
    from scipy.special import ndtr

    from immunity.domain import Cohort, Observation
    from immunity.signals.probe import LATENCY_BOUNDS_MS as bounds

    def probs(median: float) -> np.ndarray:
        edges = np.log(np.asarray(bounds) / median) / 0.25
        return np.diff(np.concatenate([ndtr(edges), [1.0]]), prepend=0.0)

    cfg = _config({"quantiles": [0.9]})
    wave1 = BakeAnalysis(cfg, relative=True, bakes=3, bake_no=1)
    rng = np.random.default_rng(1)
    changes: list[tuple[float, list[float]]] = []
    for t in range(1, 80):
        p = probs(5.5 if t <= 20 else 4.2)
        n_c, n_b = int(rng.poisson(10)), int(rng.poisson(20))
        obs = {
            "lb": {
                Cohort.CANARY: Observation(
                    n_c, 0, bounds, rng.multinomial(n_c, p).tolist(), hosts=1
                ),
                Cohort.BASELINE: Observation(
                    n_b, 0, bounds, rng.multinomial(n_b, p).tolist(), hosts=2
                ),
            }
        }
        step = wave1.look(float(t), obs)
        if "latency" in step.frozen:
            changes.append((float(t), step.frozen["latency"]))
    assert [c[1] for c in changes] == [[7.0], [5.0]]
    assert changes[1][0] > 20.0
    wave2 = BakeAnalysis(cfg, relative=True, carry={"latency": [5.0]}, bakes=3, bake_no=2)
    judge = next(j for name, _, j in wave2.judges if name == "latency")
    assert isinstance(judge, LatencyJudge)
    assert (judge.carried, judge.labels) == ([5.0], ["p90"])
