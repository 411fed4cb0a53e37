"""Conformance for Thrift: each scenario against ``fake_mesh`` and against real Envoy (thrift_proxy)
and HAProxy (TCP) in front of a real thriftpy2 server, framed and THeader, with the same outcome:
the value or exception the caller gets (with call_info on errors) and the calls the server saw."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh_client import Mesh, MeshError, ThriftRoutingError, call_options
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import FakeMesh, Reply, hang, thrift_reply

from ..conftest import load_idl
from .servers import serve_thrift

pytestmark = pytest.mark.real

IDL = """
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users { User get(1: i64 id) throws (1: NotFound nf) }
"""


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "conformance_users_thrift")


class Scripted:
    """A thriftpy2 handler answering with a script of :class:`Reply` objects (really waiting)."""

    def __init__(self) -> None:
        self.replies: tuple[Reply, ...] = (thrift_reply(None),)
        self.calls: list[int] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def script(self, *replies: Reply) -> None:
        with self.lock:
            self.replies, self.calls = replies, []

    def get(self, id: int) -> Any:
        with self.lock:
            self.calls.append(id)
            spec = self.replies[min(len(self.calls), len(self.replies)) - 1]
        if spec.delay:
            self.stopping.wait(min(spec.delay, 30.0))
        if spec.raises is not None:
            raise spec.raises
        return spec.value


@dataclass
class RealThrift:
    config: MeshConfig
    handler: Scripted


@pytest.fixture(scope="module")
def real(
    tmp_path_factory: pytest.TempPathFactory, users: Any, envoy_bin: str, haproxy_bin: str
) -> Iterator[RealThrift]:
    work = tmp_path_factory.mktemp("thrift-conformance")
    framed, header = free_port(), free_port()
    common = {"protocol": "thrift", "timeout": 0.5, "retries": 1, "retry_on": ["connect-failure"]}
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "failover": False,
        },
        "flags": {"source": "none"},
        "services": {
            "th-framed": {**common, "transport": "framed", "haproxy": f"127.0.0.1:{free_port()}",
                          "endpoints": [f"127.0.0.1:{framed}"]},
            "th-header": {**common, "transport": "header", "haproxy": f"127.0.0.1:{free_port()}",
                          "endpoints": [f"127.0.0.1:{header}"]},
            "th-empty": {**common, "transport": "header", "haproxy": f"127.0.0.1:{free_port()}"},
        },
    }  # fmt: skip
    config = load_mapping(data, source="thrift conformance registry")
    handler = Scripted()
    with ExitStack() as stack:
        server_mesh = stack.enter_context(Mesh(config))
        for transport, port in (("framed", framed), ("header", header)):
            serve_thrift(stack, users.Users, handler, server_mesh, transport, port)
        stack.callback(handler.stopping.set)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        yield RealThrift(config, handler)


@dataclass(frozen=True)
class Scenario:
    name: str
    replies: tuple[Reply, ...]
    service: str = "th-header"
    arg: int = 1


def scenarios(users: Any) -> list[Scenario]:
    user = users.User(id=1, name="ada")
    return [
        Scenario("a value", (thrift_reply(user),)),
        Scenario("a value, framed", (thrift_reply(user),), service="th-framed"),
        Scenario("a declared exception", (thrift_reply(raises=users.NotFound(message="no")),)),
        Scenario("an undeclared exception", (thrift_reply(raises=RuntimeError("boom")),), service="th-framed"),
        Scenario("slow past the timeout", (thrift_reply(user, delay=1.0),)),
        Scenario("never answers, framed", (hang(),), service="th-framed"),
        Scenario("no instance at all", (), service="th-empty"),
    ]


@dataclass(frozen=True)
class Observed:
    outcome: str
    route: str | None
    attempts: int | None
    kind: str | None
    server_calls: int
    elapsed: float | None = field(compare=False)


def observe(mesh: Mesh, users: Any, scenario: Scenario, route: str, server_calls: Any) -> Observed:
    info, kind = None, None
    with call_options(route=route), mesh.thrift_client(users.Users, scenario.service) as client:
        try:
            outcome = repr(client.get(scenario.arg))
        except MeshError as exc:
            outcome, info = type(exc).__name__, exc.info
            kind = exc.kind if isinstance(exc, ThriftRoutingError) else None
        except Exception as exc:  # the server's own exceptions, as thriftpy2 raises them
            outcome = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
    return Observed(
        outcome=outcome,
        route=info.route.value if info else None,
        attempts=info.attempts if info else None,
        kind=kind,
        server_calls=server_calls(),
        elapsed=info.elapsed if info else None,
    )


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_fake_matches_real_for_thrift(real: RealThrift, users: Any, route: str) -> None:
    for scenario in scenarios(users):
        real.handler.script(*(scenario.replies or (thrift_reply(None),)))  # also forgets past calls
        with Mesh(real.config) as mesh:
            got_real = observe(mesh, users, scenario, route, lambda: len(real.handler.calls))
        with FakeMesh() as fake:
            mesh = fake.mesh(real.config)
            if scenario.replies:
                fake.add(scenario.service, *scenario.replies)
            got_fake = observe(mesh, users, scenario, route, lambda: sum(c.attempts for c in fake.calls))
        print(f"\n{scenario.name} via {route}:\n  real {got_real}\n  fake {got_fake}")
        assert got_fake == got_real, scenario.name
        if got_real.elapsed is not None and got_fake.elapsed is not None and got_real.outcome == "MeshTimeoutError":
            assert abs(got_fake.elapsed - got_real.elapsed) <= 0.15, scenario.name
