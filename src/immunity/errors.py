"""immunity's whole error tree. Imports nothing of ours.

Exceptions mean "could not act or measure"; a bad release is a *verdict*, not an exception.

    ImmunityError                      message, context, hint, stable kebab-case `reference`
    ├── ConfigError                    immunity.yaml rejected (exit 2), nothing touched
    ├── PreflightError                 a host/balancer/source not ready before anything changed (exit 2)
    ├── AdapterError                   a foreign error mapped at an adapter boundary (adapter, host)
    │   ├── BalancerError              load balancer API failed / timed out
    │   ├── HostError                  host driver could not act (stop/start/install/...)
    │   ├── SignalError                a signal source could not be read
    │   └── NotifyError                a notifier failed (journaled, never changes the outcome)
    ├── StepFailed                     a host step failed (verify, warm-up, drain timeout)
    ├── JournalError                   the journal could not be written/read: change nothing more
    │   ├── JournalLocked              another process holds the journal's lock past the deadline (exit 5)
    │   └── JournalUnavailable         the journal could not be opened (server, password, database): nothing touched
    ├── LeaseHeld                      another deployment holds the app's lease (exit 5)
    ├── LeaseLost                      our fencing token is stale: another process took over
    └── CapacityExhausted              no host can leave the pool: every slot is held by a host
                                       that will not come back in this run

See docs/errors.md for each reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ImmunityError(Exception):
    """Base of every error immunity raises on purpose."""

    reference = "immunity-error"
    exit_code = 1
    label = "error"  # what the CLI calls it: "nothing to do" for a refusal with nothing to do

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context: dict[str, Any] = dict(context or {})

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.context:
            out["context"] = {k: str(v) for k, v in self.context.items()}
        return out


class ConfigError(ImmunityError):
    """The configuration was rejected. `problems` holds every `file:line:col field: ...` line."""

    reference = "config-invalid"
    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.problems = list(problems or [message])


class PreflightError(ImmunityError):
    reference = "preflight-failed"
    exit_code = 2


class AdapterError(ImmunityError):
    """A foreign error mapped at an adapter boundary."""

    reference = "adapter-error"

    def __init__(self, message: str, *, adapter: str, host: str | None = None, **kw: Any) -> None:
        ctx = dict(kw.pop("context", None) or {})
        ctx["adapter"] = adapter
        if host is not None:
            ctx["host"] = host
        super().__init__(message, context=ctx, **kw)
        self.adapter = adapter
        self.host = host


class BalancerError(AdapterError):
    reference = "balancer-error"


class HostError(AdapterError):
    reference = "host-error"


class SignalError(AdapterError):
    reference = "signal-error"


class NotifyError(AdapterError):
    reference = "notify-error"


class StepFailed(ImmunityError):
    """A host step could not complete (drain timed out, verify failed, warm-up never fast)."""

    reference = "step-failed"

    def __init__(self, message: str, *, host: str, step: str, **kw: Any) -> None:
        ctx = dict(kw.pop("context", None) or {})
        ctx.update(host=host, step=step)
        super().__init__(message, context=ctx, **kw)
        self.host = host
        self.step = step


class JournalError(ImmunityError):
    """The journal cannot be written: immunity changes nothing more, a human must look."""

    reference = "journal-error"
    exit_code = 4


class JournalUnavailable(JournalError):
    """The journal could not be opened at all (its server refused or did not answer the
    connection, refused the password, has no such database): this process touched nothing.
    Exit 4, like any JournalError; the hint names what to check and the command to check it."""

    reference = "journal-unavailable"


class JournalLocked(JournalError):
    """Another process held the journal's write lock (SQLite) or the rows a write needs
    (PostgreSQL) past the deadline, e.g. a process stopped (SIGSTOP) inside a write. The
    message names that process and its state when the journal can tell; reads still work.
    Like any JournalError it means "change nothing more"; like LeaseHeld it is exit 5: another
    process is in the way, and the hint says how to get it out of the way."""

    reference = "journal-locked"
    exit_code = 5


class LeaseHeld(ImmunityError):
    reference = "lease-held"
    exit_code = 5


class LeaseLost(ImmunityError):
    reference = "lease-lost"
    exit_code = 5


class CapacityExhausted(ImmunityError):
    """Every `max_unavailable` slot is held by a host whose walk failed and that stays out."""

    reference = "capacity-exhausted"


class NothingToResume(ImmunityError):
    """`resume` found no interrupted, unfinished or held run of the app to take over."""

    reference = "nothing-to-resume"
    exit_code = 2
    label = "nothing to do"


class NothingToRollBack(NothingToResume):
    """`rollback` found no host to move: each already serves the release it ran before the
    last change (e.g. after a revert), or no host has a previous release."""

    reference = "nothing-to-roll-back"
    label = "nothing to roll back"  # what the CLI prints first: the messages do not repeat it
