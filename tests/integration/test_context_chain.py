"""A -> B -> C through the real mesh: one trace, one request id, a shrinking deadline, and nothing
a caller sends to A can steer the sidecar's retries or claim to be a forwarding proxy.

A and C are WSGI apps, B is an ASGI app served by uvicorn; each sits behind mesh_client's
middleware and calls the next through its own Mesh (requests from A, httpx async from B).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from opentelemetry import trace

import mesh_client
from mesh_client import Mesh
from mesh_client.registry import load_mapping
from mesh_client.sidecar import free_port, start_envoy, start_haproxy

from ..conftest import Otel
from .servers import serve_asgi, serve_wsgi

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SLEEP = 0.05


class Chain:
    def __init__(self) -> None:
        self.meshes: dict[tuple[str, str], Mesh] = {}
        self.sessions: dict[str, requests.Session] = {}
        self.c_seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def mesh(self, route: str, caller: str) -> Mesh:
        return self.meshes[(route, caller)]


def current_trace_id() -> str:
    return format(trace.get_current_span().get_span_context().trace_id, "032x")


def json_response(start_response: Any, status: int, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(f"{status} X", [("content-type", "application/json"), ("content-length", str(len(payload)))])
    return [payload]


def make_a(chain: Chain) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        route = query["route"]
        time.sleep(SLEEP)
        left = mesh_client.time_left()
        r = chain.sessions[route].get(f"http://b/b?route={route}&c={query.get('c', '/c')}")
        body = {"left_ms": left * 1000 if left is not None else None, "b": r.json()}
        return json_response(start_response, r.status_code, body)

    return app


def make_b(chain: Chain) -> Any:
    clients: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        route = query["route"]
        entry = mesh_client.time_left()
        await asyncio.sleep(SLEEP)
        left = mesh_client.time_left()
        if route not in clients:
            clients[route] = chain.mesh(route, "b").httpx_async_client()
        r = await clients[route].get(f"http://c{query['c']}")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = {
            "entry_ms": entry * 1000 if entry is not None else None,
            "left_ms": left * 1000 if left is not None else None,
            "headers": headers,
            "trace_id": current_trace_id(),
            "request_id": mesh_client.current_request_id(),
            "c_status": r.status_code,
            "c": r.json() if r.headers.get("content-type") == "application/json" else None,
        }
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    return app


def make_c(chain: Chain) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        left = mesh_client.time_left()
        seen = {
            "path": environ["PATH_INFO"],
            "headers": {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")},
            "entry_ms": left * 1000 if left is not None else None,
            "trace_id": current_trace_id(),
            "request_id": mesh_client.current_request_id(),
        }
        with chain.lock:
            chain.c_seen.append(seen)
        return json_response(start_response, 503 if seen["path"] == "/fail" else 200, seen)

    return app


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[Chain]:
    work: Path = tmp_path_factory.mktemp("chain")
    chain = Chain()
    with ExitStack() as stack:
        # the middleware needs the Mesh objects, which need the addresses: fill them in afterwards
        wrapped: dict[str, Any] = {}

        def late(name: str, kind: str) -> Any:
            def wsgi(environ: Any, start_response: Any) -> Any:
                return wrapped[name](environ, start_response)

            async def asgi(scope: Any, receive: Any, send: Any) -> None:
                await wrapped[name](scope, receive, send)

            return wsgi if kind == "wsgi" else asgi

        a_addr = stack.enter_context(serve_wsgi(late("a", "wsgi")))
        b_addr = stack.enter_context(serve_asgi(late("b", "asgi"), free_port()))
        c_addr = stack.enter_context(serve_wsgi(late("c", "wsgi")))
        services = {
            name: {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(addr)],
                "timeout": 5.0,
                "retries": 1,
                "retry_on": ["gateway-error"],
            }
            for name, addr in (("a", a_addr), ("b", b_addr), ("c", c_addr))
        }
        base = {
            "mesh": {
                "caller": "a",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
                "context_headers": ["x-tenant"],
            },
            "services": services,
        }
        config = load_mapping(base)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        for route in ("envoy", "haproxy"):
            for caller in ("a", "b", "c"):
                data = {**base, "mesh": {**base["mesh"], "caller": caller, "default_route": route}}
                chain.meshes[(route, caller)] = stack.enter_context(Mesh.from_dict(data))
            chain.sessions[route] = stack.enter_context(chain.mesh(route, "a").requests_session())
        wrapped["a"] = mesh_client.wsgi.MeshMiddleware(make_a(chain), chain.mesh("envoy", "a"))
        wrapped["b"] = mesh_client.asgi.MeshMiddleware(make_b(chain), chain.mesh("envoy", "b"))
        wrapped["c"] = mesh_client.wsgi.MeshMiddleware(make_c(chain), chain.mesh("envoy", "c"))
        chain.a = a_addr  # type: ignore[attr-defined]
        yield chain


HOSTILE = {
    "x-envoy-max-retries": "100",
    "x-envoy-retry-on": "5xx,reset",
    "x-envoy-upstream-rq-timeout-ms": "0",
    "x-forwarded-for": "203.0.113.9",
    "authorization": "Bearer secret-token",
    "cookie": "session=secret",
    "x-tenant": "acme",
}


def call_a(chain: Chain, route: str, c_path: str = "/c", request_id: str = "chain-req-1") -> requests.Response:
    headers = {
        "x-envoy-expected-rq-timeout-ms": "800",
        "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        "x-request-id": request_id,
        **HOSTILE,
    }
    a = chain.a  # type: ignore[attr-defined]
    return requests.get(f"http://{a}/a?route={route}&c={c_path}", headers=headers, timeout=10)


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_trace_request_id_and_deadline_follow_the_chain(chain: Chain, otel: Otel, route: str) -> None:
    r = call_a(chain, route, request_id=f"chain-{route}")
    assert r.status_code == 200, r.text
    a = r.json()
    b = a["b"]
    c = b["c"]
    # one trace through A, B and C, and the same request id
    assert b["trace_id"] == c["trace_id"] == TRACE_ID
    assert b["request_id"] == c["request_id"] == f"chain-{route}"
    assert c["headers"]["x-request-id"] == f"chain-{route}"
    client_spans = [s for s in otel.finished(int(TRACE_ID, 16)) if s.kind is trace.SpanKind.CLIENT]
    names = sorted((s.name, (s.attributes or {})["server.address"]) for s in client_spans)
    assert names == [("GET", "b"), ("GET", "c")]
    assert {s.attributes["mesh.route"] for s in client_spans if s.attributes} == {route}
    # the deadline only shrinks: C's budget <= what B had left <= what A had left - B's work <= 800 ms
    header = "x-envoy-expected-rq-timeout-ms" if route == "envoy" else "x-mesh-timeout-ms"
    c_budget = int(c["headers"][header])
    assert a["left_ms"] <= 800 - SLEEP * 1000
    assert b["entry_ms"] <= a["left_ms"]
    assert c_budget <= b["left_ms"] <= b["entry_ms"] - SLEEP * 1000
    assert c_budget <= 800 - 2 * SLEEP * 1000
    assert c["entry_ms"] <= c_budget
    print(f"{route}: A had {a['left_ms']:.0f} ms at its call, B {b['left_ms']:.0f} ms, C was given {c_budget} ms")


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_nothing_hostile_sent_to_a_reaches_b_or_c(chain: Chain, route: str) -> None:
    r = call_a(chain, route)
    b_headers = r.json()["b"]["headers"]
    c_headers = r.json()["b"]["c"]["headers"]
    for seen in (b_headers, c_headers):
        assert "203.0.113.9" not in seen.get("x-forwarded-for", "")
        assert "authorization" not in seen
        assert "cookie" not in seen
        assert "x-envoy-max-retries" not in seen
        assert "x-envoy-retry-on" not in seen
        assert seen["x-tenant"] == "acme"  # the registry's allowlisted context header
        if route == "envoy":
            assert seen["x-envoy-internal"] == "true"  # Envoy trusted the client's policy headers
        else:
            assert not [name for name in seen if name.startswith("x-envoy")]


def test_inbound_retry_headers_cannot_raise_envoy_retries(chain: Chain) -> None:
    before = len([s for s in chain.c_seen if s["path"] == "/fail"])
    r = call_a(chain, "envoy", c_path="/fail", request_id="chain-fail")
    assert r.status_code == 200
    assert r.json()["b"]["c_status"] == 503
    attempts = [s for s in chain.c_seen[before:] if s["path"] == "/fail" and s["request_id"] == "chain-fail"]
    # the registry allows 1 retry for C; the caller's x-envoy-max-retries: 100 changed nothing
    assert len(attempts) == 2
    assert [s["headers"]["x-envoy-attempt-count"] for s in attempts] == ["1", "2"]
