"""The `SignalSource` role: per-cohort observations over a window.

A source is asked, once per bake interval, what each cohort's hosts did between `start`
and `end` (aware UTC). It returns one `Observation` per cohort; when it cannot tell it
returns `Observation.missing(...)` or raises `SignalError` — never zeros that look like a pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from immunity.domain import Cohort, HostRef, Observation


@runtime_checkable
class SignalSource(Protocol):
    name: str

    async def observe(
        self,
        cohorts: Mapping[Cohort, Sequence[HostRef]],
        start: dt.datetime,
        end: dt.datetime,
    ) -> dict[Cohort, Observation]:
        """Observations for each cohort over [start, end). Caller owns the deadline."""
        ...

    async def aclose(self) -> None: ...
