"""Thrift through real Envoy (thrift_proxy) and real HAProxy (tcp), framed and THeader."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

import mesh_client
from mesh_client import Mesh, MeshConnectError, MeshTimeoutError, Route, ThriftRoutingError, call_options
from mesh_client.context import current_inbound
from mesh_client.registry import load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import free_port, start_envoy, start_haproxy

from ..conftest import Otel, load_idl
from .servers import serve_thrift

IDL = """
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users {
    User get(1: i64 id) throws (1: NotFound nf),
    void sleep(1: i32 ms),
    string whoami(),
    i32 bump(1: string key),
}
"""

ROUTES = [Route.ENVOY, Route.HAPROXY]
TRANSPORTS = ["framed", "header"]


@pytest.fixture(scope="module")
def users_thrift(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "users_thrift")


class Handler:
    def __init__(self, users: Any) -> None:
        self.users = users
        self.bumps: Counter[str] = Counter()
        self.lock = threading.Lock()

    def get(self, id: int) -> Any:
        if id < 0:
            raise self.users.NotFound(message=f"no user {id}")
        return self.users.User(id=id, name=f"user-{id}")

    def sleep(self, ms: int) -> None:
        time.sleep(ms / 1000)

    def whoami(self) -> str:
        inbound = current_inbound()
        left = mesh_client.time_left()
        return json.dumps(
            {
                "request_id": inbound.request_id if inbound else None,
                "replaced": inbound.replaced_request_id if inbound else None,
                "left_ms": left * 1000 if left is not None else None,
                "context": dict(inbound.context_headers) if inbound else {},
                "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x"),
            }
        )

    def bump(self, key: str) -> int:
        with self.lock:
            self.bumps[key] += 1
        raise RuntimeError("bump always fails")  # the server answers TApplicationException INTERNAL_ERROR


@dataclass
class ThriftWorld:
    users: Any
    handler: Handler
    mesh: Mesh
    config: Any
    flags_path: Path


@pytest.fixture(scope="module")
def thrift_world(
    tmp_path_factory: pytest.TempPathFactory, users_thrift: Any, envoy_bin: str, haproxy_bin: str
) -> Iterator[ThriftWorld]:
    work = tmp_path_factory.mktemp("thrift")
    flags_path = work / "flags.json"
    write_flag_file(flags_path, [route_flag("mesh-route-users-framed", "haproxy")])
    framed_port, header_port, hop2_port = free_port(), free_port(), free_port()
    common = {
        "timeout": 1.0,
        "retries": 2,
        "retry_on": ["connect-failure", "5xx"],
        "idempotent_methods": ["get", "sleep", "whoami"],
    }
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "context_headers": ["x-tenant"],
        },
        "flags": {"source": "file", "path": str(flags_path), "poll_interval": 0.1},
        "services": {
            "users-framed": {
                "protocol": "thrift",
                "transport": "framed",
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [f"127.0.0.1:{framed_port}"],
                **common,
            },
            "users-header": {
                "protocol": "thrift",
                "transport": "header",
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [f"127.0.0.1:{header_port}"],
                **common,
            },
            "users-empty": {"protocol": "thrift", "transport": "header", "haproxy": f"127.0.0.1:{free_port()}"},
            # through a second Envoy (hop 2), which forwards to the header server
            "users-hop": {
                "protocol": "thrift",
                "transport": "header",
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [f"127.0.0.1:{hop2_port}"],
                **common,
            },
        },
    }
    config = load_mapping(data)
    hop2 = load_mapping(
        {
            "mesh": {
                "caller": "hop2",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_thrift": f"127.0.0.1:{hop2_port}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
            },
            "services": {
                "users-hop": {
                    "protocol": "thrift",
                    "transport": "header",
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [f"127.0.0.1:{header_port}"],
                }
            },
        }
    )
    handler = Handler(users_thrift)
    with ExitStack() as stack:
        mesh = stack.enter_context(Mesh(config))
        serve_thrift(stack, users_thrift.Users, handler, mesh, "framed", framed_port)
        serve_thrift(stack, users_thrift.Users, handler, mesh, "header", header_port)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_envoy(hop2, work / "envoy-hop2", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        yield ThriftWorld(users_thrift, handler, mesh, config, flags_path)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_calls_and_declared_exceptions_on_every_route(thrift_world: ThriftWorld, route: Route, transport: str) -> None:
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, f"users-{transport}") as client,
        call_options(route=route),
    ):
        assert client.get(7) == thrift_world.users.User(id=7, name="user-7")
        with pytest.raises(thrift_world.users.NotFound):
            client.get(-1)
        assert client.get(8).id == 8  # the connection stays usable after a declared exception


def test_the_flag_switches_thrift_routes(thrift_world: ThriftWorld) -> None:
    mesh = thrift_world.mesh
    with mesh.thrift_client(thrift_world.users.Users, "users-framed") as client:
        for route in ("envoy", "haproxy"):
            write_flag_file(thrift_world.flags_path, [route_flag("mesh-route-users-framed", route, version=3)])
            until = time.monotonic() + 3
            while mesh.route_for("users-framed").route.value != route:
                assert time.monotonic() < until
                time.sleep(0.01)
            assert client.get(1).name == "user-1"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_theader_carries_request_id_deadline_trace_and_context(
    thrift_world: ThriftWorld, otel: Otel, route: Route
) -> None:
    tracer = trace.get_tracer("test")
    inbound = {"x-request-id": "thrift-req-1", "x-envoy-expected-rq-timeout-ms": "700", "x-tenant": "acme"}
    end = mesh_client.context.begin_request(inbound, header_prefix="x-envoy", context_headers=["x-tenant"])
    try:
        with tracer.start_as_current_span("test-root") as root, call_options(route=route):
            with thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-header") as client:
                seen = json.loads(client.whoami())
            trace_id = format(root.get_span_context().trace_id, "032x")
    finally:
        end()
    assert seen["request_id"] == "thrift-req-1"
    assert seen["context"] == {"x-tenant": "acme"}
    assert 0 < seen["left_ms"] <= 700
    assert trace_id != "0" * 32  # the SDK (the otel fixture) records the test's root span
    assert seen["trace_id"] == trace_id


def test_headers_cross_two_envoy_hops(thrift_world: ThriftWorld) -> None:
    inbound = {"x-request-id": "two-hops", "x-tenant": "acme"}
    end = mesh_client.context.begin_request(inbound, header_prefix="x-envoy", context_headers=["x-tenant"])
    try:
        with (
            thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-hop") as client,
            call_options(route="envoy"),
        ):
            seen = json.loads(client.whoami())
    finally:
        end()
    # client -> Envoy (routes on x-mesh-service) -> Envoy hop 2 (routes on it again) -> server
    assert seen["request_id"] == "two-hops"
    assert seen["context"] == {"x-tenant": "acme"}
    assert seen["left_ms"] is not None


def test_framed_transport_carries_no_context(thrift_world: ThriftWorld) -> None:
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-framed") as client,
        call_options(route="envoy"),
    ):
        seen = json.loads(client.whoami())
    assert seen["replaced"] is True  # the server had to make up a request id
    assert seen["left_ms"] is None


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_timeout_then_the_next_call_gets_its_own_reply(thrift_world: ThriftWorld, route: Route, transport: str) -> None:
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, f"users-{transport}") as client,
        call_options(route=route),
    ):
        started = time.monotonic()
        with call_options(timeout=0.3, retries=0), pytest.raises(TimeoutError) as raised:
            client.sleep(800)
        assert isinstance(raised.value, MeshTimeoutError)
        assert 0.25 <= time.monotonic() - started <= 0.7
        # keep calling until well after the late reply to sleep() was sent: it must never be
        # taken for one of these (thriftpy2's own client would return it to the next call)
        i, until = 0, time.monotonic() + 0.8
        while time.monotonic() < until:
            i += 1
            assert client.get(i).id == i


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_non_idempotent_method_is_attempted_once(thrift_world: ThriftWorld, route: Route) -> None:
    key = f"bump-{route}"
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-header") as client,
        call_options(route=route),
        pytest.raises(TApplicationException),
    ):
        client.bump(key)
    assert thrift_world.handler.bumps[key] == 1


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_a_call_declared_idempotent_is_retried_on_server_errors(thrift_world: ThriftWorld, route: Route) -> None:
    # the server's TApplicationException counts as a 5xx: retried for idempotent calls only
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-header") as client,
        call_options(route=route, idempotent=True),
    ):
        key = f"bump-idem-{route}"
        with pytest.raises(TApplicationException):
            client.bump(key)
    assert thrift_world.handler.bumps[key] == 3  # 1 + retries=2


def test_envoy_no_healthy_upstream_is_a_clear_error(thrift_world: ThriftWorld) -> None:
    with (
        thrift_world.mesh.thrift_client(thrift_world.users.Users, "users-empty") as client,
        call_options(route="envoy"),
    ):
        with pytest.raises(TApplicationException) as raised:
            client.get(1)
        err = raised.value
        assert isinstance(err, ThriftRoutingError)
        assert err.kind == "no_healthy_upstream"
        assert err.may_have_reached_server is False
        assert "did not reach the server" in str(err)
        assert err.info is not None
        assert err.info.envoy_error == "no_healthy_upstream"


def test_nothing_listening_is_a_connect_error_thriftpy2_code_can_catch(thrift_world: ThriftWorld) -> None:
    data = {
        "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9", "envoy_thrift": f"127.0.0.1:{free_port()}"},
        "services": {"users-gone": {"protocol": "thrift", "haproxy": f"127.0.0.1:{free_port()}", "retries": 1}},
    }
    with Mesh.from_dict(data) as mesh, mesh.thrift_client(thrift_world.users.Users, "users-gone") as client:
        for route in ROUTES:
            with call_options(route=route), pytest.raises(TTransportException) as raised:
                client.get(1)
            assert isinstance(raised.value, MeshConnectError)
            assert raised.value.info is not None
            assert raised.value.info.attempts == 2  # connect failures are retried for every method


def test_direct_to_the_server_without_any_proxy(thrift_world: ThriftWorld) -> None:
    # a service whose "HAProxy" address is the server itself: the client needs no proxy at all
    server = thrift_world.config.services["users-header"].endpoints[0]
    data = {
        "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9", "envoy_thrift": "127.0.0.1:9"},
        "services": {"users-direct": {"protocol": "thrift", "transport": "header", "haproxy": str(server)}},
    }
    with (
        Mesh.from_dict(data) as mesh,
        mesh.thrift_client(thrift_world.users.Users, "users-direct") as client,
        call_options(route="haproxy"),
    ):
        assert client.get(3).name == "user-3"


def test_envoy_routing_by_method_name_and_header(thrift_world: ThriftWorld, tmp_path: Path, envoy_bin: str) -> None:
    # a sidecar whose route for the header service also matches the method name: get is routed,
    # whoami gets Envoy's "no route" reply, mapped to a clear error that says nothing was delivered
    from mesh_client.sidecar.render import envoy_bootstrap

    header_server = thrift_world.config.services["users-header"].endpoints[0]
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
        },
        "services": {
            "users-header": {
                "protocol": "thrift",
                "transport": "header",
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(header_server)],
            }
        },
    }
    config = load_mapping(data)
    bootstrap = envoy_bootstrap(config)
    thrift_listener = bootstrap["static_resources"]["listeners"][1]
    route = thrift_listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["routes"][0]
    route["match"]["method_name"] = "get"
    with (
        start_envoy(config, tmp_path, binary=envoy_bin, bootstrap=bootstrap),
        Mesh(config) as mesh,
        mesh.thrift_client(thrift_world.users.Users, "users-header") as client,
        call_options(route="envoy"),
    ):
        assert client.get(5).id == 5
        with pytest.raises(ThriftRoutingError) as raised:
            client.whoami()
    assert raised.value.kind == "no_route"
    assert raised.value.may_have_reached_server is False
