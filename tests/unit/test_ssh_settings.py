"""SSH driver settings and command templates (no network)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from immunity.hosts.ssh import SshDriver, SshSettings, render

BASE: dict[str, Any] = {
    "user": "deploy",
    "known_hosts": "ssh/known_hosts",
    "base": "/srv/shop",
    "service": "shop.service",
    "package_source": "builds/{release}",
}


def test_placeholders_are_replaced_by_shell_quoted_values() -> None:
    """A value with spaces or shell syntax reaches the shell as one literal word."""
    out = render("cp -R {source} {dest}", {"source": "/a b/$(reboot)", "dest": "/x"})
    assert shlex.split(out) == ["cp", "-R", "/a b/$(reboot)", "/x"]


def test_unknown_braces_and_shell_variables_are_left_alone() -> None:
    """`${HOME}`, `{a,b}` and unknown `{names}` pass through to the remote shell unchanged."""
    out = render("echo ${HOME} {a,b} {nope} {service}", {"service": "shop"})
    assert out == "echo ${HOME} {a,b} {nope} shop"


def test_known_hosts_is_required() -> None:
    """There is no way to run without a known_hosts file (no trust on first use)."""
    fields = {k: v for k, v in BASE.items() if k != "known_hosts"}
    with pytest.raises(ValidationError, match="known_hosts"):
        SshSettings.model_validate(fields)


def test_base_must_be_absolute() -> None:
    """A relative base folder on the host is rejected at config time."""
    with pytest.raises(ValidationError, match="absolute path"):
        SshSettings.model_validate({**BASE, "base": "srv/shop"})


def test_default_commands_need_a_service() -> None:
    """The systemd defaults use {service}; leaving it out is a config error naming the field."""
    fields = {k: v for k, v in BASE.items() if k != "service"}
    with pytest.raises(ValidationError, match="stop_command uses"):
        SshSettings.model_validate(fields)


def test_unknown_field_is_rejected() -> None:
    """A typo such as `known_host` is an error, not silently ignored."""
    with pytest.raises(ValidationError):
        SshSettings.model_validate({**BASE, "known_host": "x"})


def test_relative_paths_resolve_against_the_config_folder() -> None:
    """known_hosts and client_keys are relative to the config file's folder."""
    s = SshSettings.model_validate({**BASE, "client_keys": ["ssh/id_ed25519"]})
    drv = SshDriver(s, base_dir=Path("/etc/immunity"))
    assert drv.known_hosts == Path("/etc/immunity/ssh/known_hosts")
    assert drv.client_keys == ["/etc/immunity/ssh/id_ed25519"]
    assert drv.release_dir("1.2") == "/srv/shop/releases/1.2"


def test_a_release_name_with_a_trailing_newline_is_refused() -> None:
    """`$` would accept "v1\\n" as a folder name: refused before any connection."""
    from immunity.domain import HostRef
    from immunity.errors import HostError

    drv = SshDriver(SshSettings.model_validate(BASE), base_dir=Path("/etc/immunity"))
    with pytest.raises(HostError, match="not usable as a folder name"):
        drv._check_name("v1\n", HostRef(name="h1"))
    drv._check_name("v1", HostRef(name="h1"))
