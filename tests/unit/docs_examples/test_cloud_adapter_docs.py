"""The YAML examples in docs/adapters/{alb,cloudwatch,elasticsearch}.md load as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from immunity.config import parse

DOCS = Path(__file__).resolve().parents[3] / "docs" / "adapters"
BASE = """\
app: shop
hosts:
  - {name: web-1, lb_id: i-0a1b2c3d4e5f60001, address: 10.0.1.11}
  - {name: web-2, lb_id: i-0a1b2c3d4e5f60002, address: 10.0.1.12}
balancer:
  kind: alb
  target_group_arn: arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/0123456789abcdef
driver:
  kind: iis
  app: shop
  package_source: x
  sites_root: D:\\sites
"""


def _yaml_blocks(name: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", (DOCS / name).read_text(), re.S)


@pytest.mark.parametrize("name", ["alb.md", "cloudwatch.md", "elasticsearch.md"])
def test_documented_examples_are_valid_configs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every yaml block of the page validates (snippets on top of a minimal config)."""
    for var in ("IIS_PASSWORD", "ES_URL", "ES_API_KEY"):
        monkeypatch.setenv(var, "https://logs.example:9243" if var == "ES_URL" else "x")
    blocks = _yaml_blocks(name)
    assert blocks
    for text in blocks:
        loaded = parse(text if text.startswith("app:") else BASE + text, name)
        assert loaded.config.app == "shop"
