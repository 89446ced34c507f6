"""The `Prober` role: prove a host serves before it goes back into the pool (verify, warm-up)."""

from __future__ import annotations

from immunity.probe.base import Prober
from immunity.probe.http import HttpProber

__all__ = ["HttpProber", "Prober"]
