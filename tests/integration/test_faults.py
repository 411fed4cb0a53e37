"""Fault injection with real Envoy: retries stacked at several layers, with and without budgets.

A -> B -> C, each hop through the real Envoy sidecar with ``retries = 2`` on ``5xx``, and C
failing every request. Without a budget each layer multiplies: C receives (1 + 2)^2 = 9 requests
per request A receives. With mesh_client's retry budget (20 % of calls, a negligible floor), each
layer adds at most 20 %, so C receives at most about 1.2^2 = 1.44 per request.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

import mesh_client
from mesh_client import Mesh, Route, call_info
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import Backend

from .conftest import MeshWorld
from .servers import serve_wsgi

CALLS = 100
BUDGETS = {
    # mesh_client's budget: 20 % of recent calls, a floor of one retry per 10 s
    "budget": {"percent": 20, "min_per_second": 0.1, "ttl": 10},
    # what plain per-layer Envoy retry headers give: no limit in practice
    "plain": {"percent": 1000, "min_per_second": 1000, "ttl": 10},
}


def make_caller(sessions: dict[str, requests.Session], target: str, extra: str = "") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        mode = parse_qs(environ.get("QUERY_STRING", ""))["mode"][0]
        r = sessions[mode].get(f"http://{target}/work?mode={mode}{extra}")
        body = json.dumps({"status": r.status_code}).encode()
        start_response(f"{r.status_code} X", [("content-type", "application/json"), ("content-length", str(len(body)))])
        return [body]

    return app


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str) -> Iterator[dict[str, Any]]:
    work: Path = tmp_path_factory.mktemp("faults")
    with ExitStack() as stack:
        c = stack.enter_context(Backend("c"))
        sessions: dict[str, dict[str, requests.Session]] = {"a": {}, "b": {}}
        apps: dict[str, Any] = {}

        def late(name: str) -> Any:
            def app(environ: Any, start_response: Any) -> Any:
                return apps[name](environ, start_response)

            return app

        a_addr = stack.enter_context(serve_wsgi(late("a")))
        b_addr = stack.enter_context(serve_wsgi(late("b")))
        envoy_http, envoy_admin = free_port(), free_port()
        meshes: dict[tuple[str, str], Mesh] = {}
        for mode, budget in BUDGETS.items():
            services = {
                name: {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(addr)],
                    "timeout": 5.0,
                    "retries": 2,
                    "retry_on": ["5xx"],
                    "retry_budget": budget,
                }
                for name, addr in (("b", b_addr), ("c", c.address))
            }
            for caller in ("a", "b"):
                data = {
                    "mesh": {
                        "caller": caller,
                        "envoy_http": f"127.0.0.1:{envoy_http}",
                        "envoy_admin": f"127.0.0.1:{envoy_admin}",
                        "default_route": "envoy",
                    },
                    "services": services,
                }
                meshes[(mode, caller)] = stack.enter_context(Mesh.from_dict(data))
                sessions[caller][mode] = stack.enter_context(meshes[(mode, caller)].requests_session())
        stack.enter_context(start_envoy(meshes[("budget", "a")].config, work / "envoy", binary=envoy_bin))
        apps["a"] = mesh_client.wsgi.MeshMiddleware(make_caller(sessions["a"], "b"), meshes[("budget", "a")])
        apps["b"] = mesh_client.wsgi.MeshMiddleware(
            make_caller(sessions["b"], "c", "&status=503"), meshes[("budget", "b")]
        )
        yield {"a": a_addr, "c": c}


@pytest.mark.parametrize("mode", ["plain", "budget"])
def test_retry_amplification_through_three_layers(chain: dict[str, Any], mode: str) -> None:
    c: Backend = chain["c"]
    before = len(c.records())
    with requests.Session() as session:
        for _ in range(CALLS):
            r = session.get(f"http://{chain['a']}/start?mode={mode}", timeout=10)
            assert r.status_code == 503  # C fails every request
    at_c = len(c.records()) - before
    per_call = at_c / CALLS
    print(f"{mode}: C received {at_c} requests for {CALLS} requests to A ({per_call:.2f} per request)")
    if mode == "plain":
        assert per_call == pytest.approx(9.0, abs=0.01)
    else:
        assert per_call <= 1.2 * 1.2 + 0.1


def test_flag_file_corrupted_deleted_and_restored_during_traffic(world: MeshWorld, key: str) -> None:
    world.set_route(Route.ENVOY)
    session = world.mesh.requests_session()
    good = world.flags_path.read_text()
    events = [
        ("corrupted", lambda: world.flags_path.write_text('{"flags": {"mesh-route-users": {')),
        ("deleted", world.flags_path.unlink),
        ("restored", lambda: world.flags_path.write_text(good)),
    ]
    routes: list[str] = []
    failures = 0
    for name, change in events:
        change()
        until = time.monotonic() + 0.5  # several of the flag client's 0.1 s polls
        while time.monotonic() < until:
            r = session.get(f"http://users/chaos?key={key}")
            failures += r.status_code != 200
            info = call_info(r)
            assert info is not None
            routes.append(f"{name}:{info.route.value}")
    session.close()
    print(f"flag chaos: {len(routes)} calls, {failures} failed, routes {sorted(set(routes))}")
    assert failures == 0
    # the last good flags (Envoy) stayed in force through the corruption and the deletion
    assert {r.split(":")[1] for r in routes} == {"envoy"}


class _ApplyThenFail(socketserver.BaseRequestHandler):
    """Reads one request, applies it (records its x-request-id), then resets the connection or
    answers too late, as a server that crashed or stalled after doing the work would."""

    server: _FaultServer

    def handle(self) -> None:
        sock = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.decode("latin-1").split(":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return
            body += chunk
        with self.server.lock:
            self.server.applied.append(headers.get("x-request-id", ""))
        if self.server.mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: the client cannot know the write was applied
        else:
            self.server.stop.wait(self.server.stall)  # answer after the client gave up


class _FaultServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str, stall: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _ApplyThenFail)
        self.mode = mode
        self.stall = stall
        self.applied: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()


@pytest.mark.parametrize(("mode", "posts"), [("reset", 1000), ("timeout", 40)])
@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_no_write_is_applied_twice(
    tmp_path: Path, envoy_bin: str, haproxy_bin: str, route: str, mode: str, posts: int
) -> None:
    server = _FaultServer(mode, stall=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "default_route": route,
        },
        "services": {
            "orders": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [f"127.0.0.1:{server.server_address[1]}"],
                "timeout": 0.15,
                # everything that could replay a request, had POST been idempotent
                "retries": 3,
                "retry_on": ["5xx", "reset", "connect-failure", "gateway-error"],
            }
        },
    }
    outcomes: Counter[str] = Counter()
    try:
        with ExitStack() as stack:
            mesh = stack.enter_context(Mesh.from_dict(data))
            stack.enter_context(start_envoy(mesh.config, tmp_path / "envoy", binary=envoy_bin))
            stack.enter_context(start_haproxy(mesh.config, tmp_path / "haproxy", binary=haproxy_bin))
            session = stack.enter_context(mesh.requests_session())
            for _ in range(posts):
                try:
                    r = session.post("http://orders/v1/orders", data=b'{"item": 1}')
                    outcomes[f"status {r.status_code}"] += 1
                except requests.RequestException as exc:
                    outcomes[type(exc).__mro__[1].__name__] += 1
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
    applied = Counter(server.applied)
    twice = [rid for rid, n in applied.items() if n > 1]
    print(
        f"{route}/{mode}: {posts} POSTs, applied {len(server.applied)}, twice {len(twice)}, outcomes {dict(outcomes)}"
    )
    assert len(server.applied) == posts
    assert twice == []
