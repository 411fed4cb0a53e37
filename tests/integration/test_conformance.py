"""Conformance: every scenario runs against ``fake_mesh`` and against real Envoy + HAProxy, and
must give the same observable outcome: status or exception, call_info, requests the upstream
received and the mesh headers on them, and (for timeouts) how long the call took.

The same :class:`Reply` scripts drive both sides: the fake's handlers, and a real HTTP upstream
(:class:`ScriptedUpstream`) behind the real proxies. Known differences are in docs/testing.md.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

import mesh_client
from mesh_client import MeshError, Route, call_options
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.sidecar import envoy_bootstrap, free_port, start_envoy, start_haproxy
from mesh_client.testing import FakeMesh, MeshFlags, Reply, hang, refuse, reply, reset
from mesh_client.testing.upstream import ScriptedUpstream

from .conftest import Caller

pytestmark = pytest.mark.real

GATEWAY = ("gateway-error",)


@dataclass(frozen=True)
class Scenario:
    name: str
    replies: tuple[Reply, ...]
    options: dict[str, Any] = field(default_factory=dict)
    service: str = "svc"
    method: str = "GET"
    routes: tuple[str, ...] = ("envoy", "haproxy")


SCENARIOS = [
    Scenario("plain 200", (reply(200, json={"ok": True}),)),
    Scenario("slow upstream past the timeout", (reply(200, delay=0.6),), {"timeout": 0.3, "retries": 0}),
    Scenario("hung upstream, retries do not outlive the timeout", (hang(),), {"timeout": 0.4, "retries": 2}),
    Scenario(
        "per-try timeout, then a fast retry",
        (reply(200, delay=0.6), reply(200)),
        {"timeout": 1.0, "per_try_timeout": 0.2, "retries": 2, "retry_on": ("reset",)},
    ),
    Scenario(
        "per-try timeout not covered by retry-on",
        (reply(200, delay=0.6),),
        {"timeout": 1.0, "per_try_timeout": 0.2, "retries": 2, "retry_on": ("connect-failure",)},
    ),
    Scenario(
        "503, 503, 200 with gateway-error", (reply(503), reply(503), reply(200)), {"retries": 2, "retry_on": GATEWAY}
    ),
    Scenario("503 until retries run out", (reply(503),), {"retries": 2, "retry_on": GATEWAY}),
    Scenario("500 is not a gateway error", (reply(500), reply(200)), {"retries": 2, "retry_on": GATEWAY}),
    Scenario("500 with 5xx", (reply(500), reply(200)), {"retries": 2, "retry_on": ("5xx",)}),
    Scenario(
        "503 with connect-failure only", (reply(503), reply(200)), {"retries": 2, "retry_on": ("connect-failure",)}
    ),
    Scenario("409 with retriable-4xx", (reply(409), reply(200)), {"retries": 1, "retry_on": ("retriable-4xx",)}),
    Scenario(
        "418 with retriable-status-codes",
        (reply(418), reply(200)),
        {"retries": 1, "retry_on": ("retriable-status-codes",), "retriable_status_codes": (418,)},
    ),
    Scenario(
        "overloaded 503 is never retried",
        (reply(503, headers={"x-envoy-overloaded": "true"}), reply(200)),
        {"retries": 2, "retry_on": GATEWAY},
    ),
    Scenario("POST 503 is not retried", (reply(503), reply(200)), {"retries": 2, "retry_on": GATEWAY}, method="POST"),
    Scenario(
        "POST declared idempotent is retried",
        (reply(503), reply(200)),
        {"retries": 2, "retry_on": GATEWAY, "idempotent": True},
        method="POST",
    ),
    Scenario("reset, retried with reset", (reset(), reply(200)), {"retries": 2, "retry_on": ("reset",)}),
    Scenario("reset, connect-failure only", (reset(), reply(200)), {"retries": 2, "retry_on": ("connect-failure",)}),
    Scenario("connection refused", (refuse(),), {"retries": 1, "retry_on": ("connect-failure",)}, service="refused"),
    Scenario("no handler: nothing to send to", (), {"retries": 1, "retry_on": GATEWAY}, service="empty"),
    Scenario("unknown host at the sidecar", (), {"retries": 1}, service="ghost", routes=("envoy",)),
]


def registry(upstream: ScriptedUpstream) -> dict[str, Any]:
    def service(endpoints: list[str]) -> dict[str, Any]:
        return {"haproxy": f"127.0.0.1:{free_port()}", "endpoints": endpoints, "timeout": 1.0}

    return {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "failover": False,
        },
        "flags": {"source": "none"},
        "services": {
            "svc": service([str(upstream.address)]),
            "refused": service([f"127.0.0.1:{free_port()}"]),  # nothing listens there
            "empty": service([]),
            "ghost": service([str(upstream.address)]),  # left out of the sidecar's routes
        },
    }


@dataclass
class RealMesh:
    config: MeshConfig
    upstream: ScriptedUpstream


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[RealMesh]:
    work = tmp_path_factory.mktemp("conformance")
    with ScriptedUpstream("svc") as upstream:
        config = load_mapping(registry(upstream), source="conformance registry")
        bootstrap = envoy_bootstrap(config)
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hosts = hcm["route_config"]["virtual_hosts"]
        hcm["route_config"]["virtual_hosts"] = [h for h in hosts if h["name"] != "ghost"]
        envoy = start_envoy(config, work / "envoy", binary=envoy_bin, bootstrap=copy.deepcopy(bootstrap))
        try:
            with start_haproxy(config, work / "haproxy", binary=haproxy_bin):
                yield RealMesh(config, upstream)
        finally:
            envoy.stop()


@dataclass(frozen=True)
class Observed:
    outcome: str
    route: str
    attempts: int | None
    envoy_error: str | None
    failed_over: bool
    upstream_requests: int
    #: every upstream request of the call carried the same x-request-id; Envoy's headers on the last
    one_request_id: bool | None
    attempt_header: str | None
    expected_timeout_header: bool | None
    elapsed: float = field(compare=False)


def observe(caller: Caller, scenario: Scenario, route: str, upstream_requests: Any) -> Observed:
    options = {**scenario.options, "route": route}
    with call_options(**options):
        try:
            response = caller.request(scenario.method, f"http://{scenario.service}/conformance?x=1", content=b"{}")
        except MeshError as exc:
            info = exc.info
            assert info is not None
            outcome = type(exc).__name__
        else:
            info = mesh_client.call_info(response)
            outcome = str(response.status_code)
    requests = upstream_requests()
    last = requests[-1] if requests else None
    ids = {r.headers.get("x-request-id") for r in requests}
    return Observed(
        outcome=outcome,
        route=info.route.value,
        attempts=info.attempts,
        envoy_error=info.envoy_error,
        failed_over=info.failed_over,
        upstream_requests=len(requests),
        one_request_id=None if last is None else len(ids) == 1 and None not in ids,
        attempt_header=None if last is None else last.headers.get("x-envoy-attempt-count"),
        expected_timeout_header=None if last is None else "x-envoy-expected-rq-timeout-ms" in last.headers,
        elapsed=info.elapsed,
    )


def run_fake(kind: str, scenario: Scenario, route: str, config: MeshConfig) -> Observed:
    with FakeMesh() as fake:
        mesh = fake.mesh(config)
        fake.envoy_forgets("ghost")
        if scenario.replies and scenario.service != "empty":
            fake.add(scenario.service, *scenario.replies)
        caller = Caller(kind, mesh)
        try:
            return observe(caller, scenario, route, lambda: fake.calls[-1].upstream if fake.calls else [])
        finally:
            caller.close()


def run_real(kind: str, scenario: Scenario, route: str, real: RealMesh) -> Observed:
    if scenario.service == "svc":
        real.upstream.script(*scenario.replies)
    else:
        real.upstream.script(reply(200))
    with mesh_client.Mesh(real.config) as mesh:
        caller = Caller(kind, mesh)
        try:
            return observe(caller, scenario, route, lambda: list(real.upstream.requests))
        finally:
            caller.close()


KINDS = ["requests", "httpx", "httpx-async"]


def cases(scenarios: Sequence[Any], routes: Callable[[Any], Sequence[str]]) -> list[Any]:
    """(scenario, route, client kind) parameters: every route of every scenario, the client kinds
    taking turns, so each kind meets each route across the suite."""
    return [
        pytest.param(s, route, KINDS[(i + j) % 3], id=f"{s.name}-{route}-{KINDS[(i + j) % 3]}")
        for i, s in enumerate(scenarios)
        for j, route in enumerate(routes(s))
    ]


CASES = cases(SCENARIOS, lambda s: s.routes)


@pytest.mark.parametrize(("scenario", "route", "kind"), CASES)
def test_fake_matches_real(real: RealMesh, scenario: Scenario, route: str, kind: str) -> None:
    got_real = run_real(kind, scenario, route, real)
    got_fake = run_fake(kind, scenario, route, real.config)
    print(f"\n{scenario.name} via {route} ({kind}):\n  real {got_real}\n  fake {got_fake}")
    assert got_fake == got_real
    if got_real.outcome in ("MeshTimeoutError", "504"):
        tolerance = 0.15 + 0.25 * int(scenario.options.get("retries", 0))
        assert abs(got_fake.elapsed - got_real.elapsed) <= tolerance, (got_fake.elapsed, got_real.elapsed)


def test_route_flips_match(real: RealMesh) -> None:
    """The same flag flips route the same calls in both worlds (flags by the real SDK in both)."""
    flags = MeshFlags()
    seen: dict[str, list[str]] = {"fake": [], "real": []}
    with flags.installed():
        with FakeMesh() as fake:
            fake.add("svc", reply(200))
            mesh = fake.mesh(real.config)
            session = mesh.requests_session()
            for route in ("envoy", "haproxy", "envoy"):
                flags.route("svc", route)
                seen["fake"].append(mesh_client.call_info(session.get("http://svc/flip")).route.value)
        real.upstream.script(reply(200))
        with mesh_client.Mesh(real.config) as mesh, contextlib.closing(mesh.requests_session()) as session:
            for route in ("envoy", "haproxy", "envoy"):
                flags.route("svc", route)
                seen["real"].append(mesh_client.call_info(session.get("http://svc/flip")).route.value)
    assert seen["fake"] == seen["real"] == ["envoy", "haproxy", "envoy"]
    assert Route.ENVOY.value in seen["real"]
