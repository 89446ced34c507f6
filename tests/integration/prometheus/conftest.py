"""Fixtures of the Prometheus integration tests (servers live in prom_fleet.py)."""

from prom_fleet import anyio_backend, prometheus_fleet, prometheus_with_data

__all__ = ["anyio_backend", "prometheus_fleet", "prometheus_with_data"]
