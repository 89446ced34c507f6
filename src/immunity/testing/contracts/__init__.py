"""Contract suites: one per role, passed by every adapter of the role, real or in memory.

A suite states the role's promises as the engine relies on them, as a class of pytest
cases: `LoadBalancerContract`, `HostDriverContract`, `SignalSourceContract`,
`ProberContract`, `NotifierContract`, `JournalContract`. To hold an adapter to one, subclass it in a test module as
`Test<Adapter>` and give it a `harness` fixture that returns the role's harness: the adapter
under test, the hosts, and ways to read the *server's own* view (never the adapter's
answer) and to send the server real traffic::

    class TestHAProxyPool(LoadBalancerContract):
        @pytest.fixture
        def harness(self, hx: Fleet) -> BalancerHarness:
            return HAProxyHarness(hx)

A case an adapter genuinely cannot honour is listed in the subclass's `XFAIL`
(`{case name: reason}`) and runs as a strict xfail: it is reported, and a case that starts
passing fails the run until it is taken off the list. The cases are anyio tests on asyncio;
this module needs pytest and anyio's pytest plugin (the `dev` extra), and is not imported by
`immunity.testing` itself.

Deadlines in the cases are short (a fraction of a second to a few seconds): the suites run
in the whole test suite, against servers started once per module.
"""

from __future__ import annotations

from immunity.testing.contracts.base import Contract, Unsupported
from immunity.testing.contracts.hosts import HostDriverContract, HostHarness
from immunity.testing.contracts.journal import JournalContract, JournalHarness
from immunity.testing.contracts.lb import BalancerHarness, LoadBalancerContract
from immunity.testing.contracts.notify import NotifierContract, NotifierHarness
from immunity.testing.contracts.probe import ProberContract, ProberHarness
from immunity.testing.contracts.signals import SignalHarness, SignalSourceContract

__all__ = [
    "BalancerHarness",
    "Contract",
    "HostDriverContract",
    "HostHarness",
    "JournalContract",
    "JournalHarness",
    "LoadBalancerContract",
    "NotifierContract",
    "NotifierHarness",
    "ProberContract",
    "ProberHarness",
    "SignalHarness",
    "SignalSourceContract",
    "Unsupported",
]
