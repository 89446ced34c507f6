"""The `Prober` role: ask a host directly (not through the balancer) whether it serves.

`verify` returns once the host answers its health check as expected and `warm_up` once it
has answered enough requests in a row, warm. Both keep trying until the caller's deadline
(the engine wraps each in `anyio.fail_after(timeouts.verify / warmup.timeout)`) cancels
them, and raise `StepFailed` at once when an answer proves that waiting cannot help.
`last_answer` says what the last probe of a host got, for the message when the deadline
passes. The HTTP prober is the default; `immunity.testing` has an in-memory one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from immunity.domain import HostRef


@runtime_checkable
class Prober(Protocol):
    async def verify(self, host: HostRef) -> None:
        """Return once `host` passes its health check; retries until cancelled."""
        ...

    async def warm_up(self, host: HostRef) -> None:
        """Return once `host` answered enough warm requests in a row; retries until
        cancelled; raises StepFailed when its answers show it never will."""
        ...

    async def check_paths(self, hosts: Sequence[HostRef]) -> Sequence[str]:
        """Preflight: ask each host's verify and warm-up paths once, on the release it runs
        now; one line per path that answers what no switch could pass (a 404, a redirect).
        Hosts that do not answer at all are left to the steps' own deadlines."""
        ...

    def last_answer(self, host: HostRef) -> str | None:
        """What the last probe of `host` got when it was not good enough, else None."""
        ...

    async def aclose(self) -> None: ...
