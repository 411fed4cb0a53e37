"""Mesh spans and metrics against the official OpenTelemetry HTTP instrumentation, on the same calls.

Each case makes one call with ``opentelemetry-instrumentation-requests`` / ``-httpx`` on a plain
client straight to the backend (stable HTTP conventions: ``OTEL_SEMCONV_STABILITY_OPT_IN=http``),
and the same call through the mesh (real Envoy and HAProxy). The mesh span must carry every
attribute the official one has, with the values a reader expects of a mesh call (the logical URL
and host; the proxy as the network peer), and the same name, status and ``error.type`` rules; the
histogram the same name, unit, buckets and attribute keys (plus ``mesh.route``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import httpx
import pytest
import requests
from opentelemetry import trace
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import ReadableSpan

from mesh_client import Route, call_options
from mesh_client.registry import Address
from mesh_client.telemetry import DURATION_BUCKETS, SCHEMA_URL

from ..conftest import Otel
from .conftest import CLIENT_KINDS, Caller, MeshWorld

OFFICIAL = {
    "requests": "opentelemetry.instrumentation.requests",
    "httpx": "opentelemetry.instrumentation.httpx",
    "httpx-async": "opentelemetry.instrumentation.httpx",
}
#: attributes whose value differs by design: the mesh call's are the logical service and the proxy
WHERE = {"url.full", "server.address", "server.port", "network.peer.address", "network.peer.port"}


@pytest.fixture
def stable_http_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official instrumentations read OTEL_SEMCONV_STABILITY_OPT_IN once per process: read it
    again for this test (an earlier test may have instrumented with the default)."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {})


class Plain:
    """A plain client of one kind with the official instrumentation, calling the backend directly."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests: RequestsInstrumentor | None = None
        if kind == "requests":
            self._requests = RequestsInstrumentor()
            self._requests.instrument()
            self.client: Any = requests.Session()
        elif kind == "httpx":
            self.client = httpx.Client()
            HTTPXClientInstrumentor.instrument_client(self.client)
        else:
            self._loop = asyncio.new_event_loop()
            self.client = httpx.AsyncClient()
            HTTPXClientInstrumentor.instrument_client(self.client)

    def get(self, url: str, timeout: float) -> None:
        try:
            if self._loop is not None:
                self._loop.run_until_complete(self.client.get(url, timeout=timeout))
            else:
                self.client.get(url, timeout=timeout)
        except (requests.Timeout, httpx.TimeoutException):
            pass

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self.client.aclose())
            self._loop.close()
        else:
            self.client.close()
        if self._requests is not None:
            self._requests.uninstrument()


@pytest.fixture(params=CLIENT_KINDS)
def pair(
    request: pytest.FixtureRequest, world: MeshWorld, stable_http_conventions: None
) -> Iterator[tuple[Plain, Caller]]:
    plain, mesh = Plain(request.param), Caller(request.param, world.mesh)
    yield plain, mesh
    plain.close()
    mesh.close()


@dataclass
class Recorded:
    span: ReadableSpan
    #: the attributes of the histogram point this call added to (None: it recorded none, as the
    #: official httpx instrumentation when the request raises)
    point: dict[str, Any] | None
    bounds: tuple[float, ...]
    unit: str


def record(otel: Otel, scope: str, call: Any, *, recorded: bool = True) -> Recorded:
    """Make ``call``; the one CLIENT span it ended under ``scope`` and the histogram point it
    counted (``recorded=False``: it must count none)."""
    otel.spans.clear()
    before = otel.histogram(scope, "http.client.request.duration")
    call()
    spans = otel.finished()
    (span,) = [s for s in spans if s.kind is trace.SpanKind.CLIENT and s.instrumentation_scope.name == scope]  # type: ignore[union-attr]
    after = otel.histogram(scope, "http.client.request.duration")
    grown = [(key, value) for key, value in after.items() if value[0] != before.get(key, (0,))[0]]
    if not recorded:
        assert grown == []
        return Recorded(span, None, (), "")
    assert len(grown) == 1, grown
    key, (count, bounds, unit) = grown[0]
    assert count - before.get(key, (0,))[0] == 1
    return Recorded(span, dict(key), bounds, unit)


def proxy_of(world: MeshWorld, route: Route) -> Address:
    return world.config.envoy_http if route is Route.ENVOY else world.config.services["users"].haproxy


def assert_like_official(official: Recorded, mesh: Recorded, world: MeshWorld, route: Route, path: str) -> None:
    o, m = dict(official.span.attributes or {}), dict(mesh.span.attributes or {})
    assert set(o) <= set(m), set(o) - set(m)
    assert {k: v for k, v in m.items() if k in o and k not in WHERE} == {k: v for k, v in o.items() if k not in WHERE}
    proxy = proxy_of(world, route)
    assert (m["url.full"], m["server.address"], m["server.port"]) == (f"http://users{path}", "users", 80)
    assert (m["network.peer.address"], m["network.peer.port"]) == (proxy.host, proxy.port)
    assert (m["mesh.service"], m["mesh.route"]) == ("users", route.value)
    # name, kind, status (a description only where no status code tells why)
    assert (mesh.span.name, mesh.span.kind) == (official.span.name, official.span.kind)
    assert (mesh.span.name, mesh.span.kind) == ("GET", trace.SpanKind.CLIENT)
    assert mesh.span.status.status_code is official.span.status.status_code
    scope = mesh.span.instrumentation_scope
    assert scope is not None
    assert (scope.name, scope.version, scope.schema_url) == ("mesh_client", version("mesh-client"), SCHEMA_URL)
    # the histogram: same name (selected), unit, buckets; the official point's keys, plus mesh.route
    assert mesh.point is not None
    assert mesh.unit == "s"
    assert mesh.bounds == DURATION_BUCKETS
    if official.point is not None:
        assert (official.unit, official.bounds) == (mesh.unit, mesh.bounds)
        assert set(official.point) <= set(mesh.point)
        assert {k: v for k, v in mesh.point.items() if k in official.point and k not in WHERE} == {
            k: v for k, v in official.point.items() if k not in WHERE
        }
    assert {"http.request.method", "server.address", "server.port", "mesh.route"} <= set(mesh.point)
    assert (mesh.point["server.address"], mesh.point["server.port"], mesh.point["mesh.route"]) == (
        "users",
        80,
        route.value,
    )


def both(
    otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], path: str, route: Route, *, timeout: float = 1.0
) -> tuple[Recorded, Recorded]:
    plain, mesh = pair
    world.set_route(route)
    # (the official httpx instrumentation records no duration for a request that raises)
    raises = "sleep" in path and plain.kind != "requests"
    official = record(
        otel,
        OFFICIAL[plain.kind],
        lambda: plain.get(f"http://{world.backend.address}{path}", timeout),
        recorded=not raises,
    )

    def through_mesh() -> None:
        with call_options(timeout=timeout, retries=0), contextlib.suppress(mesh.timeout_error):
            mesh.request("GET", f"http://users{path}")

    return official, record(otel, "mesh_client", through_mesh)


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY], ids=str)
def test_a_200_like_the_official_instrumentation(
    otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], route: Route, key: str
) -> None:
    official, mesh = both(otel, world, pair, f"/ok?key={key}", route)
    assert_like_official(official, mesh, world, route, f"/ok?key={key}")
    attributes = dict(mesh.span.attributes or {})
    assert mesh.span.status.status_code is trace.StatusCode.UNSET
    assert mesh.point is not None
    assert "error.type" not in attributes
    assert "error.type" not in mesh.point
    assert "http.request.resend_count" not in attributes
    assert (attributes["http.response.status_code"], attributes["network.protocol.version"]) == (200, "1.1")
    assert not mesh.span.events


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY], ids=str)
def test_a_404_is_an_error_on_the_client_span(
    otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], route: Route, key: str
) -> None:
    official, mesh = both(otel, world, pair, f"/missing?status=404&key={key}", route)
    assert_like_official(official, mesh, world, route, f"/missing?status=404&key={key}")
    attributes = dict(mesh.span.attributes or {})
    assert mesh.span.status.status_code is trace.StatusCode.ERROR
    assert mesh.span.status.description is None  # the status code says why
    assert mesh.point is not None
    assert attributes["error.type"] == mesh.point["error.type"] == "404"
    assert not mesh.span.events


def test_a_client_side_timeout_records_the_exception(
    otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], key: str
) -> None:
    """On the HAProxy route the client enforces the timeout: the attempt's exception is recorded."""
    path = f"/slow?sleep=1000&key={key}"
    official, mesh = both(otel, world, pair, path, Route.HAPROXY, timeout=0.2)
    assert_like_official(official, mesh, world, Route.HAPROXY, path)
    attributes = dict(mesh.span.attributes or {})
    assert mesh.point is not None
    assert attributes["error.type"] == mesh.point["error.type"] == "ReadTimeout"
    assert official.point is None or official.point["error.type"] == "ReadTimeout"
    assert attributes["mesh.error_kind"] == "timeout"
    assert "http.response.status_code" not in attributes
    (event,) = mesh.span.events
    (official_event,) = official.span.events
    event_attributes = dict(event.attributes or {})
    assert event.name == official_event.name == "exception"
    assert event_attributes["exception.type"] == dict(official_event.attributes or {})["exception.type"]
    assert event_attributes["exception.message"].startswith("GET to service 'users': no answer via haproxy")
    assert "ReadTimeout" in event_attributes["exception.stacktrace"]  # (with its traceback once raised)
    assert (mesh.span.status.description or "").startswith("ReadTimeout: GET to service 'users'")


def test_an_envoy_timeout_is_envoys_504(otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], key: str) -> None:
    """On the Envoy route Envoy enforces the timeout and answers 504 itself: an HTTP error response
    (error.type "504"), with mesh.envoy_error naming the cause, and no exception in the client."""
    path = f"/slow?sleep=1000&key={key}"
    plain, mesh_caller = pair
    world.set_route(Route.ENVOY)
    official = record(
        otel, OFFICIAL[plain.kind], lambda: plain.get(f"http://{world.backend.address}/x?status=504&key={key}", 1.0)
    )

    def through_mesh() -> None:
        with call_options(timeout=0.2, retries=0):
            assert mesh_caller.request("GET", f"http://users{path}").status_code == 504

    mesh = record(otel, "mesh_client", through_mesh)
    assert_like_official(official, mesh, world, Route.ENVOY, path)
    attributes = dict(mesh.span.attributes or {})
    assert mesh.point is not None
    assert attributes["error.type"] == mesh.point["error.type"] == "504"
    assert attributes["mesh.envoy_error"] == attributes["mesh.error_kind"] == mesh.point["mesh.error_kind"] == "timeout"
    assert mesh.span.status.status_code is trace.StatusCode.ERROR
    assert not mesh.span.events


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY], ids=str)
def test_a_retried_503_then_200_counts_the_resends(
    otel: Otel, world: MeshWorld, pair: tuple[Plain, Caller], route: Route, key: str
) -> None:
    plain, mesh_caller = pair
    world.set_route(route)
    official = record(otel, OFFICIAL[plain.kind], lambda: plain.get(f"http://{world.backend.address}/ok?k={key}", 1.0))
    path = f"/flaky?fail=2&code=503&key={key}"
    mesh = record(otel, "mesh_client", lambda: mesh_caller.request("GET", f"http://users{path}"))
    assert_like_official(official, mesh, world, route, path)
    attributes = dict(mesh.span.attributes or {})
    assert (attributes["http.response.status_code"], attributes["mesh.attempts"]) == (200, 3)
    assert attributes["http.request.resend_count"] == 2
    assert mesh.span.status.status_code is trace.StatusCode.UNSET
    assert mesh.point is not None
    assert "error.type" not in attributes
    assert "error.type" not in mesh.point
