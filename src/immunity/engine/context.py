"""Moved to `immunity.fleet.context` (the fleet is read below the engine); this name stays for
code written against it."""

from immunity.fleet.context import (
    READ_CONCURRENCY,
    Fleet,
    build_fleet,
    host_refs,
    open_journal,
    unknown_members,
)
from immunity.fleet.state import Sighting

__all__ = [
    "READ_CONCURRENCY",
    "Fleet",
    "Sighting",
    "build_fleet",
    "host_refs",
    "open_journal",
    "unknown_members",
]
