"""`immunity serve`: a read-only HTTP API and web page over the journal and the live fleet.

Routes (GET only; anything else is 405):

    /                               the page: every app's hosts, running deployments, history
    /partials/apps, /partials/deployments   the page's live parts (HTML), polled every second
    /deployments/{id}               one deployment: verdict, per-host steps, every entry
    /deployments/{id}/report        its `immunity report` page
    /api/apps, /api/deployments, /api/deployments/{id}      the same as JSON
    /static/...                     the page's script and style (nothing from a CDN)

Bound to 127.0.0.1 by default. With a bearer token (required to bind anything else) every
request needs `Authorization: Bearer TOKEN`, or the cookie a browser gets from `/?token=TOKEN`.
The fleet's view is cached for `refresh_s` so many viewers cost the hosts one look per second.
"""

from __future__ import annotations

import datetime as dt
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from immunity import report
from immunity.domain import brief
from immunity.fleet.context import Fleet
from immunity.serve import views

HERE = Path(__file__).parent
COOKIE = "immunity_token"


class _Cached:
    """One look at the fleet per `ttl_s`, whoever asks; concurrent askers share it."""

    def __init__(self, fn: Callable[[], Awaitable[Any]], ttl_s: float) -> None:
        self.fn, self.ttl_s = fn, ttl_s
        self.at = -1e9
        self.value: Any = None
        self.lock = anyio.Lock()

    async def get(self) -> Any:
        async with self.lock:
            if time.monotonic() - self.at >= self.ttl_s:
                self.value = await self.fn()
                self.at = time.monotonic()
            return self.value


class _BearerAuth(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token.encode()

    def _ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if self._ok(given) or self._ok(request.cookies.get(COOKIE)):
            return await call_next(request)
        if request.url.path == "/" and self._ok(request.query_params.get("token")):
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict")
            return resp
        return JSONResponse(
            {"error": "a bearer token is required (Authorization: Bearer TOKEN)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"
        )
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp


async def _report_html(fleet: Fleet, deployment_id: str) -> str:
    """The deployment's `immunity report` page (self-contained: inline SVG and style)."""
    data = await report.load(fleet.journal, deployment_id)
    return str(await anyio.to_thread.run_sync(report.render_html, data))


def _utc(iso: str | None) -> str:
    """`2026-11-30T10:32:45+00:00` -> `2026-11-30 10:32:45 UTC` (empty for None)."""
    if not iso:
        return ""
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def same_app(fleets: Sequence[Fleet]) -> str | None:
    """Why `fleets` cannot be served together, or None: two configs naming the same `app`
    would show two fleets and one list of deployments that cannot be told apart (an app is
    one lease and one history; its deployments are looked up by app name)."""
    paths: dict[str, list[str]] = {}
    for f in fleets:
        paths.setdefault(f.app, []).append(str(f.loaded.path))
    twice = {app: p for app, p in paths.items() if len(p) > 1}
    if not twice:
        return None
    return "; ".join(
        f"app {app!r} is named by {len(p)} configs ({', '.join(p)})" for app, p in twice.items()
    )


def create_app(
    fleets: Sequence[Fleet], *, token: str | None = None, refresh_s: float = 1.0
) -> Starlette:
    """The ASGI app over `fleets` (one per config). `token`: bearer token, None for none.
    Raises ValueError when two fleets have the same `app` (see `same_app`)."""
    clash = same_app(fleets)
    if clash:
        raise ValueError(clash)
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
    )
    env.filters["brief"] = brief  # reasons as the report shows them; the journal's rows whole
    env.filters["utc"] = _utc  # instants as people read them, the API keeps ISO 8601
    by_app = {f.app: f for f in fleets}

    async def look_apps() -> list[dict[str, Any]]:
        return [await views.app_view(f) for f in fleets]

    apps_cache = _Cached(look_apps, refresh_s)

    def html(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = env.get_template(name).render(refresh_ms=int(refresh_s * 1000), **ctx)
        return HTMLResponse(body, status_code=status)

    async def index(request: Request) -> Response:
        return html(
            "index.html",
            apps=await apps_cache.get(),
            deployments=await views.deployments_view(fleets),
        )

    async def partial_apps(request: Request) -> Response:
        return html("_apps.html", apps=await apps_cache.get())

    async def partial_deployments(request: Request) -> Response:
        return html("_deployments.html", deployments=await views.deployments_view(fleets))

    async def _find(deployment_id: str) -> tuple[Fleet, dict[str, Any]] | None:
        for f in fleets:
            got = await views.deployment_view(f, deployment_id)
            if got is not None:
                return f, got
        return None

    async def deployment(request: Request) -> Response:
        found = await _find(request.path_params["id"])
        if found is None:
            return html("missing.html", status=404, what=request.path_params["id"])
        return html("deployment.html", d=found[1])

    async def report(request: Request) -> Response:
        found = await _find(request.path_params["id"])
        if found is None:
            return html("missing.html", status=404, what=request.path_params["id"])
        return HTMLResponse(await _report_html(found[0], request.path_params["id"]))

    async def api_apps(request: Request) -> Response:
        return JSONResponse(await apps_cache.get())

    async def api_deployments(request: Request) -> Response:
        rows = await views.deployments_view(
            fleets, limit=int(request.query_params.get("limit", 200))
        )
        app = request.query_params.get("app")
        return JSONResponse([r for r in rows if app is None or r["app"] == app])

    async def api_deployment(request: Request) -> Response:
        found = await _find(request.path_params["id"])
        if found is None:
            return JSONResponse({"error": "no such deployment"}, status_code=404)
        return JSONResponse(found[1])

    middleware = [Middleware(_Headers)]
    if token:
        middleware.append(Middleware(_BearerAuth, token=token))
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/partials/apps", partial_apps),
            Route("/partials/deployments", partial_deployments),
            Route("/deployments/{id}", deployment),
            Route("/deployments/{id}/report", report),
            Route("/api/apps", api_apps),
            Route("/api/deployments", api_deployments),
            Route("/api/deployments/{id}", api_deployment),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=middleware,
    )
    app.state.fleets = by_app
    return app


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
