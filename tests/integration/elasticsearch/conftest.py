"""A small Elasticsearch stand-in speaking the documented REST wire format on 127.0.0.1.

No Elasticsearch server can be installed on our machines (docs/adapters/elasticsearch.md),
so this aiohttp server implements what ElasticsearchSource uses, as the Elasticsearch REST
reference documents it: ``GET /`` (with ``X-Elastic-Product: Elasticsearch`` on every
answer), ``HEAD /<index>``, ``GET /<index>/_mapping`` and ``POST /<index>/_search``.

``_search`` really evaluates the request on in-memory documents, and is strict: only
``size``, ``track_total_hits``, ``query`` and ``aggs`` at the top; only ``bool.filter`` of
``range``/``term``/``terms`` in the query; only ``filters``, ``range`` and ``terms``
aggregations. Anything else (a ``query_string`` above all) is answered 400 like an unknown
query, so the request's structure is asserted by the server itself. Every request body is
kept in `FakeEs.requests` for the tests to read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

PRODUCT = {"X-Elastic-Product": "Elasticsearch"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class QueryRejected(Exception):
    pass


def _get(doc: dict[str, Any], path: str) -> Any:
    if path in doc:
        return doc[path]
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _ts(v: str) -> dt.datetime:
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00"))


def _match(doc: dict[str, Any], clause: dict[str, Any]) -> bool:
    if len(clause) != 1:
        raise QueryRejected(f"a query clause has exactly one type, got {sorted(clause)}")
    ((kind, spec),) = clause.items()
    if kind == "bool":
        if set(spec) != {"filter"}:
            raise QueryRejected(f"bool: only filter is expected, got {sorted(spec)}")
        return all(_match(doc, c) for c in spec["filter"])
    if not isinstance(spec, dict) or len(spec) != 1:
        raise QueryRejected(f"[{kind}] expects one field")
    ((fld, want),) = spec.items()
    value = _get(doc, fld)
    if kind == "term":
        if isinstance(want, dict | list):
            raise QueryRejected("[term] expects a single value")
        return value == want
    if kind == "terms":
        if not isinstance(want, list):
            raise QueryRejected("[terms] expects a list")
        return value in want
    if kind == "range":
        if set(want) - {"gte", "lt", "gt", "lte", "format"}:
            raise QueryRejected(f"[range] unknown keys {sorted(want)}")
        if want.get("format") not in (None, "strict_date_optional_time"):
            raise QueryRejected("unexpected date format")
        if value is None:
            return False
        conv = _ts if want.get("format") else float
        v = conv(value)
        ok = True
        if "gte" in want:
            ok &= v >= conv(want["gte"])
        if "lt" in want:
            ok &= v < conv(want["lt"])
        return bool(ok)
    raise QueryRejected(f"unknown query [{kind}]")


def _agg(docs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    sub = spec.get("aggs", {})
    kinds = set(spec) - {"aggs"}
    if len(kinds) != 1:
        raise QueryRejected(f"an aggregation has one type, got {sorted(kinds)}")
    kind = kinds.pop()
    body = spec[kind]

    def with_sub(bucket_docs: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
        out = {**extra, "doc_count": len(bucket_docs)}
        out.update({name: _agg(bucket_docs, s) for name, s in sub.items()})
        return out

    if kind == "filters":
        named = body["filters"]
        return {
            "buckets": {
                k: with_sub([d for d in docs if _match(d, q)], {}) for k, q in named.items()
            }
        }
    if kind == "range":
        buckets = []
        for r in body["ranges"]:
            lo, hi = r.get("from", float("-inf")), r.get("to", float("inf"))
            inside = [
                d
                for d in docs
                if _get(d, body["field"]) is not None and lo <= float(_get(d, body["field"])) < hi
            ]
            extra: dict[str, Any] = {"key": r.get("key", f"{lo}-{hi}")}
            if "from" in r:
                extra["from"] = float(r["from"])
            if "to" in r:
                extra["to"] = float(r["to"])
            buckets.append(with_sub(inside, extra))
        return {"buckets": buckets}
    if kind == "terms":
        counts: dict[Any, list[dict[str, Any]]] = {}
        for d in docs:
            v = _get(d, body["field"])
            if v is not None:
                counts.setdefault(v, []).append(d)
        top = sorted(counts.items(), key=lambda kv: -len(kv[1]))[: body.get("size", 10)]
        return {
            "doc_count_error_upper_bound": 0,
            "sum_other_doc_count": sum(len(v) for _, v in counts.items())
            - sum(len(v) for _, v in top),
            "buckets": [with_sub(v, {"key": k}) for k, v in top],
        }
    raise QueryRejected(f"unknown aggregation [{kind}]")


def _error(status: int, kind: str, reason: str, **extra: Any) -> web.Response:
    err = {"type": kind, "reason": reason, **extra}
    body = {"error": {"root_cause": [err], **err}, "status": status}
    return web.json_response(body, status=status, headers=PRODUCT)


@dataclass
class FakeEs:
    """The server's state: indices (name -> mapping, docs), auth, and what it was asked."""

    url: str = ""
    api_key: str | None = None
    indices: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    failing: dict[str, str] = field(default_factory=dict)
    """Index -> reason: its shard fails every search (its documents are left out, as
    Elasticsearch does when allow_partial_search_results is true, the default)."""
    time_out: bool = False
    """Searches stop early: `timed_out: true` with what was collected (half the documents)."""

    def add_index(self, name: str, properties: dict[str, Any], docs: list[dict[str, Any]]) -> None:
        self.indices[name] = {"mappings": {"properties": properties}, "docs": list(docs)}

    def matching(self, pattern: str) -> list[str]:
        names = []
        for p in pattern.split(","):
            names += [n for n in self.indices if fnmatch.fnmatchcase(n, p)]
        return sorted(set(names))

    def searches(self) -> list[dict[str, Any]]:
        return [body for method, path, body in self.requests if path.endswith("/_search")]

    # -- handlers --

    def _auth(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") == f"ApiKey {self.api_key}":
            return None
        return _error(
            401,
            "security_exception",
            f"unable to authenticate with provided credentials and anonymous access is not "
            f"allowed for REST request [{request.path}]",
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append((request.method, request.path, body))
        denied = self._auth(request)
        if denied is not None:
            return denied
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and not parts:
            return web.json_response(
                {
                    "name": "fake-node",
                    "cluster_name": "immunity-test",
                    "cluster_uuid": "Bq2hZT4dQ1yS3H9Y1ZRW1Q",
                    "version": {"number": "9.1.0", "build_flavor": "default"},
                    "tagline": "You Know, for Search",
                },
                headers=PRODUCT,
            )
        if len(parts) == 1 and request.method == "HEAD":
            found = bool(self.matching(parts[0]))
            return web.Response(status=200 if found else 404, headers=PRODUCT)
        if len(parts) == 2 and parts[1] == "_mapping" and request.method == "GET":
            names = self.matching(parts[0])
            if not names and "*" not in parts[0]:
                return _error(404, "index_not_found_exception", f"no such index [{parts[0]}]")
            return web.json_response(
                {n: {"mappings": self.indices[n]["mappings"]} for n in names}, headers=PRODUCT
            )
        if len(parts) == 2 and parts[1] == "_search" and request.method == "POST":
            return self._search(parts[0], body or {})
        return _error(
            400, "illegal_argument_exception", f"no handler for {request.method} {request.path}"
        )

    def _search(self, pattern: str, body: dict[str, Any]) -> web.Response:
        names = self.matching(pattern)
        if not names and "*" not in pattern:
            return _error(404, "index_not_found_exception", f"no such index [{pattern}]")
        try:
            extra = set(body) - {"size", "track_total_hits", "query", "aggs"}
            if extra:
                raise QueryRejected(f"unexpected top-level keys {sorted(extra)}")
            if body.get("size") != 0:
                raise QueryRejected("expected size 0")
            query = body.get("query", {"bool": {"filter": []}})
            if set(query) != {"bool"}:
                raise QueryRejected(f"expected a bool query, got {sorted(query)}")
            docs = [
                d
                for n in names
                if n not in self.failing
                for d in self.indices[n]["docs"]
                if _match(d, query)
            ]
            if self.time_out:
                docs = docs[: len(docs) // 2]
            aggs = {name: _agg(docs, spec) for name, spec in body.get("aggs", {}).items()}
        except QueryRejected as exc:
            return _error(400, "parsing_exception", str(exc))
        return web.json_response(
            {
                "took": 1,
                "timed_out": self.time_out,
                "_shards": {
                    "total": len(names),
                    "successful": len([n for n in names if n not in self.failing]),
                    "skipped": 0,
                    "failed": len([n for n in names if n in self.failing]),
                    **(
                        {
                            "failures": [
                                {
                                    "shard": 0,
                                    "index": n,
                                    "node": "fake-node",
                                    "reason": {"type": "exception", "reason": self.failing[n]},
                                }
                                for n in names
                                if n in self.failing
                            ]
                        }
                        if any(n in self.failing for n in names)
                        else {}
                    ),
                },
                "hits": {"max_score": None, "hits": []},
                "aggregations": aggs,
            },
            headers=PRODUCT,
        )


@pytest.fixture
def fake_es() -> Iterator[FakeEs]:
    """Run the stand-in on 127.0.0.1 (its own thread and event loop) for one test."""
    state = FakeEs()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(10):
        pytest.fail("the Elasticsearch stand-in did not start within 10 s")
    yield state
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
