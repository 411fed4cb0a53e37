"""Conformance of routing overrides: each scenario runs against ``fake_mesh`` and against real
Envoy + HAProxy rendered from the same registry, and must give the same observable outcome:
status, which deployment answered, ``call_info`` (route, variant, failover, Envoy's error) and the
``x-mesh-*`` headers the instance received.

The service ``svc`` has a main deployment and three variants: ``canary`` (its own HAProxy port),
``preview`` (no HAProxy port: reached via Envoy) and ``empty`` (a HAProxy port, no instances).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

import mesh_client
from mesh_client import Route, call_options, route_overrides
from mesh_client.overrides import OVERRIDE_HEADER, VARIANT_HEADER
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import FakeMesh, reply
from mesh_client.testing.upstream import ScriptedUpstream

from .conftest import Caller
from .test_conformance import cases

pytestmark = pytest.mark.real

DEPLOYMENTS = ("main", "canary", "preview")


@dataclass(frozen=True)
class Scenario:
    name: str
    overrides: dict[str, str] = field(default_factory=dict)
    #: request headers the caller sets itself
    headers: dict[str, str] = field(default_factory=dict)
    #: the route forced by the call options (None: the registry's default route)
    forced: str | None = None


SCENARIOS = [
    Scenario("no override"),
    Scenario("override to a variant with a HAProxy port", {"svc": "canary"}),
    Scenario("override to a variant without a HAProxy port", {"svc": "preview"}),
    Scenario("override to a variant with no instances", {"svc": "empty"}),
    Scenario("override to an undeclared variant", {"svc": "nightly"}),
    Scenario("override for another service only", {"other": "canary"}),
    Scenario("several overrides, later wins", {"other": "x", "svc": "canary"}),
    Scenario("caller-set x-mesh headers", headers={VARIANT_HEADER: "canary", OVERRIDE_HEADER: "svc=canary"}),
    Scenario("forced HAProxy, variant without a port", {"svc": "preview"}, forced="haproxy"),
]


def registry(upstreams: dict[str, ScriptedUpstream], default_route: str) -> dict[str, Any]:
    """The registry (fresh sidecar ports)."""

    def port() -> str:
        return f"127.0.0.1:{free_port()}"

    return {
        "mesh": {
            "caller": "checkout",
            "envoy_http": port(),
            "envoy_admin": port(),
            "default_route": default_route,
            "failover": False,
        },
        "flags": {"source": "none"},
        "services": {
            "svc": {
                "haproxy": port(),
                "endpoints": [str(upstreams["main"].address)],
                "timeout": 1.0,
                "variants": {
                    "canary": {"haproxy": port(), "endpoints": [str(upstreams["canary"].address)]},
                    "preview": {"endpoints": [str(upstreams["preview"].address)]},
                    "empty": {"haproxy": port()},
                },
            },
        },
    }


@dataclass
class RealMesh:
    configs: dict[str, MeshConfig]
    upstreams: dict[str, ScriptedUpstream]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[RealMesh]:
    work = tmp_path_factory.mktemp("conformance-overrides")
    with ExitStack() as stack:
        upstreams = {name: stack.enter_context(ScriptedUpstream(name)) for name in DEPLOYMENTS}
        for name, upstream in upstreams.items():
            upstream.script(reply(200, json={"by": name}))
        data = registry(upstreams, "envoy")  # one set of ports: the same sidecars serve both default routes
        configs = {
            route: load_mapping({**data, "mesh": {**data["mesh"], "default_route": route}})
            for route in ("envoy", "haproxy")
        }
        stack.enter_context(start_envoy(configs["envoy"], work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(configs["envoy"], work / "haproxy", binary=haproxy_bin))
        yield RealMesh(configs, upstreams)


@dataclass(frozen=True)
class Observed:
    status: int
    by: str | None
    route: str
    variant: str | None
    envoy_error: str | None
    failed_over: bool
    #: the x-mesh-override and x-mesh-variant headers the instance received (None: none)
    override_header: str | None
    variant_header: str | None


def observe(caller: Caller, scenario: Scenario, received: Any) -> Observed:
    with (
        route_overrides(scenario.overrides),
        call_options(**({"route": Route(scenario.forced)} if scenario.forced else {})),
    ):
        response = caller.request("GET", "http://svc/conformance", headers=scenario.headers)
    info = mesh_client.call_info(response)
    assert info is not None
    requests = received()
    last = requests[-1] if requests else None
    body = response.json() if response.status_code == 200 else {}
    return Observed(
        status=response.status_code,
        by=body.get("by"),
        route=info.route.value,
        variant=info.variant,
        envoy_error=info.envoy_error,
        failed_over=info.failed_over,
        override_header=None if last is None else last.headers.get(OVERRIDE_HEADER),
        variant_header=None if last is None else last.headers.get(VARIANT_HEADER),
    )


def run_fake(kind: str, scenario: Scenario, config: MeshConfig) -> Observed:
    with FakeMesh() as fake:
        mesh = fake.mesh(config)
        for name in DEPLOYMENTS:
            fake.add("svc", reply(200, json={"by": name}), variant=None if name == "main" else name)
        with contextlib.closing(Caller(kind, mesh)) as caller:
            return observe(caller, scenario, lambda: fake.calls[-1].upstream if fake.calls else [])


def run_real(kind: str, scenario: Scenario, real: RealMesh, route: str) -> Observed:
    for name, upstream in real.upstreams.items():
        upstream.script(reply(200, json={"by": name}))
    with mesh_client.Mesh(real.configs[route]) as mesh, contextlib.closing(Caller(kind, mesh)) as caller:
        return observe(caller, scenario, lambda: [r for u in real.upstreams.values() for r in u.requests])


CASES = cases(SCENARIOS, lambda s: ("envoy", "haproxy"))


@pytest.mark.parametrize(("scenario", "route", "kind"), CASES)
def test_fake_matches_real(real: RealMesh, scenario: Scenario, route: str, kind: str) -> None:
    got_real = run_real(kind, scenario, real, route)
    got_fake = run_fake(kind, scenario, real.configs[route])
    print(f"\n{scenario.name} via {route} ({kind}):\n  real {got_real}\n  fake {got_fake}")
    assert got_fake == got_real


def test_the_scenarios_reach_each_deployment(real: RealMesh) -> None:
    """The scenarios are not all alike: on the real mesh, each deployment answers at least one."""
    answered = {run_real("requests", s, real, "haproxy").by for s in SCENARIOS}
    assert set(DEPLOYMENTS) <= answered
