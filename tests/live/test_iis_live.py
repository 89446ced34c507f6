"""The IIS driver against a real Windows host over WinRM. Runs only when configured:

    IMMUNITY_WINRM_HOST       host name matching the HTTPS listener's certificate
    IMMUNITY_WINRM_USER       e.g. CORP\\deploy
    IMMUNITY_WINRM_PASSWORD
    IMMUNITY_IIS_PACKAGE      package template the host can read, e.g. \\\\files\\builds\\{release}.zip
                              (the zips of releases "live-a" and "live-b" must exist)
    IMMUNITY_IIS_SITES_ROOT   default C:\\immunity-live
    IMMUNITY_WINRM_AUTH       default negotiate
    IMMUNITY_WINRM_CA         optional CA bundle path (cert_validation)
    IMMUNITY_IIS_PORT         binding port of the test sites, default 18080 (plain http)

It creates sites named "immunity-live-*" and removes them at the end.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from immunity.domain import HostRef
from immunity.hosts.iis import IisDriver, IisSettings

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("IMMUNITY_WINRM_HOST"), reason="IMMUNITY_WINRM_HOST is not set"
    ),
]


def _driver() -> IisDriver:
    env = os.environ
    settings = IisSettings.model_validate(
        {
            "app": "immunity-live",
            "username": env.get("IMMUNITY_WINRM_USER"),
            "password": env.get("IMMUNITY_WINRM_PASSWORD"),
            "auth": env.get("IMMUNITY_WINRM_AUTH", "negotiate"),
            "cert_validation": env.get("IMMUNITY_WINRM_CA") or True,
            "package_source": env["IMMUNITY_IIS_PACKAGE"],
            "sites_root": env.get("IMMUNITY_IIS_SITES_ROOT", "C:\\immunity-live"),
            "binding_protocol": "http",
            "binding_port": int(env.get("IMMUNITY_IIS_PORT", "18080")),
            "keep_releases": 2,
        }
    )
    return IisDriver(settings, base_dir=Path.cwd())


HOST = HostRef(name="live", address=os.environ.get("IMMUNITY_WINRM_HOST", "unset"))


@pytest.fixture
async def iis() -> AsyncIterator[IisDriver]:
    drv = _driver()
    try:
        yield drv
    finally:
        with anyio.fail_after(120):
            await drv.stop(HOST)
            await drv._run(
                HOST,
                "cleanup",
                {
                    "App": drv.settings.app,
                    "SitesRoot": drv.settings.sites_root,
                    "Remove": await drv.installed_releases(HOST),
                },
            )
        await drv.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_install_start_switch_stop_on_a_real_iis(iis: IisDriver) -> None:
    """Two releases installed stopped, started one at a time, switched, then stopped, as IIS reports."""
    with anyio.fail_after(600):
        await iis.preflight([HOST])
        await iis.check_release("live-a")
        await iis.install(HOST, "live-a")
        await iis.install(HOST, "live-b")
        assert await iis.installed_releases(HOST) == ["live-a", "live-b"]
        assert await iis.active_release(HOST) is None
        await iis.start(HOST, "live-a")
        assert await iis.active_release(HOST) == "live-a"
        await iis.start(HOST, "live-b")
        assert await iis.active_release(HOST) == "live-b"
        await iis.install(HOST, "live-b")  # idempotent: the started site stays started
        assert await iis.active_release(HOST) == "live-b"
        await iis.stop(HOST)
        assert await iis.active_release(HOST) is None
