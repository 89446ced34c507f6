"""The full YAML examples in docs/adapters/{iis,ssh}.md load as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from immunity.config import parse

DOCS = Path(__file__).resolve().parents[3] / "docs" / "adapters"


@pytest.mark.parametrize("name", ["iis.md", "ssh.md"])
def test_documented_configs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every yaml block of the page that is a whole config (starts with `app:`) validates."""
    monkeypatch.setenv("WINRM_USER", "CORP\\svc-deploy")
    monkeypatch.setenv("WINRM_PASSWORD", "x")
    blocks = re.findall(r"```yaml\n(.*?)```", (DOCS / name).read_text(), re.S)
    configs = [b for b in blocks if b.startswith("app:")]
    assert configs
    for text in configs:
        loaded = parse(text, name)
        assert loaded.config.driver.kind == name.removesuffix(".md")
