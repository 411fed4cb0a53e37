"""Mesh spans and metrics beyond the HTTP parity test: Thrift (RPC conventions), methods the
conventions do not know, URL redaction, abandoned calls, the probes of OpenTelemetry internals,
and what a call skips without an SDK (metrics, its telemetry, the HTTP instrumentation's suppression).

(tests/integration/test_semconv.py compares HTTP calls with the official instrumentation on real
Envoy and HAProxy.)
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from thriftpy2.thrift import TApplicationException

from mesh_client import Mesh, MeshTimeoutError, Route, ThriftRoutingError, call_options
from mesh_client import telemetry as telemetry_module
from mesh_client._compat import forced_fallback
from mesh_client._compat import otel as compat_otel
from mesh_client.core import Attempt, CallRun, Responded, ServicePlan, drive
from mesh_client.telemetry import (
    DURATION_BUCKETS,
    CallTelemetry,
    instrumentation_loaded,
    no_http_instrumentation,
    redact_url,
)
from mesh_client.testing import FakeMesh, hang, reply, thrift_reply

from ..conftest import Otel, load_idl

REGISTRY: dict[str, Any] = {
    "mesh": {
        "caller": "checkout",
        "envoy_http": "127.0.0.1:15001",
        "envoy_thrift": "127.0.0.1:15002",
        "envoy_admin": "127.0.0.1:15000",
        "default_route": "envoy",
    },
    "flags": {"source": "none"},
    "services": {
        "users": {"haproxy": "127.0.0.1:16001", "endpoints": ["127.0.0.1:18001"], "retries": 0},
        "users-thrift": {
            "protocol": "thrift",
            "haproxy": "127.0.0.1:16003",
            "endpoints": ["127.0.0.1:18003"],
            "timeout": 1.0,
            "retries": 0,
        },
    },
}
IDL = """
exception NotFound {1: string message}
service Users {
    string get(1: i64 id) throws (1: NotFound nf),
}
"""


@pytest.fixture(scope="module")
def users_thrift(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "telemetry_users_thrift")


@pytest.fixture
def mesh(fake_mesh: FakeMesh) -> Mesh:
    return fake_mesh.mesh(REGISTRY)


def the_span(otel: Otel) -> ReadableSpan:
    (span,) = [s for s in otel.finished() if s.instrumentation_scope and s.instrumentation_scope.name == "mesh_client"]
    return span


def new_point(otel: Otel, name: str, call: Any) -> dict[str, Any]:
    """The attributes of the one point of histogram ``name`` that ``call`` counted."""
    before = otel.histogram("mesh_client", name)
    call()
    grown = [(k, v) for k, v in otel.histogram("mesh_client", name).items() if v[0] != before.get(k, (0,))[0]]
    assert len(grown) == 1, grown
    key, (_count, bounds, unit) = grown[0]
    assert (bounds, unit) == (DURATION_BUCKETS, "s")
    return dict(key)


# -- Thrift: the RPC conventions ---------------------------------------------------------------------


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY], ids=str)
def test_a_thrift_call_is_an_rpc_span(
    fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any, otel: Otel, route: Route
) -> None:
    fake_mesh.add("users-thrift", thrift_reply("ann"), thrift_reply(raises=users_thrift.NotFound(message="no")))

    def call() -> None:
        with call_options(route=route), mesh.thrift_client(users_thrift.Users, "users-thrift") as client:
            assert client.get(1) == "ann"

    point = new_point(otel, "rpc.client.call.duration", call)
    span = the_span(otel)
    proxy = mesh.config.envoy_thrift if route is Route.ENVOY else mesh.config.services["users-thrift"].haproxy
    assert proxy is not None
    assert (span.name, span.kind, span.status.status_code) == (
        "Users/get",
        trace.SpanKind.CLIENT,
        trace.StatusCode.UNSET,
    )
    attributes = dict(span.attributes or {})
    assert {k: v for k, v in attributes.items() if k.startswith(("rpc.", "server.", "network."))} == {
        "rpc.system.name": "thrift",
        "rpc.method": "Users/get",
        "server.address": "users-thrift",
        "network.peer.address": proxy.host,
        "network.peer.port": proxy.port,
    }
    assert not [k for k in attributes if k.startswith(("http.", "url."))]
    assert (attributes["mesh.service"], attributes["mesh.route"]) == ("users-thrift", route.value)
    assert point == {
        "rpc.system.name": "thrift",
        "rpc.method": "Users/get",
        "server.address": "users-thrift",
        "mesh.service": "users-thrift",
        "mesh.route": route.value,
    }
    # a declared exception is the method's answer, not a failed call
    otel.spans.clear()
    with mesh.thrift_client(users_thrift.Users, "users-thrift") as client, pytest.raises(users_thrift.NotFound):
        client.get(2)
    assert the_span(otel).status.status_code is trace.StatusCode.UNSET


@pytest.mark.fake_mesh(allow_unexpected=True)
def test_thrift_failures_name_their_error_type(fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any, otel: Otel) -> None:
    fake_mesh.add("users-thrift", thrift_reply(raises=TApplicationException(TApplicationException.INTERNAL_ERROR)))
    with mesh.thrift_client(users_thrift.Users, "users-thrift") as client:
        with pytest.raises(TApplicationException):
            client.get(1)
        span = the_span(otel)
        assert (span.status.status_code, (span.attributes or {})["error.type"]) == (
            trace.StatusCode.ERROR,
            "TApplicationException",
        )
        otel.spans.clear()
        fake_mesh.reset()  # no handler: Envoy has no healthy upstream
        with pytest.raises(ThriftRoutingError):
            client.get(1)
        attributes = dict(the_span(otel).attributes or {})
        assert attributes["error.type"] == attributes["mesh.envoy_error"] == "no_healthy_upstream"
        otel.spans.clear()
        fake_mesh.add("users-thrift", hang())
        with pytest.raises(MeshTimeoutError):
            client.get(1)
    span = the_span(otel)
    assert (span.attributes or {})["error.type"] == "TimeoutError"
    (event,) = span.events
    assert (event.attributes or {})["exception.type"] == "TimeoutError"
    assert str((event.attributes or {})["exception.message"]).startswith("get to service 'users-thrift'")


# -- HTTP details ------------------------------------------------------------------------------------


def test_an_unknown_method_is_other_and_the_span_is_named_http(fake_mesh: FakeMesh, mesh: Mesh, otel: Otel) -> None:
    fake_mesh.add("users", reply(204))
    with mesh.httpx_client() as client:
        point = new_point(otel, "http.client.request.duration", lambda: client.request("PURGE", "http://users/x"))
    span = the_span(otel)
    attributes = dict(span.attributes or {})
    assert span.name == "HTTP"
    assert (attributes["http.request.method"], attributes["http.request.method_original"]) == ("_OTHER", "PURGE")
    assert point["http.request.method"] == "_OTHER"


def test_url_full_hides_signatures_and_keeps_the_rest(fake_mesh: FakeMesh, mesh: Mesh, otel: Otel) -> None:
    fake_mesh.add("users", reply(200))
    with mesh.httpx_client() as client:
        client.get("http://users/x?sig=abc&q=1&Signature=s#top", headers={"User-Agent": "orders/2"})
    attributes = dict(the_span(otel).attributes or {})
    assert attributes["url.full"] == "http://users/x?sig=REDACTED&q=1&Signature=REDACTED#top"
    assert attributes["user_agent.original"] == "orders/2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://users/x", "http://users/x"),
        ("http://users/x?q=1&sig=2", "http://users/x?q=1&sig=REDACTED"),
        (
            "http://users/x?AWSAccessKeyId=k&X-Goog-Signature=g#f",
            "http://users/x?AWSAccessKeyId=REDACTED&X-Goog-Signature=REDACTED#f",
        ),
        ("http://users/x?signature=lower", "http://users/x?signature=lower"),  # the names are case-sensitive
        ("http://u:p@users/x", "http://REDACTED:REDACTED@users/x"),
        ("http://u:p@users", "http://REDACTED:REDACTED@users"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- calls abandoned from outside the core -----------------------------------------------------------


@pytest.mark.parametrize(
    ("escaping", "error_type"), [(asyncio.CancelledError(), None), (KeyError("a bug in a hook"), "KeyError")]
)
def test_a_cancelled_call_is_not_an_error_but_an_escaping_exception_is(
    mesh: Mesh, otel: Otel, escaping: BaseException, error_type: str | None
) -> None:
    svc = mesh.config.services["users"]
    run: CallRun[str] = CallRun(
        ServicePlan.of(mesh.config, svc),
        "GET",
        svc.policy,
        Route.HAPROXY,
        "test",
        telemetry=CallTelemetry("users", "GET"),
    )

    def send(attempt: Attempt) -> Responded[str]:
        raise escaping

    def call() -> None:
        with pytest.raises(type(escaping)):
            drive(run, send, lambda response: None)

    point = new_point(otel, "http.client.request.duration", call)
    span = the_span(otel)
    attributes = dict(span.attributes or {})
    assert attributes.get("error.type") == point.get("error.type") == error_type
    assert attributes["mesh.error_kind"] == ("cancelled" if error_type is None else "error")
    if error_type is None:
        assert (span.status.status_code, span.events) == (trace.StatusCode.UNSET, ())
    else:
        assert span.status.status_code is trace.StatusCode.ERROR
        assert [(e.attributes or {})["exception.type"] for e in span.events] == ["KeyError"]


# -- the probes of OpenTelemetry internals, and their fallbacks ----------------------------------------


def test_without_the_metrics_api_internals_every_call_records(
    fake_mesh: FakeMesh, mesh: Mesh, otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mesh.add("users", reply(200))
    assert (compat_otel._probe_metrics_api() is None) == forced_fallback()  # the installed API, as probed
    monkeypatch.setattr(compat_otel, "_METRICS_API", None)
    assert not telemetry_module.metrics_are_noop()  # the general path: always correct
    with mesh.httpx_client() as client:
        point = new_point(otel, "http.client.request.duration", lambda: client.get("http://users/x"))
    assert point["http.response.status_code"] == 200


def test_the_scope_names_the_package_version_and_schema(fake_mesh: FakeMesh, mesh: Mesh, otel: Otel) -> None:
    from importlib.metadata import version

    fake_mesh.add("users", reply(200))
    with mesh.httpx_client() as client:
        client.get("http://users/x")
    scope = the_span(otel).instrumentation_scope
    assert scope is not None
    assert (scope.name, scope.version, scope.schema_url) == (
        "mesh_client",
        version("mesh-client"),
        "https://opentelemetry.io/schemas/1.44.0",
    )


# -- the dashboard queries of docs/context.md ------------------------------------------------------------


def test_the_prometheus_names_the_dashboard_queries_use(
    fake_mesh: FakeMesh, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/context.md's PromQL reads http_client_request_duration_seconds_{bucket,count} by
    mesh_route, server_address, error_type and le: the names the Prometheus exporter gives."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    http, _rpc = telemetry_module.duration_histograms(provider.get_meter("mesh_client"))
    telemetry_module._Instruments.get()
    monkeypatch.setattr(telemetry_module._Instruments, "http_duration", http)
    fake_mesh.add("users", reply(200), reply(503))
    with mesh.httpx_client() as client:
        client.get("http://users/x")
        client.get("http://users/x")
    samples = [
        s for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples
    ]
    provider.shutdown()
    buckets = {s.labels["le"] for s in samples if s.name == "http_client_request_duration_seconds_bucket"}
    assert buckets == {str(b) for b in DURATION_BUCKETS} | {"+Inf"}
    counts = {
        (s.labels["mesh_route"], s.labels["server_address"], s.labels.get("error_type", "")): s.value
        for s in samples
        if s.name == "http_client_request_duration_seconds_count"
    }
    assert counts == {("envoy", "users", ""): 1.0, ("envoy", "users", "503"): 1.0}


def test_the_probes_say_no_when_the_internals_are_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import opentelemetry.metrics

    monkeypatch.delattr(opentelemetry.metrics, "_internal")
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics._internal", None)  # import fails
    assert compat_otel._probe_metrics_api() is None

    class Elsewhere(trace.TraceState):  # a TraceState that keeps its entries under another name
        def __init__(self, entries: Any = None) -> None:
            self._entries = dict(entries or ())

    monkeypatch.setattr(trace, "TraceState", Elsewhere)
    assert not compat_otel._probe_trace_state_store()


# -- HTTP instrumentation suppressed only where there can be some ----------------------------------------


def test_http_instrumentation_is_suppressed_once_an_instrumentation_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asked the way the official instrumentations ask (``is_http_instrumentation_enabled``), on
    whichever path the compat seam takes: its own context key, or the public
    ``suppress_http_instrumentation()``."""
    loaded_before = set(sys.modules)
    from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled

    try:
        assert is_http_instrumentation_enabled()
        assert instrumentation_loaded()
        with no_http_instrumentation():
            assert not is_http_instrumentation_enabled()
        assert is_http_instrumentation_enabled()
        with monkeypatch.context() as unloaded:  # no instrumentation imported: nothing is set
            unloaded.delitem(sys.modules, "opentelemetry.instrumentation")
            assert not instrumentation_loaded()  # (what lets the wrappers skip the with block)
            with no_http_instrumentation():
                assert is_http_instrumentation_enabled()
    finally:  # the rest of the suite runs as before, without the instrumentation package loaded
        for name in set(sys.modules) - loaded_before:
            del sys.modules[name]


def test_the_suppression_key_is_opentelemetrys_own_or_the_public_function_is_used() -> None:
    from opentelemetry import context as context_api

    if forced_fallback():
        assert compat_otel._SUPPRESS_HTTP_KEY is None
    else:  # (a name with a random suffix: only OpenTelemetry's own string works)
        assert compat_otel._SUPPRESS_HTTP_KEY == context_api._SUPPRESS_HTTP_INSTRUMENTATION_KEY  # type: ignore[attr-defined]
    assert compat_otel._probe_suppress_http_key() == compat_otel._SUPPRESS_HTTP_KEY


# -- without an SDK: no metrics, and no telemetry at all when nothing would be recorded ------------------


def test_metrics_are_skipped_exactly_when_the_proxy_instruments_would_drop_them() -> None:
    from mesh_client.telemetry import _Instruments, metrics_are_noop

    instruments = _Instruments.get()
    for instrument in (instruments.http_duration, instruments.rpc_duration):
        # the API's proxy instruments hold a real instrument only once a meter provider is set
        # (instruments made after the SDK was installed are the SDK's own)
        proxy = type(instrument).__name__.startswith("_Proxy")
        assert metrics_are_noop() == (proxy and getattr(instrument, "_real_instrument", None) is None)


def test_with_an_sdk_every_call_is_counted(plain_mesh: Mesh, otel: Any) -> None:
    from mesh_client.telemetry import metrics_are_noop

    def counted() -> float:
        data = otel.metrics.get_metrics_data()
        return sum(
            point.count
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "http.client.request.duration"
            for point in metric.data.data_points
            if point.attributes.get("mesh.service") == "users"
            and point.attributes.get("http.response.status_code") == 200
        )

    assert not metrics_are_noop()
    before = counted()
    with plain_mesh.httpx_client(transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        for _ in range(3):
            client.get("http://users/x")
    assert counted() - before == 3


@pytest.mark.parametrize(("tracing", "metrics"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_call_has_telemetry_only_when_something_would_be_recorded(
    plain_mesh: Mesh, monkeypatch: pytest.MonkeyPatch, tracing: bool, metrics: bool
) -> None:
    monkeypatch.setattr(telemetry_module, "no_sdk", lambda: not (tracing or metrics))
    run = plain_mesh.start_call(plain_mesh.config.services["users"], "GET")
    assert (run.telemetry is not None) == (tracing or metrics)
    run.abort(RuntimeError("no request is sent"))


@pytest.mark.parametrize(("tracer_provider", "meter_provider"), [(None, None), (object(), None), (None, object())])
def test_no_sdk_is_no_tracer_provider_and_no_meter_provider(
    monkeypatch: pytest.MonkeyPatch, tracer_provider: object, meter_provider: object
) -> None:
    """The one test a call makes (``no_sdk()``) says what the two separate ones say together."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
    if compat_otel._METRICS_API is not None:
        monkeypatch.setattr(compat_otel._METRICS_API, "_METER_PROVIDER", meter_provider)
    both = compat_otel.tracing_is_noop() and compat_otel.metrics_are_noop()
    assert compat_otel.no_sdk() is both
    expected = not forced_fallback() and tracer_provider is None and meter_provider is None
    assert both is expected
