"""AlbTargetGroup on recorded DescribeTargetHealth replies: the states moto cannot model.

moto drops a deregistered target at once and never reports `draining`, `initial` or
`unhealthy`; these tests feed the adapter a tiny fake elbv2 client that returns replies
shaped like AWS's, in sequence, and records the calls it receives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.exceptions import ClientError

from immunity.domain import HostRef, LbState
from immunity.errors import BalancerError
from immunity.lb.alb import AlbTargetGroup

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
ARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
LEAVING = HostRef(name="web-1", lb_id="i-0aaa1111bbbb2222c")


class RecordedElbv2:
    """Answers DescribeTargetHealth with recorded replies in order (the last one repeats)."""

    def __init__(self, replies: Iterable[dict[str, Any] | Exception]) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def describe_target_health(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("DescribeTargetHealth", kw))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    def deregister_targets(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("DeregisterTargets", kw))
        return {}

    def register_targets(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(("RegisterTargets", kw))
        return {}

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _draining_replies() -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = json.loads(
        (HERE / "describe_target_health_draining.json").read_text()
    )["replies"]
    return replies


def _balancer(client: RecordedElbv2, **kw: Any) -> AlbTargetGroup:
    settings = AlbTargetGroup.Settings(target_group_arn=ARN, poll_interval=0.001, **kw)
    return AlbTargetGroup(settings, base_dir=HERE, client=client)


async def test_wait_drained_waits_while_the_target_is_draining() -> None:
    """wait_drained keeps polling through `draining` and returns once the target is gone."""
    client = RecordedElbv2(_draining_replies()[1:])
    lb = _balancer(client)
    with anyio.fail_after(5):
        await lb.wait_drained(LEAVING)
    assert client.names() == ["DescribeTargetHealth"] * 3


async def test_drain_deregisters_then_members_show_draining_then_out() -> None:
    """drain deregisters the serving target; members go serving -> draining -> out."""
    client = RecordedElbv2(_draining_replies())
    lb = _balancer(client)
    await lb.drain(LEAVING)
    assert client.calls[1] == (
        "DeregisterTargets",
        {"TargetGroupArn": ARN, "Targets": [{"Id": "i-0aaa1111bbbb2222c", "Port": 80}]},
    )
    seen = [(await lb.members([LEAVING]))["web-1"].state for _ in range(3)]
    assert seen == [LbState.DRAINING, LbState.DRAINING, LbState.OUT]


async def test_drain_of_a_target_already_draining_calls_nothing() -> None:
    """A second drain while the first one's deregistration delay runs is a no-op."""
    client = RecordedElbv2(_draining_replies()[1:2])
    lb = _balancer(client)
    await lb.drain(LEAVING)
    assert client.names() == ["DescribeTargetHealth"]


async def test_wait_drained_accepts_the_unused_state() -> None:
    """A target listed as `unused` receives no traffic, so it counts as drained."""
    unused = {
        "TargetHealthDescriptions": [
            {
                "Target": {"Id": "i-0aaa1111bbbb2222c", "Port": 80},
                "TargetHealth": {"State": "unused", "Reason": "Target.NotInUse"},
            }
        ]
    }
    client = RecordedElbv2([unused])
    with anyio.fail_after(5):
        await _balancer(client).wait_drained(LEAVING)


async def test_wait_drained_never_returns_while_draining_under_the_callers_deadline() -> None:
    """A target stuck in `draining` keeps wait_drained waiting until the caller's deadline."""
    client = RecordedElbv2(_draining_replies()[1:2])
    lb = _balancer(client)
    with pytest.raises(TimeoutError), anyio.fail_after(0.2):
        await lb.wait_drained(LEAVING)
    assert len(client.calls) > 3


async def test_members_map_every_alb_state() -> None:
    """Each documented TargetHealth state maps to one LbState; unlisted targets are out."""
    reply = json.loads((HERE / "describe_target_health_states.json").read_text())["reply"]
    lb = _balancer(RecordedElbv2([reply]))
    hosts = [HostRef(name=f"h{i}", lb_id=f"i-0000000000000000{i}") for i in range(1, 9)]
    members = await lb.members(hosts)
    assert {n: m.state for n, m in members.items()} == {
        "h1": LbState.SERVING,
        "h2": LbState.UNHEALTHY,
        "h3": LbState.UNHEALTHY,
        "h4": LbState.OUT,
        "h5": LbState.DRAINING,
        "h6": LbState.UNHEALTHY,
        "h7": LbState.DRAINING,
        "h8": LbState.OUT,
    }
    assert "Target.ResponseCodeMismatch" in members["h3"].detail


async def test_wait_healthy_waits_through_initial_and_unhealthy() -> None:
    """After register, wait_healthy polls through `initial` and `unhealthy` until `healthy`."""

    def one(state: str) -> dict[str, Any]:
        return {
            "TargetHealthDescriptions": [
                {
                    "Target": {"Id": "i-0aaa1111bbbb2222c", "Port": 80},
                    "TargetHealth": {"State": state},
                }
            ]
        }

    client = RecordedElbv2([one("initial"), one("unhealthy"), one("initial"), one("healthy")])
    lb = _balancer(client)
    await lb.enable(LEAVING)
    with anyio.fail_after(5):
        await lb.wait_healthy(LEAVING)
    assert client.names() == ["RegisterTargets"] + ["DescribeTargetHealth"] * 4
    assert client.calls[0][1]["Targets"] == [{"Id": "i-0aaa1111bbbb2222c"}]


async def test_enable_after_drain_registers_on_the_ports_seen_at_drain() -> None:
    """Without a port setting, enable puts the target back on the port it was drained from."""
    reply = {
        "TargetHealthDescriptions": [
            {
                "Target": {"Id": "i-0aaa1111bbbb2222c", "Port": 8080},
                "TargetHealth": {"State": "healthy"},
            }
        ]
    }
    client = RecordedElbv2([reply])
    lb = _balancer(client)
    await lb.drain(LEAVING)
    await lb.enable(LEAVING)
    assert client.calls[-1][1]["Targets"] == [{"Id": "i-0aaa1111bbbb2222c", "Port": 8080}]


async def test_throttling_after_retries_is_a_balancer_error_with_a_hint() -> None:
    """A Throttling error that outlived botocore's retries maps to BalancerError with a hint."""
    throttled = ClientError(
        {
            "Error": {"Code": "Throttling", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "DescribeTargetHealth",
    )
    lb = _balancer(RecordedElbv2([throttled]))
    with pytest.raises(BalancerError) as err:
        await lb.wait_drained(LEAVING)
    assert err.value.adapter == "alb"
    assert err.value.host == "web-1"
    assert (
        err.value.message == "alb: DescribeTargetHealth for web-1 failed: Throttling: Rate exceeded"
    )
    assert err.value.hint is not None and "poll_interval" in err.value.hint
    assert isinstance(err.value.__cause__, ClientError)


async def test_access_denied_names_the_iam_action_to_grant() -> None:
    """AccessDenied maps to a hint naming the exact IAM action and the target group."""
    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "User is not authorized"}},
        "DescribeTargetHealth",
    )
    lb = _balancer(RecordedElbv2([denied]))
    with pytest.raises(BalancerError) as err:
        await lb.members([LEAVING])
    assert err.value.hint == (
        f"grant elasticloadbalancing:DescribeTargetHealth to the identity immunity runs as on {ARN}"
    )


def test_settings_reject_a_load_balancer_arn_for_target_group_arn() -> None:
    """A load balancer ARN where a target group ARN belongs is a config error."""
    with pytest.raises(ValueError, match="expected a target group ARN"):
        AlbTargetGroup.Settings(
            target_group_arn="arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
            "loadbalancer/app/web/0123456789abcdef"
        )
