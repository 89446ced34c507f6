"""The config loader: strict models, file:line:col errors, ${ENV} interpolation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from immunity.config import load, parse
from immunity.errors import ConfigError

GOOD = """\
app: shop
hosts:
  - name: h1
    port: 9001
  - name: h2
    port: 9002
balancer:
  kind: haproxy
  socket: haproxy/admin.sock
  backend: be_app
driver:
  kind: local
  root: hosts
  releases: releases
waves: [1, "50%", "100%"]
"""


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, "immunity.yaml")
    return info.value.problems


def test_a_valid_config_loads_with_durations_in_seconds() -> None:
    """A minimal valid file loads, and durations given as text become float seconds."""
    loaded = parse(GOOD + "warmup:\n  latency_bar: 250ms\n  timeout: 2m\n", "immunity.yaml")
    assert loaded.config.warmup.latency_bar == 0.25
    assert loaded.config.warmup.timeout == 120.0
    assert [h.name for h in loaded.config.hosts] == ["h1", "h2"]


def test_a_bad_wave_is_reported_with_file_line_column_and_what_was_expected() -> None:
    """`waves[1]: quarter` names the file, line and column, the field, and the expectation."""
    problems = _problems(GOOD.replace('[1, "50%", "100%"]', '[1, "quarter", "100%"]'))
    assert len(problems) == 1
    assert problems[0].startswith("immunity.yaml:15:")
    assert "waves[1]" in problems[0]
    assert "expected a count (3) or a percentage" in problems[0]
    assert "'quarter'" in problems[0]


def test_every_problem_is_reported_at_once() -> None:
    """An unknown top-level field and a wrong adapter field are both listed."""
    text = GOOD + "colour: blue\n"
    text = text.replace("  backend: be_app\n", "  backend: be_app\n  sockett: x\n")
    problems = _problems(text)
    assert any("colour" in p and "unknown field" in p for p in problems)
    assert any("balancer.sockett" in p for p in problems)


def test_an_unknown_adapter_kind_lists_the_known_ones() -> None:
    """`balancer.kind: nginx` says which kinds exist."""
    problems = _problems(GOOD.replace("kind: haproxy", "kind: nginx"))
    assert any("balancer.kind" in p and "haproxy" in p and "nginx" in p for p in problems)


def test_env_interpolation_fills_values_and_never_echoes_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """${VAR} is filled from the environment; a bad interpolated value shows `${VAR}`, not its value."""
    monkeypatch.setenv("IMM_PORT", "not-a-port-s3cr3t")
    problems = _problems(GOOD.replace("port: 9001", "port: ${IMM_PORT}"))
    assert any("${IMM_PORT}" in p for p in problems)
    assert not any("s3cr3t" in p for p in problems)
    monkeypatch.setenv("IMM_PORT", "9005")
    loaded = parse(GOOD.replace("port: 9001", "port: ${IMM_PORT}"), "immunity.yaml")
    assert loaded.config.hosts[0].port == 9005


def test_a_missing_env_var_is_a_problem_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset ${VAR} without default is reported by name."""
    monkeypatch.delenv("IMM_NOPE", raising=False)
    problems = _problems(GOOD.replace("backend: be_app", "backend: ${IMM_NOPE}"))
    assert any("IMM_NOPE" in p and "balancer.backend" in p for p in problems)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """Loading a path that does not exist is a ConfigError naming the path."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert "nope.yaml" in info.value.message


def test_checks_must_name_a_configured_signal() -> None:
    """A check naming an unknown signal is rejected with the known names."""
    text = GOOD + textwrap.dedent(
        """\
        checks:
          - name: errors
            signal: prom
        """
    )
    problems = _problems(text)
    assert any("prom" in p for p in problems)
