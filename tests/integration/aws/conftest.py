"""A real moto server (AWS API emulator, server mode, HTTP on 127.0.0.1) and a small ALB in it.

moto speaks the elbv2, ec2, sts and cloudwatch wire protocols but models no draining, no
real health checks and no ALB metrics (docs/adapters/alb.md); tests of those behaviours
replay recorded replies in tests/unit/aws instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

REGION = "us-east-1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `moto_server` from the venv; fail (never skip) when it is missing."""
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.fail(
            f"moto_server not found at {exe}: install the dev extra (pip install -e .[dev])"
        )
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer within 20 s: {log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Isolate the credential chain: test keys in the environment, no shared files, no IMDS."""
    isolate_aws_env(monkeypatch, tmp_path)


def isolate_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test keys in the environment, no shared files, no IMDS (undone by `monkeypatch`)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def aws_module(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The moto server with the credential chain isolated for the module (as `aws_env`)."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_aws_env(mp, tmp_path_factory.mktemp("aws"))
        yield moto_url


def _reset(moto_url: str) -> None:
    req = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.fixture
def moto(moto_url: str, aws_env: None) -> str:
    """The moto server, emptied before the test."""
    _reset(moto_url)
    return moto_url


@pytest.fixture(scope="module")
def module_alb(moto_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alb]:
    """One ALB for a whole module, on the emptied moto server, with the credential chain
    isolated for the module (as `aws_env`); each case puts the targets back itself."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_aws_env(mp, tmp_path_factory.mktemp("aws"))
        _reset(moto_url)
        yield make_alb(moto_url)


def _client(moto: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=moto, region_name=REGION)


@pytest.fixture
def aws_client(moto: str) -> Any:
    """A factory of plain boto3 clients on the moto server: the *server's* view in assertions."""
    return lambda service: _client(moto, service)


@dataclass
class Alb:
    target_group_arn: str
    load_balancer_arn: str
    instance_ids: list[str]
    elbv2: Any

    def states(self) -> dict[str, str]:
        """Target id -> state, as the server reports the whole group."""
        reply = self.elbv2.describe_target_health(TargetGroupArn=self.target_group_arn)
        return {
            d["Target"]["Id"]: d["TargetHealth"]["State"] for d in reply["TargetHealthDescriptions"]
        }

    def ports(self) -> dict[str, int]:
        reply = self.elbv2.describe_target_health(TargetGroupArn=self.target_group_arn)
        return {d["Target"]["Id"]: d["Target"]["Port"] for d in reply["TargetHealthDescriptions"]}


@pytest.fixture
def alb(moto: str) -> Alb:
    """A VPC, an ALB with a listener, a target group and three registered instances."""
    return make_alb(moto)


def make_alb(moto: str) -> Alb:
    """Create a VPC, an ALB with a listener, a target group and three registered instances
    on the moto server at `moto` (credentials from the environment)."""
    ec2, elbv2 = _client(moto, "ec2"), _client(moto, "elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for i, z in ((1, "a"), (2, "b"))
    ]
    lb = elbv2.create_load_balancer(Name="immunity-lb", Subnets=subnets)["LoadBalancers"][0]
    tg = elbv2.create_target_group(
        Name="immunity-tg",
        Protocol="HTTP",
        Port=80,
        VpcId=vpc,
        HealthCheckPath="/health",
        TargetType="instance",
    )["TargetGroups"][0]
    elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}],
    )
    ids = [
        i["InstanceId"]
        for i in ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=3,
            MaxCount=3,
            InstanceType="t3.micro",
            SubnetId=subnets[0],
        )["Instances"]
    ]
    elbv2.register_targets(
        TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": i, "Port": 80} for i in ids]
    )
    return Alb(tg["TargetGroupArn"], lb["LoadBalancerArn"], ids, elbv2)
