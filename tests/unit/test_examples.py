"""The shipped examples/*.yaml load as written and build their host drivers."""

from __future__ import annotations

from pathlib import Path

import pytest

from immunity.config import load
from immunity.hosts.iis import IisDriver, IisSettings
from immunity.hosts.ssh import SshDriver, SshSettings
from immunity.signals.elasticsearch import ElasticsearchSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENV = {
    "WINRM_USER": "CORP\\svc-deploy",
    "WINRM_PASSWORD": "dummy-password",
    "ES_URL": "https://logs.example:9243",
    "ES_API_KEY": "dummy-key",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T000/B000/XXXX",
}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def test_iis_alb_elasticsearch_example_is_the_storys_setup() -> None:
    """The IIS example loads: ALB pool, IIS driver over WinRM/HTTPS, Elasticsearch signal, Slack."""
    loaded = load(EXAMPLES / "iis-alb-elasticsearch.yaml")
    cfg = loaded.config
    assert (cfg.balancer.kind, cfg.driver.kind) == ("alb", "iis")
    assert isinstance(loaded.driver, IisSettings)
    assert loaded.driver.ssl and loaded.driver.cert_validation is True
    assert loaded.driver.password is not None
    assert loaded.driver.password.get_secret_value() == "dummy-password"
    kind, es = loaded.signals["iis"]
    assert kind == "elasticsearch"
    assert isinstance(es, ElasticsearchSettings)
    assert es.filters == {"application_name": "shop"}
    assert (cfg.warmup.consecutive, cfg.warmup.latency_bar) == (5, 0.1)
    assert [k for k, _ in loaded.notify] == ["slack"]
    IisDriver(loaded.driver, base_dir=loaded.base_dir)


def test_linux_haproxy_prometheus_example_loads() -> None:
    """The Linux example loads: HAProxy pool, SSH driver with known_hosts, Prometheus signal."""
    loaded = load(EXAMPLES / "linux-haproxy-prometheus.yaml")
    cfg = loaded.config
    assert (cfg.balancer.kind, cfg.driver.kind) == ("haproxy", "ssh")
    assert isinstance(loaded.driver, SshSettings)
    assert loaded.signals["prom"][0] == "prometheus"
    drv = SshDriver(loaded.driver, base_dir=loaded.base_dir)
    assert drv.known_hosts == EXAMPLES / "ssh" / "known_hosts"
