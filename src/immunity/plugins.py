"""Entry-point registry: YAML `kind:` name -> adapter class, per role.

Roles are the entry-point groups `immunity.lb`, `immunity.hosts`, `immunity.signals`,
`immunity.notify`. A third party adds an adapter by declaring an entry point in its own
package; nothing here names a concrete adapter.

An adapter class has a `Settings` attribute (a frozen, strict pydantic model of its YAML
block, without `kind`) and is built as `cls(settings, base_dir=<config folder>)`.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from immunity.errors import ConfigError

ROLES = ("lb", "hosts", "signals", "notify")


@cache
def available(role: str) -> dict[str, Any]:
    """kind -> entry point, for one role."""
    return {ep.name: ep for ep in entry_points(group=f"immunity.{role}")}


def adapter_class(role: str, kind: str) -> Any:
    eps = available(role)
    if kind not in eps:
        raise ConfigError(
            f"unknown {role} kind {kind!r}",
            hint=f"known kinds: {', '.join(sorted(eps)) or 'none'}",
        )
    return eps[kind].load()
