"""AWS Application Load Balancer target group as immunity's pool (`kind: alb`).

Speaks the Elastic Load Balancing v2 API through boto3 (see `immunity.clients.aws` for
credentials, retries, timeouts and error mapping). Calls used: ``DescribeTargetGroups``
(preflight), ``DescribeTargetHealth`` (one call per look, for the whole target group),
``RegisterTargets``, ``DeregisterTargets``.

Assumes: one target group per fleet, target type ``instance`` or ``ip``; a host's
`HostRef.balancer_id` (``lb_id`` in the config, else its name) is its EC2 instance id, or
its IP address for ``ip`` target groups.

Meanings:

* ``drain`` = ``DeregisterTargets``. The ALB stops sending new requests at once and lets
  in-flight ones finish for the target group's *deregistration delay* (state ``draining``).
  ``DeregisterTargets`` returns before that, so ``wait_drained`` polls until the target is
  no longer listed or is ``unused``: an ALB has no "out of the pool but still registered"
  state.
* ``enable`` = ``RegisterTargets``; ``wait_healthy`` polls until the state is ``healthy``
  (it passes through ``initial`` while the health checks run).
* States: healthy -> serving; draining, unhealthy.draining -> draining; unused or not
  listed -> out; initial, unhealthy, unavailable -> unhealthy.

Without a ``port`` setting, the adapter deregisters every port the instance is registered
on and registers it back on the ports it saw at drain time (the target group's port after a
restart of immunity); set ``port`` when targets listen on a port other than the group's.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from pydantic import Field, field_validator

from immunity.clients.aws import AwsAccess, AwsApi, region_from_arn
from immunity.config.types import Duration
from immunity.domain import HostRef, LbState, Member
from immunity.errors import BalancerError, PreflightError

ADAPTER = "alb"
log = logging.getLogger("immunity.lb.alb")

_TG_ARN = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[^/]+/\w+$"
)

_STATES: dict[str, LbState] = {
    "healthy": LbState.SERVING,
    "draining": LbState.DRAINING,
    "unhealthy.draining": LbState.DRAINING,
    "unused": LbState.OUT,
    "initial": LbState.UNHEALTHY,
    "unhealthy": LbState.UNHEALTHY,
    "unavailable": LbState.UNHEALTHY,
}
# When a host is registered on several ports, the member state is the most "in" of them.
_RANK = {LbState.SERVING: 0, LbState.UNHEALTHY: 1, LbState.DRAINING: 2, LbState.OUT: 3}
_GONE = {"unused"}  # a listed target in this state receives no traffic

_CODE_HINTS = {
    "TargetGroupNotFound": "check target_group_arn: the account, the region and that the "
    "target group still exists (aws elbv2 describe-target-groups)",
    "InvalidTarget": "check hosts[].lb_id: it must be the EC2 instance id (or the IP for an ip "
    "target group), the instance must be running and in the target group's VPC",
    "ValidationError": "check target_group_arn and port in the balancer settings",
}


class AlbSettings(AwsAccess):
    """The `balancer:` block for `kind: alb`. Credentials come from the standard AWS chain."""

    target_group_arn: str
    """ARN of the fleet's target group
    (arn:aws:elasticloadbalancing:...:targetgroup/<name>/<id>)."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Port of the targets; default: the ports they are registered on / the group's port."""
    poll_interval: Duration = 2.0
    """Time between two DescribeTargetHealth calls while waiting for a drain or health."""

    @field_validator("target_group_arn")
    @classmethod
    def _arn(cls, v: str) -> str:
        if not _TG_ARN.match(v):
            raise ValueError(
                "expected a target group ARN "
                "(arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>)"
            )
        return v


@dataclass(frozen=True)
class _Registration:
    """One row of DescribeTargetHealth."""

    id: str
    port: int | None
    state: str
    reason: str
    description: str

    @property
    def detail(self) -> str:
        return " ".join(p for p in (self.state, self.reason, self.description) if p)


class AlbTargetGroup:
    """An ALB target group seen as immunity's `LoadBalancer`."""

    Settings = AlbSettings

    def __init__(
        self, settings: AlbSettings, *, base_dir: Path | None = None, client: Any = None
    ) -> None:
        """`client` injects an elbv2 client (tests replaying recorded replies)."""
        self._s = settings
        self._arn = settings.target_group_arn
        self._api = AwsApi(
            settings,
            adapter=ADAPTER,
            error_cls=BalancerError,
            region=region_from_arn(settings.target_group_arn),
            code_hints=_CODE_HINTS,
            clients={"elbv2": client} if client is not None else None,
        )
        # ports seen at drain time, so enable puts the host back where it was
        self._ports: dict[str, list[int]] = {}
        self._dims: list[dict[str, str]] | None = None

    # -- reading ----------------------------------------------------------------------

    async def _registrations(
        self, *, host: str | None = None, preflight: bool = False
    ) -> list[_Registration]:
        reply = await self._api.call(
            "elbv2",
            "DescribeTargetHealth",
            host=host,
            resource=self._arn,
            preflight=preflight,
            TargetGroupArn=self._arn,
        )
        out = []
        for d in reply.get("TargetHealthDescriptions", []):
            target, health = d.get("Target", {}), d.get("TargetHealth", {})
            port = target.get("Port")
            out.append(
                _Registration(
                    id=str(target.get("Id", "")),
                    port=int(port) if port is not None else None,
                    state=str(health.get("State", "")),
                    reason=str(health.get("Reason", "")),
                    description=str(health.get("Description", "")),
                )
            )
        return out

    def _mine(self, regs: Sequence[_Registration], host: HostRef) -> list[_Registration]:
        return [
            r
            for r in regs
            if r.id == host.balancer_id
            and (self._s.port is None or r.port is None or r.port == self._s.port)
            and r.reason != "Target.NotRegistered"
        ]

    def _member(self, regs: Sequence[_Registration], host: HostRef) -> Member:
        mine = self._mine(regs, host)
        if not mine:
            return Member(name=host.name, state=LbState.OUT, detail="not registered")
        ranked = sorted(mine, key=lambda r: _RANK[_STATES.get(r.state, LbState.UNHEALTHY)])
        best = ranked[0]
        state = _STATES.get(best.state, LbState.UNHEALTHY)
        return Member(name=host.name, state=state, detail="; ".join(r.detail for r in ranked))

    async def members(self, hosts: Sequence[HostRef]) -> dict[str, Member]:
        """Each host's state from one DescribeTargetHealth of the whole target group."""
        regs = await self._registrations()
        return {h.name: self._member(regs, h) for h in hosts}

    async def pool_members(self) -> dict[str, Member]:
        """Every registered target of the group, keyed by instance id or IP."""
        regs = await self._registrations()
        out: dict[str, Member] = {}
        for r in regs:
            if r.reason == "Target.NotRegistered" or r.state in _GONE:
                continue
            if self._s.port is not None and r.port is not None and r.port != self._s.port:
                continue
            state = _STATES.get(r.state, LbState.UNHEALTHY)
            prev = out.get(r.id)
            if prev is None or _RANK[state] < _RANK[prev.state]:
                out[r.id] = Member(name=r.id, state=state, detail=r.detail)
        return out

    # -- acting -------------------------------------------------------------------------

    def _targets(self, host: HostRef, ports: Sequence[int | None]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in ports:
            t: dict[str, Any] = {"Id": host.balancer_id}
            if p is not None:
                t["Port"] = p
            out.append(t)
        return out

    async def drain(self, host: HostRef) -> None:
        """Deregister `host` (every port it is registered on). Idempotent: a target that is
        already draining or gone is left alone."""
        mine = self._mine(await self._registrations(host=host.name), host)
        leaving = [r for r in mine if _STATES.get(r.state) not in (LbState.DRAINING, LbState.OUT)]
        seen = [r.port for r in mine if r.port is not None]
        if seen and self._s.port is None:
            self._ports[host.name] = sorted(set(seen))
        if not leaving:
            log.debug("alb: %s already leaving or out (%s)", host.name, [r.state for r in mine])
            return
        ports = [self._s.port] if self._s.port is not None else [r.port for r in leaving]
        await self._api.call(
            "elbv2",
            "DeregisterTargets",
            host=host.name,
            resource=self._arn,
            write=True,
            TargetGroupArn=self._arn,
            Targets=self._targets(host, ports),
        )
        log.info("alb: deregistered %s (%s) from %s", host.name, host.balancer_id, self._arn)

    async def wait_drained(self, host: HostRef) -> None:
        """Poll DescribeTargetHealth until `host` is no longer listed or is ``unused``.

        That is the end of the deregistration delay: in-flight requests have finished or
        been cut by the ALB. The caller owns the deadline.
        """
        while True:
            mine = self._mine(await self._registrations(host=host.name), host)
            if all(r.state in _GONE for r in mine):
                return
            log.debug("alb: waiting for %s to drain: %s", host.name, [r.state for r in mine])
            await anyio.sleep(self._s.poll_interval)

    async def enable(self, host: HostRef) -> None:
        """Register `host` (on the configured port, or the ports seen at drain). Idempotent:
        registering a registered target is a no-op for the ALB."""
        if self._s.port is not None:
            ports: list[int | None] = [self._s.port]
        else:
            ports = list(self._ports.get(host.name, [])) or [None]
        await self._api.call(
            "elbv2",
            "RegisterTargets",
            host=host.name,
            resource=self._arn,
            write=True,
            TargetGroupArn=self._arn,
            Targets=self._targets(host, ports),
        )
        log.info("alb: registered %s (%s) in %s", host.name, host.balancer_id, self._arn)

    async def wait_healthy(self, host: HostRef) -> None:
        """Poll DescribeTargetHealth until `host` is ``healthy``. The caller owns the deadline."""
        while True:
            mine = self._mine(await self._registrations(host=host.name), host)
            if any(r.state == "healthy" for r in mine):
                return
            log.debug("alb: waiting for %s to be healthy: %s", host.name, [r.detail for r in mine])
            await anyio.sleep(self._s.poll_interval)

    # -- preflight ------------------------------------------------------------------------

    async def preflight(self, hosts: Sequence[HostRef]) -> None:
        """Credentials resolve, the target group exists and takes instances or IPs, and
        every host is a registered target. Changes nothing."""
        await self._api.check_credentials()
        reply = await self._api.call(
            "elbv2",
            "DescribeTargetGroups",
            resource=self._arn,
            preflight=True,
            TargetGroupArns=[self._arn],
        )
        groups = reply.get("TargetGroups", [])
        if not groups:
            raise PreflightError(
                f"alb: target group {self._arn} not found",
                hint=_CODE_HINTS["TargetGroupNotFound"],
                context={"adapter": ADAPTER},
            )
        target_type = groups[0].get("TargetType", "instance")
        if target_type not in ("instance", "ip"):
            raise PreflightError(
                f"alb: target group {self._arn} has target type {target_type!r}, "
                "expected 'instance' or 'ip'",
                hint="point target_group_arn at the target group of the EC2 fleet",
                context={"adapter": ADAPTER},
            )
        regs = await self._registrations(preflight=True)
        missing = [h for h in hosts if not self._mine(regs, h)]
        if missing:
            named = ", ".join(f"{h.name} ({h.balancer_id})" for h in missing)
            what = "instance id" if target_type == "instance" else "IP address"
            raise PreflightError(
                f"alb: {len(missing)} host(s) not registered in target group {self._arn}: {named}",
                hint=f"set hosts[].lb_id to each host's {what} as registered in the target "
                "group, or register the hosts (aws elbv2 register-targets) before deploying",
                context={"adapter": ADAPTER, "hosts": [h.name for h in missing]},
            )

    async def requests_between(
        self, hosts: Sequence[HostRef], start: dt.datetime, end: dt.datetime
    ) -> int | None:
        """The target group's own ``RequestCount`` (CloudWatch, ``AWS/ApplicationELB``,
        dimensions ``LoadBalancer`` + ``TargetGroup``, Sum per 60 s) over the whole periods
        inside [start, end): the ALB counts per target group, never per target, so `hosts`
        is the whole pool. None when no whole period fits in the window or CloudWatch has no
        datapoint for them (no traffic, or not published yet: ALB publishes a period only
        when it had requests, a minute or more late). Raises BalancerError."""
        lo, hi = _ceil_minute(start), _floor_minute(end)
        if hi <= lo:
            return None
        dims = await self._dimensions()
        reply = await self._api.call(
            "cloudwatch",
            "GetMetricData",
            resource=self._arn,
            MetricDataQueries=[
                {
                    "Id": "requests",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": "AWS/ApplicationELB",
                            "MetricName": "RequestCount",
                            "Dimensions": dims,
                        },
                        "Period": 60,
                        "Stat": "Sum",
                    },
                    "ReturnData": True,
                }
            ],
            StartTime=lo,
            EndTime=hi,
        )
        values = [
            float(v)
            for r in reply.get("MetricDataResults", [])
            for v in r.get("Values", [])
            if v is not None and math.isfinite(v)
        ]
        return round(sum(values)) if values else None

    async def _dimensions(self) -> list[dict[str, str]]:
        """CloudWatch's ``LoadBalancer`` and ``TargetGroup`` dimensions of this target group
        (its first load balancer's, from ``DescribeTargetGroups``), read once."""
        if self._dims is None:
            reply = await self._api.call(
                "elbv2", "DescribeTargetGroups", resource=self._arn, TargetGroupArns=[self._arn]
            )
            groups = reply.get("TargetGroups", [])
            arns = groups[0].get("LoadBalancerArns", []) if groups else []
            if not arns:
                raise BalancerError(
                    f"alb: target group {self._arn} is not attached to a load balancer, so "
                    "CloudWatch has no RequestCount for it",
                    adapter=ADAPTER,
                )
            self._dims = [
                {"Name": "LoadBalancer", "Value": arns[0].split(":loadbalancer/", 1)[-1]},
                {"Name": "TargetGroup", "Value": self._arn.rsplit(":", 1)[-1]},
            ]
        return self._dims

    async def aclose(self) -> None:
        """Close the boto3 client's connection pool. Idempotent."""
        await self._api.aclose()


def _floor_minute(t: dt.datetime) -> dt.datetime:
    return dt.datetime.fromtimestamp(math.floor(t.timestamp() / 60) * 60, dt.UTC)


def _ceil_minute(t: dt.datetime) -> dt.datetime:
    return dt.datetime.fromtimestamp(math.ceil(t.timestamp() / 60) * 60, dt.UTC)
