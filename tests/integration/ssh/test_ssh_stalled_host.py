"""A host whose ssh session stalls (its sshd processes stopped with SIGSTOP, as a frozen
host would be) must not make `status`, preflight or a look at the fleet wait without end:
the engine's read deadline (hosts/deadline.py) ends each read with a HostError naming the
host. Against the real sshd of this folder's conftest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import psutil
import pytest
from sshd_server import Sshd
from test_ssh_driver import Lab

from immunity import config as cfgmod
from immunity.engine import ops
from immunity.engine.context import build_fleet
from immunity.errors import HostError
from immunity.hosts import ReadDeadline
from immunity.testing import memory_fleet

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

EXAMPLES = Path(__file__).parents[3] / "examples"


async def test_a_stalled_ssh_host_is_named_at_the_read_deadline_not_waited_for(
    sshd: Sshd, tmp_path: Path
) -> None:
    """The driver's connection to box1 is up; then every sshd process serving it is stopped.
    Fleet.observe raises HostError naming box1 after the 2 s read deadline (lenient: box1
    reads as None), `status` answers with box1's error, and once sshd runs again the same
    driver reads again. (Without the deadline each of these waits for good.)"""
    lab = Lab(sshd, tmp_path)
    fleet, _ = memory_fleet(["box1", "box2"])  # the fleet's config needs a second host
    fleet = dataclasses.replace(
        fleet, hosts=[lab.host], driver=ReadDeadline(lab.driver, adapter="ssh", limit_s=2)
    )
    try:
        assert (await fleet.observe()).actives == {"box1": None}  # connected, nothing started
        listener = psutil.Process(int((sshd.folder / "sshd.pid").read_text()))
        stalled = listener.children(recursive=True)
        assert stalled, "no sshd process serves the driver's connection"
        for p in stalled:
            p.suspend()
        try:
            with anyio.fail_after(20):
                t0 = anyio.current_time()
                with pytest.raises(HostError) as info:
                    await fleet.observe()
                assert 1.5 < anyio.current_time() - t0 < 6
                assert "host box1 (127.0.0.1) did not answer within 2 s" in info.value.message
                assert info.value.host == "box1"
                seen = await fleet.observe(lenient=True)
                assert seen.actives == {"box1": None} and "box1" in seen.errors
                st = await ops.status(fleet)
            (box1,) = st["hosts"]
            assert "did not answer within 2 s" in str(st), st
            assert box1["active_release"] is None
        finally:
            for p in stalled:
                p.resume()
        with anyio.fail_after(20):
            assert (await fleet.observe()).actives == {"box1": None}
    finally:
        await lab.aclose()


def test_every_fleet_built_from_a_config_reads_its_hosts_under_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build_fleet wraps the configured driver (here SSH) in ReadDeadline; what the driver
    has beyond the role (preflight) still answers through it."""
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX")
    fleet = build_fleet(cfgmod.load(EXAMPLES / "linux-haproxy-prometheus.yaml"))
    assert isinstance(fleet.driver, ReadDeadline)
    assert fleet.driver.adapter == "ssh"
    assert callable(getattr(fleet.driver, "preflight", None)) == callable(
        getattr(fleet.driver.inner, "preflight", None)
    )
