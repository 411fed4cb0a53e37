"""One CLIENT span and one metric point per logical call, also beside the OTel HTTP instrumentations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor

from mesh_client import Route, call_info, call_options

from ..conftest import Otel
from .conftest import Caller, MeshWorld


def client_spans(otel: Otel) -> list[trace.Span]:
    return [s for s in otel.finished() if s.kind is trace.SpanKind.CLIENT]  # type: ignore[misc]


@pytest.fixture
def instrumented() -> Iterator[None]:
    """opentelemetry-instrumentation-requests and -httpx, installed globally as apps do."""
    requests_instrumentor, httpx_instrumentor = RequestsInstrumentor(), HTTPXClientInstrumentor()
    requests_instrumentor.instrument()
    httpx_instrumentor.instrument()
    yield
    requests_instrumentor.uninstrument()
    httpx_instrumentor.uninstrument()


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY], ids=str)
def test_one_client_span_per_call_with_retries(
    world: MeshWorld, caller: Caller, otel: Otel, route: Route, key: str
) -> None:
    world.set_route(route)
    r = caller.request("GET", f"http://users/flaky?fail=2&code=503&key={key}")
    assert r.status_code == 200
    (span,) = client_spans(otel)
    assert span.name == "GET"
    attributes = dict(span.attributes or {})
    assert attributes["mesh.service"] == "users"
    assert attributes["mesh.route"] == route.value
    assert attributes["mesh.attempts"] == 3
    assert attributes["http.response.status_code"] == 200
    # the span's context is what went out: the backend saw this span as its parent
    parents = {tuple(rec.headers["traceparent"].split("-")[1:3]) for rec in world.backend.records(key)}
    assert parents == {(f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}")}


@pytest.mark.usefixtures("instrumented")
def test_no_second_span_from_the_http_instrumentations(world: MeshWorld, caller: Caller, otel: Otel, key: str) -> None:
    world.set_route(Route.ENVOY)
    r = caller.request("GET", f"http://users/x?key={key}")
    assert call_info(r) is not None
    spans = client_spans(otel)
    assert [(s.name, s.instrumentation_scope.name) for s in spans] == [("GET", "mesh_client")]  # type: ignore[union-attr]
    # calls to other hosts keep their instrumentation span
    caller.request("GET", f"http://{world.backend.address}/direct?key={key}")
    assert len(client_spans(otel)) == 2


def test_failed_call_span_and_metrics(world: MeshWorld, caller: Caller, otel: Otel, key: str) -> None:
    world.set_route(Route.HAPROXY)
    with pytest.raises(caller.timeout_error), call_options(timeout=0.2, retries=0):
        caller.request("GET", f"http://users/slow?sleep=1000&key={key}")
    (span,) = client_spans(otel)
    assert dict(span.attributes or {})["mesh.error_kind"] == "timeout"
    assert span.status.status_code is trace.StatusCode.ERROR
    data = otel.metrics.get_metrics_data()
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "http.client.request.duration" and sm.scope.name == "mesh_client"
        for point in metric.data.data_points
    ]
    outcomes = {(p.attributes["mesh.route"], p.attributes.get("mesh.error_kind")) for p in points}
    assert ("haproxy", "timeout") in outcomes
