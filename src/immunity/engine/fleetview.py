"""Moved to `immunity.fleet.state` (the fold sits below the engine: `report` reads it too);
this name stays for code written against it."""

from immunity.fleet.state import (
    FleetState,
    FleetView,
    HostPhase,
    HostView,
    Observed,
    StepRow,
    decode,
    derive,
    encode,
)

__all__ = [
    "FleetState",
    "FleetView",
    "HostPhase",
    "HostView",
    "Observed",
    "StepRow",
    "decode",
    "derive",
    "encode",
]
