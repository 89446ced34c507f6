"""The HostDriver role: `base` (the Protocol), the drivers, and `ReadDeadline` (deadline.py),
which ends a stalled host's reads for any driver."""

from immunity.hosts.deadline import HOST_READ_S, ReadDeadline

__all__ = ["HOST_READ_S", "ReadDeadline"]
