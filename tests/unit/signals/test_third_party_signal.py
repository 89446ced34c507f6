"""A signal source from another distribution is found through the `immunity.signals` entry
point group, exactly as docs/writing-an-adapter.md describes, without touching immunity."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from immunity import plugins
from immunity.config import parse
from immunity.domain import Cohort, HostRef
from immunity.errors import ConfigError
from immunity.signals.base import SignalSource

MODULE = '''
"""A third-party signal: queue depth as the "errors" of a cohort (doc example)."""

from pydantic import BaseModel, ConfigDict

from immunity.domain import Observation


class QueueDepthSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "queue_depth"
    url: str
    max_depth: int = 100


class QueueDepthSource:
    Settings = QueueDepthSettings

    def __init__(self, settings, *, base_dir):
        self.settings = settings
        self.name = settings.name

    async def observe(self, cohorts, start, end):
        return {c: Observation(requests=100, errors=len(h), hosts=len(h)) for c, h in cohorts.items()}

    async def aclose(self):
        pass
'''

CONFIG = """\
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
signals:
  - kind: queue_depth
    name: jobs
    url: http://queues.internal:8080
checks:
  - name: job backlog
    signal: jobs
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed-looking distribution `acme-immunity-queues` on sys.path."""
    (tmp_path / "acme_queues.py").write_text(textwrap.dedent(MODULE))
    dist = tmp_path / "acme_immunity_queues-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-immunity-queues\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[immunity.signals]\nqueue_depth = acme_queues:QueueDepthSource\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.available.cache_clear()
    try:
        yield tmp_path
    finally:
        plugins.available.cache_clear()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_entry_point_adapter_is_listed_beside_the_built_in_ones(third_party: Path) -> None:
    """`queue_depth` appears in the signals role next to `prometheus` and `command`."""
    kinds = plugins.available("signals")
    assert {"queue_depth", "prometheus", "command"} <= set(kinds)
    cls = plugins.adapter_class("signals", "queue_depth")
    assert cls.__name__ == "QueueDepthSource"


def test_config_validates_the_third_party_block_with_its_settings(third_party: Path) -> None:
    """immunity.yaml may use `kind: queue_depth`; its fields go through the plugin's Settings."""
    loaded = parse(CONFIG, "immunity.yaml")
    kind, settings = loaded.signals["jobs"]
    assert kind == "queue_depth"
    assert settings.url == "http://queues.internal:8080"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as info:
        parse(CONFIG.replace("    url: http", "    colour: red\n    url: http"), "immunity.yaml")
    assert any("signals[0].colour: unknown field" in p for p in info.value.problems)


@pytest.mark.anyio
async def test_third_party_source_is_a_signal_source(third_party: Path) -> None:
    """Built as the engine builds adapters, it satisfies the SignalSource protocol and observes."""
    loaded = parse(CONFIG, "immunity.yaml")
    kind, settings = loaded.signals["jobs"]
    source = plugins.adapter_class("signals", kind)(settings, base_dir=third_party)
    assert isinstance(source, SignalSource)
    end = dt.datetime.now(dt.UTC)
    obs = await source.observe(
        {Cohort.CANARY: [HostRef(name="h1")]}, end - dt.timedelta(seconds=5), end
    )
    assert obs[Cohort.CANARY].errors == 1


def test_unknown_kind_lists_the_known_ones() -> None:
    """A typo in `kind:` is a config error naming the kinds that exist."""
    with pytest.raises(ConfigError) as info:
        parse(CONFIG.replace("kind: queue_depth", "kind: queue_dept"), "immunity.yaml")
    assert any(
        "unknown signals kind 'queue_dept'" in p and "prometheus" in p for p in info.value.problems
    )
