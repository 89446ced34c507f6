"""`immunity serve`: the read-only HTTP API and live page over the journal and the fleet.

A layer beside `cli`, above `engine`: it builds fleets from configs and reads them, through
`immunity.fleet.status` and the journal, and never changes anything.
"""

from __future__ import annotations

from immunity.serve.app import create_app, is_loopback, same_app

__all__ = ["create_app", "is_loopback", "same_app"]
