"""AlbTargetGroup against a real moto server over HTTP: API calls, preflight, error mapping."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest

from immunity.domain import HostRef, LbState
from immunity.errors import BalancerError, PreflightError
from immunity.lb.alb import AlbTargetGroup
from immunity.lb.base import LoadBalancer

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-MARKER-do-not-log-0123456789abcdef"


def _balancer(moto: str, arn: str, **kw: Any) -> AlbTargetGroup:
    settings = AlbTargetGroup.Settings(
        target_group_arn=arn, endpoint_url=moto, poll_interval=0.02, **kw
    )
    return AlbTargetGroup(settings, base_dir=Path("."))


def _hosts(ids: list[str]) -> list[HostRef]:
    return [HostRef(name=f"web-{n}", lb_id=i) for n, i in enumerate(ids, 1)]


async def test_alb_target_group_is_a_load_balancer(moto: str, alb: Any) -> None:
    """The adapter satisfies the LoadBalancer protocol."""
    lb = _balancer(moto, alb.target_group_arn)
    assert isinstance(lb, LoadBalancer)
    await lb.aclose()


async def test_preflight_accepts_a_group_with_every_host_registered(moto: str, alb: Any) -> None:
    """Preflight passes when credentials resolve and every host is a registered target."""
    lb = _balancer(moto, alb.target_group_arn)
    await lb.preflight(_hosts(alb.instance_ids))
    await lb.aclose()


async def test_preflight_rejects_an_unknown_target_group(moto: str, alb: Any) -> None:
    """An ARN of a target group that does not exist fails preflight, naming the setting."""
    arn = alb.target_group_arn.rsplit("/", 1)[0] + "/0123456789abcdef"
    lb = _balancer(moto, arn)
    with pytest.raises(PreflightError) as err:
        await lb.preflight(_hosts(alb.instance_ids))
    assert "TargetGroupNotFound" in err.value.message
    assert err.value.hint is not None and "target_group_arn" in err.value.hint
    await lb.aclose()


async def test_preflight_names_hosts_that_are_not_registered(moto: str, alb: Any) -> None:
    """A host whose lb_id is not a target of the group fails preflight by name."""
    lb = _balancer(moto, alb.target_group_arn)
    hosts = [*_hosts(alb.instance_ids), HostRef(name="web-9", lb_id="i-00000000000000009")]
    with pytest.raises(PreflightError) as err:
        await lb.preflight(hosts)
    assert "web-9 (i-00000000000000009)" in err.value.message
    assert "web-1" not in err.value.message
    assert err.value.hint is not None and "lb_id" in err.value.hint
    await lb.aclose()


async def test_preflight_without_credentials_says_how_to_set_them(
    moto: str, alb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no credentials anywhere in the chain, preflight fails with a hint, touching nothing."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    lb = _balancer(moto, alb.target_group_arn)
    with pytest.raises(PreflightError) as err:
        await lb.preflight(_hosts(alb.instance_ids))
    assert "NoCredentials" in err.value.message
    assert err.value.hint is not None and "AWS_PROFILE" in err.value.hint
    assert "AWS_ACCESS_KEY_ID" in err.value.hint
    await lb.aclose()


async def test_members_reports_registered_hosts_serving_and_others_out(moto: str, alb: Any) -> None:
    """Registered healthy targets are serving; a deregistered one is out."""
    alb.elbv2.deregister_targets(
        TargetGroupArn=alb.target_group_arn, Targets=[{"Id": alb.instance_ids[0], "Port": 80}]
    )
    lb = _balancer(moto, alb.target_group_arn)
    members = await lb.members(_hosts(alb.instance_ids))
    assert {n: m.state for n, m in members.items()} == {
        "web-1": LbState.OUT,
        "web-2": LbState.SERVING,
        "web-3": LbState.SERVING,
    }
    await lb.aclose()


async def test_drain_deregisters_the_target_and_wait_drained_returns(moto: str, alb: Any) -> None:
    """drain removes exactly that target from the group; wait_drained then returns."""
    lb = _balancer(moto, alb.target_group_arn)
    host = _hosts(alb.instance_ids)[0]
    await lb.drain(host)
    with anyio.fail_after(5):
        await lb.wait_drained(host)
    assert set(alb.states()) == set(alb.instance_ids[1:])
    await lb.aclose()


async def test_drain_twice_is_a_no_op(moto: str, alb: Any) -> None:
    """Draining a host that is already out changes nothing and raises nothing."""
    lb = _balancer(moto, alb.target_group_arn)
    host = _hosts(alb.instance_ids)[0]
    await lb.drain(host)
    await lb.drain(host)
    assert set(alb.states()) == set(alb.instance_ids[1:])
    await lb.aclose()


async def test_enable_registers_the_target_back_on_its_port(moto: str, alb: Any) -> None:
    """After drain and enable the target is registered again, on the port it had."""
    alb.elbv2.deregister_targets(
        TargetGroupArn=alb.target_group_arn, Targets=[{"Id": alb.instance_ids[0], "Port": 80}]
    )
    alb.elbv2.register_targets(
        TargetGroupArn=alb.target_group_arn, Targets=[{"Id": alb.instance_ids[0], "Port": 8080}]
    )
    lb = _balancer(moto, alb.target_group_arn)
    host = _hosts(alb.instance_ids)[0]
    await lb.drain(host)
    assert alb.instance_ids[0] not in alb.states()
    await lb.enable(host)
    with anyio.fail_after(5):
        await lb.wait_healthy(host)
    assert alb.ports()[alb.instance_ids[0]] == 8080
    assert alb.states()[alb.instance_ids[0]] == "healthy"
    await lb.aclose()


async def test_port_setting_registers_on_that_port(moto: str, alb: Any) -> None:
    """With `port` set, enable registers the target on that port."""
    alb.elbv2.deregister_targets(
        TargetGroupArn=alb.target_group_arn, Targets=[{"Id": alb.instance_ids[0], "Port": 80}]
    )
    lb = _balancer(moto, alb.target_group_arn, port=9090)
    host = _hosts(alb.instance_ids)[0]
    await lb.enable(host)
    assert alb.ports()[alb.instance_ids[0]] == 9090
    await lb.aclose()


async def test_enable_of_a_stopped_instance_is_a_balancer_error_naming_the_host(
    moto: str, alb: Any, aws_client: Any
) -> None:
    """Registering a stopped instance is refused; that maps to BalancerError with a hint."""
    aws_client("ec2").stop_instances(InstanceIds=[alb.instance_ids[0]])
    lb = _balancer(moto, alb.target_group_arn)
    host = HostRef(name="web-9", lb_id=alb.instance_ids[0])
    with pytest.raises(BalancerError) as err:
        await lb.enable(host)
    assert err.value.host == "web-9"
    assert err.value.adapter == "alb"
    assert "InvalidTarget" in err.value.message
    assert err.value.hint is not None and "lb_id" in err.value.hint
    await lb.aclose()


async def test_role_arn_is_assumed_through_sts(moto: str, alb: Any) -> None:
    """With role_arn, calls run under credentials from STS AssumeRole and still succeed."""
    lb = _balancer(
        moto,
        alb.target_group_arn,
        role_arn="arn:aws:iam::123456789012:role/immunity-deployer",
        sts_endpoint_url=moto,
        external_id="ext-1",
    )
    await lb.preflight(_hosts(alb.instance_ids))
    await lb.drain(_hosts(alb.instance_ids)[1])
    assert set(alb.states()) == {alb.instance_ids[0], alb.instance_ids[2]}
    await lb.aclose()


async def test_an_endpoint_never_reached_is_named_at_once_not_retried(moto: str, alb: Any) -> None:
    """With the default retries (8 attempts), an endpoint nothing listens on is named at
    the first call (no backoff over 8 attempts, which took tens of seconds and made
    `status` say only that the balancer did not answer within 2 s); once the endpoint
    answered, the adapter's calls are retried as before (a registered target is read)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    lb = _balancer(dead, alb.target_group_arn)
    # one refused connection takes well under a second; 8 attempts with backoff took
    # 8-35 s (random), past any wait of a reader like `status`
    with anyio.fail_after(5), pytest.raises(BalancerError) as err:
        await lb.members(_hosts(alb.instance_ids))
    assert "EndpointConnectionError" in err.value.message and dead in err.value.message
    assert err.value.hint is not None and "endpoint" in err.value.hint
    await lb.aclose()
    live = _balancer(moto, alb.target_group_arn)
    assert set(await live.members(_hosts(alb.instance_ids)))
    await live.aclose()


async def test_unreachable_endpoint_is_a_balancer_error_with_a_network_hint(alb: Any) -> None:
    """A closed port maps to BalancerError naming the operation, with a network hint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    lb = _balancer(dead, alb.target_group_arn, max_attempts=1, connect_timeout=1)
    with pytest.raises(BalancerError) as err:
        await lb.members(_hosts(alb.instance_ids))
    assert "DescribeTargetHealth" in err.value.message
    assert err.value.hint is not None and "endpoint" in err.value.hint
    await lb.aclose()


async def test_secret_key_never_appears_in_logs_or_errors(
    moto: str, alb: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The secret access key appears in no log record and no error, even at DEBUG."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    good = _balancer(moto, alb.target_group_arn)
    await good.preflight(_hosts(alb.instance_ids))
    await good.drain(_hosts(alb.instance_ids)[0])
    await good.enable(_hosts(alb.instance_ids)[0])
    await good.aclose()
    bad_arn = alb.target_group_arn.rsplit("/", 1)[0] + "/0123456789abcdef"
    bad = _balancer(moto, bad_arn)
    for attempt in (
        bad.preflight(_hosts(alb.instance_ids)),
        bad.drain(_hosts(alb.instance_ids)[0]),
    ):
        with pytest.raises((PreflightError, BalancerError)) as err:
            await attempt
        texts += [str(err.value), repr(err.value), str(err.value.to_dict()), str(err.value.hint)]
        texts.append(repr(err.value.__cause__))
    await bad.aclose()
    assert any("botocore" in r.name for r in caplog.records)  # DEBUG logging really was on
    assert SECRET not in caplog.text
    assert all(SECRET not in t for t in texts)


async def test_pool_members_lists_every_registered_target_by_id(moto: str, alb: Any) -> None:
    """pool_members names every registered target, configured or not; a deregistered one
    is gone (the ALB's own DescribeTargetHealth is the source)."""
    alb.elbv2.deregister_targets(
        TargetGroupArn=alb.target_group_arn, Targets=[{"Id": alb.instance_ids[0], "Port": 80}]
    )
    lb = _balancer(moto, alb.target_group_arn)
    pool = await lb.pool_members()
    health = alb.elbv2.describe_target_health(TargetGroupArn=alb.target_group_arn)
    listed = {
        d["Target"]["Id"]
        for d in health["TargetHealthDescriptions"]
        if d["TargetHealth"]["State"] not in ("unused", "draining")
    }
    assert sorted(listed) == sorted(pool) == sorted(alb.instance_ids[1:])
    assert {m.state for m in pool.values()} == {LbState.SERVING}
    await lb.aclose()


async def test_a_stopped_instance_is_not_a_serving_pool_member(
    moto: str, alb: Any, aws_client: Any
) -> None:
    """A registered target whose instance is stopped is not reported serving, so preflight
    refuses it instead of draining the others around it (the ALB's own view decides)."""
    aws_client("ec2").stop_instances(InstanceIds=[alb.instance_ids[0]])
    lb = _balancer(moto, alb.target_group_arn)
    health = alb.elbv2.describe_target_health(TargetGroupArn=alb.target_group_arn)
    state = {
        d["Target"]["Id"]: d["TargetHealth"]["State"] for d in health["TargetHealthDescriptions"]
    }
    members = await lb.members(_hosts(alb.instance_ids))
    assert state[alb.instance_ids[0]] != "healthy"
    assert members["web-1"].state is not LbState.SERVING
    assert {members["web-2"].state, members["web-3"].state} == {LbState.SERVING}
    await lb.aclose()
