"""Fixtures: a real two-host sandbox fleet (see hx_fleet.py)."""

from hx_fleet import anyio_backend, hx, sandbox_fleet

__all__ = ["anyio_backend", "hx", "sandbox_fleet"]
