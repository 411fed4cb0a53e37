"""The per-call shortcuts of issue 8 give the same results as the general paths they skip: context
headers without an OpenTelemetry SDK, request ids, the retry budget's running sums, the cached
Envoy policy headers, the per-service plans, the wrappers' cached URL parsing, the httpx attempt
request copied from the caller's, and the response header dictionaries."""

from __future__ import annotations

import dataclasses
import random
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Setter, TextMapPropagator

from mesh_client import InvalidServiceURL, Mesh, call_info, call_options
from mesh_client import telemetry as telemetry_module
from mesh_client.budget import RetryBudget, RetryBudgetConfig
from mesh_client.clock import use_virtual_clock
from mesh_client.context import begin_request, new_request_id, outbound_headers
from mesh_client.core import Attempt
from mesh_client.envoy import policy_header_template, policy_headers
from mesh_client.http._httpx_attempt import header_dict
from mesh_client.telemetry import CallTelemetry, no_http_instrumentation

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001", "default_route": "envoy"},
    "services": {"users": {"haproxy": "127.0.0.1:20001", "timeout": 1.0}},
}


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    with Mesh.from_dict(REGISTRY) as m:
        yield m


# -- context headers without an SDK -------------------------------------------------------------


def reference_headers() -> dict[str, str]:
    """What the general path sends without an SDK: the no-op tracer's span set in the current
    context, injected by the global propagator."""
    span = trace.NoOpTracer().start_span("GET users", kind=trace.SpanKind.CLIENT)
    return dict(outbound_headers(trace.set_span_in_context(span)))


def shortcut_headers(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(telemetry_module, "tracing_is_noop", lambda: True)
    telemetry = CallTelemetry("users", "GET")
    assert telemetry.propagation_context() is None  # no span of the call's own
    assert not telemetry.span.is_recording()
    return dict(outbound_headers(telemetry.propagation_context()))


@pytest.mark.parametrize(
    "inbound",
    [
        {},
        {"traceparent": TRACEPARENT},
        {"traceparent": TRACEPARENT, "tracestate": "vendor=value"},
        {"baggage": "k=v"},
        {"traceparent": TRACEPARENT, "baggage": "k=v,tenant=t1"},
    ],
    ids=["nothing", "trace", "trace-state", "baggage", "trace-baggage"],
)
def test_without_an_sdk_the_call_carries_what_the_no_op_tracer_would_give(
    monkeypatch: pytest.MonkeyPatch, inbound: dict[str, str]
) -> None:
    end = begin_request({**inbound, "x-request-id": "req-1"}, header_prefix="x-envoy", context_headers=())
    try:
        got = shortcut_headers(monkeypatch)
        expected = reference_headers()
    finally:
        end()
    assert got == expected
    assert got["x-request-id"] == "req-1"
    if "traceparent" in inbound:
        assert got["traceparent"] == TRACEPARENT  # the inbound trace goes on unchanged


def test_baggage_set_by_the_application_goes_out_without_an_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    token = otel_context.attach(baggage.set_baggage("tenant", "t1"))
    try:
        got = shortcut_headers(monkeypatch)
    finally:
        otel_context.detach(token)
    assert got["baggage"] == "tenant=t1"
    assert "traceparent" not in got


def test_an_empty_context_adds_only_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(shortcut_headers(monkeypatch)) == ["x-request-id"]


class AlwaysPropagator(TextMapPropagator):
    """A propagator that writes a header whatever the context holds."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Setter[Any] | None = None) -> None:
        assert setter is not None
        setter.set(carrier, "X-Always", "yes")

    @property
    def fields(self) -> set[str]:
        return {"x-always"}


def test_a_custom_propagator_is_always_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(AlwaysPropagator())
    try:
        got = shortcut_headers(monkeypatch)
    finally:
        propagate.set_global_textmap(previous)
    assert got["x-always"] == "yes"
    assert "x-always" not in shortcut_headers(monkeypatch)  # and the default is recognised again


def test_a_propagator_value_that_cannot_go_out_is_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bad(AlwaysPropagator):
        def inject(self, carrier: Any, context: Any = None, setter: Setter[Any] | None = None) -> None:
            assert setter is not None
            setter.set(carrier, "x-bad", "a\r\nb")

    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(Bad())
    try:
        with pytest.raises(ValueError, match="x-bad"):
            shortcut_headers(monkeypatch)
    finally:
        propagate.set_global_textmap(previous)


# -- request ids --------------------------------------------------------------------------------


def test_request_ids_are_fresh_uuid4s() -> None:
    ids = [new_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for value in ids[:500]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_seeding_the_application_random_does_not_repeat_request_ids() -> None:
    random.seed(1234)
    first = [new_request_id() for _ in range(3)]
    random.seed(1234)
    second = [new_request_id() for _ in range(3)]
    assert not set(first) & set(second)


# -- the retry budget's running sums ----------------------------------------------------------------


class NaiveBudget:
    """The budget as specified: buckets summed on every question."""

    def __init__(self, config: RetryBudgetConfig, clock: Any) -> None:
        self.config, self.clock, self.width = config, clock, config.ttl / 10
        self.calls, self.retries = [0] * 10, [0] * 10
        self.epoch = int(clock() / self.width)

    def roll(self) -> None:
        epoch = int(self.clock() / self.width)
        for i in range(1, min(epoch - self.epoch, 10) + 1):
            self.calls[(self.epoch + i) % 10] = self.retries[(self.epoch + i) % 10] = 0
        self.epoch = max(epoch, self.epoch)

    def balance(self) -> float:
        allowed = self.config.min_per_second * self.config.ttl + sum(self.calls) * self.config.percent / 100
        return allowed - sum(self.retries)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["deposit", "withdraw", "spend", "available", "wait"]),
            st.floats(min_value=0, max_value=4),
            st.integers(min_value=0, max_value=3),
        ),
        max_size=80,
    ),
    percent=st.sampled_from([0.0, 10.0, 20.0, 33.3]),
    floor=st.sampled_from([0.0, 0.2, 1.0]),
)
def test_the_running_sums_answer_as_the_buckets_would(
    ops: list[tuple[str, float, int]], percent: float, floor: float
) -> None:
    now = [1000.0]
    config = RetryBudgetConfig(percent=percent, min_per_second=floor, ttl=10)
    budget, naive = RetryBudget(config, lambda: now[0]), NaiveBudget(config, lambda: now[0])
    for op, seconds, count in ops:
        if op == "wait":
            now[0] += seconds
        elif op == "deposit":
            left = budget.deposit()
            naive.roll()
            naive.calls[naive.epoch % 10] += 1
            assert left == max(0, int(naive.balance()))  # what available() would say next
        elif op == "withdraw":
            naive.roll()
            allowed = naive.balance() >= 1
            if allowed:
                naive.retries[naive.epoch % 10] += 1
            assert budget.try_withdraw() == allowed
        elif op == "spend":
            budget.spend(count)
            if count > 0:
                naive.roll()
                naive.retries[naive.epoch % 10] += count
        else:
            naive.roll()
            assert budget.available() == max(0, int(naive.balance()))


# -- Envoy policy headers ---------------------------------------------------------------------------


def test_policy_headers_reuse_the_policy_part_and_accept_lists() -> None:
    a = policy_headers(
        "x-envoy", timeout=0.75, per_try_timeout=0.3, retries=2, retry_on=("5xx",), retriable_status_codes=()
    )
    b = policy_headers(
        "x-envoy", timeout=0.5, per_try_timeout=0.3, retries=2, retry_on=["5xx"], retriable_status_codes=[]
    )
    assert a[0] == ("x-envoy-upstream-rq-timeout-ms", "750")
    assert b[0] == ("x-envoy-upstream-rq-timeout-ms", "500")
    assert a[1:] == b[1:]
    assert policy_header_template("x-envoy", 0.3, 2, ("5xx",), ()) is policy_header_template(
        "x-envoy", 0.3, 2, ("5xx",), ()
    )
    # the per-try header only while it is below the call's timeout
    c = policy_headers(
        "x-envoy", timeout=0.25, per_try_timeout=0.3, retries=2, retry_on=("5xx",), retriable_status_codes=()
    )
    assert [n for n, _ in c] == ["x-envoy-upstream-rq-timeout-ms", "x-envoy-retry-on", "x-envoy-max-retries"]


# -- per-service plans --------------------------------------------------------------------------


def envoy_attempt(mesh: Mesh, service: Any = None) -> Attempt:
    run = mesh.start_call(service or mesh.config.services["users"], "GET")
    attempt = run.advance(None)
    assert isinstance(attempt, Attempt)
    run.abort(RuntimeError("no request is sent"))
    return attempt


def test_the_plans_policy_headers_are_the_general_ones(mesh: Mesh) -> None:
    for options in ({}, {"retries": 1}, {"per_try_timeout": 0.2}, {"idempotent": False}, {"retry_on": ["5xx"]}):
        for _ in range(2):  # the second call takes the plan's cached template
            with call_options(**options):
                attempt = envoy_attempt(mesh)
            sent = dict(attempt.set_headers)
            policy = mesh.config.services["users"].policy.new(**{k: v for k, v in options.items() if k != "idempotent"})
            idempotent = options.get("idempotent")
            expected = policy_headers(
                "x-envoy",
                timeout=int(sent["x-envoy-upstream-rq-timeout-ms"]) / 1000,
                per_try_timeout=policy.per_try_timeout,
                retries=policy.retries,
                retry_on=policy.retry_tokens_for("GET", idempotent if isinstance(idempotent, bool) else None),
                retriable_status_codes=policy.retriable_status_codes,
            )
            assert [(n, v) for n, v in attempt.set_headers if n.startswith("x-envoy-")] == expected


def test_a_service_config_not_from_the_registry_gets_a_plan_of_its_own(mesh: Mesh) -> None:
    registered = mesh.config.services["users"]
    stranger = dataclasses.replace(registered, policy=registered.policy.new(timeout=0.2))
    with use_virtual_clock():  # (no time passes between the start of a call and its attempt)
        assert dict(envoy_attempt(mesh, stranger).set_headers)["x-envoy-upstream-rq-timeout-ms"] == "200"
        assert dict(envoy_attempt(mesh).set_headers)["x-envoy-upstream-rq-timeout-ms"] == "1000"
    # both draw on the service's one retry budget
    assert mesh.start_call(stranger, "GET").plan.budget is mesh.retry_budget("users")


# -- HTTP instrumentation suppressed only where there can be some -----------------------------------


def test_http_instrumentation_is_suppressed_once_an_instrumentation_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = telemetry_module._SUPPRESS_HTTP_KEY
    monkeypatch.delitem(sys.modules, "opentelemetry.instrumentation", raising=False)
    with no_http_instrumentation():
        assert otel_context.get_value(key) is None  # nothing could read it: nothing set
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation", types.ModuleType("opentelemetry.instrumentation"))
    with no_http_instrumentation():
        assert otel_context.get_value(key) is True
    assert otel_context.get_value(key) is None


# -- the wrappers' cached URL parsing -----------------------------------------------------------


def test_httpx_attempts_keep_the_caller_headers_in_order_then_the_mesh_ones(mesh: Mesh) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    with mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
        for _ in range(2):  # the second call takes the cached proxy URL
            r = client.get(
                "http://users/a/b?x=1",
                headers=[("X-One", "1"), ("x-envoy-retry-on", "5xx"), ("X-Two", b"caf\xe9"), ("Connection", "x")],
            )
            assert r.status_code == 200
            assert r.request.url == httpx.URL("http://users/a/b?x=1")  # the caller's own
    for request in seen:
        assert request.url == httpx.URL("http://127.0.0.1:9001/a/b?x=1")
        # (traceparent too when an earlier test installed the SDK)
        names = [k.decode() for k, _ in request.headers.raw if k not in (b"traceparent", b"tracestate")]
        # the client's and the caller's headers as set, the refused ones dropped, then the mesh's
        assert names == [
            "Accept",
            "Accept-Encoding",
            "User-Agent",
            "X-One",
            "X-Two",
            "Host",
            "x-request-id",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-retry-on",
            "x-envoy-max-retries",
        ]
        assert request.headers.raw[4] == (b"X-Two", b"caf\xe9")  # passed on as the bytes it was
        assert request.headers["host"] == "users"
        assert request.headers["x-envoy-retry-on"] == "connect-failure,refused-stream,reset-before-request"


def test_httpx_failover_sends_the_same_url_to_each_proxy(mesh: Mesh) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.port == 9001:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    with mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
        r = client.get("http://users/p?q=1")
    info = call_info(r)
    assert info is not None
    assert info.failed_over
    assert seen == ["http://127.0.0.1:9001/p?q=1", "http://127.0.0.1:20001/p?q=1"]


def test_requests_refuses_a_bad_service_url_on_every_call(mesh: Mesh) -> None:
    with mesh.requests_session() as session:
        for _ in range(2):
            with pytest.raises(InvalidServiceURL, match="port"):
                session.get("http://users:8080/x")
        assert session.get_adapter("http://users/x") is session.mesh_adapter
        assert isinstance(session.get_adapter("http://example.com/x"), requests.adapters.HTTPAdapter)
        assert session.get_adapter("http://example.com/x") is not session.mesh_adapter


# -- the httpx attempt request, copied from the caller's ------------------------------------------


class TaggedRequest(httpx.Request):
    """A Request subclass: the transport makes its attempts with httpx's public constructor."""


def test_httpx_attempts_are_the_same_from_a_request_or_a_subclass(mesh: Mesh) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=request.content)

    transport = mesh.httpx_transport(httpx.MockTransport(handler))
    sent = []
    for cls in (httpx.Request, TaggedRequest):
        request = cls("POST", "http://users/a?x=1", headers={"X-One": "1", "Connection": "x"}, content=b"body")
        before = (request.url, request.headers.raw, dict(request.extensions))
        response = transport.handle_request(request)
        assert response.read() == b"body"
        # the caller's request is left as it was
        assert (request.url, request.headers.raw, dict(request.extensions)) == before
        sent.append(seen[-1])
    plain, tagged = sent
    assert type(plain) is httpx.Request
    for attempt in sent:
        assert attempt.url == httpx.URL("http://127.0.0.1:9001/a?x=1")
        assert attempt.method == "POST"
        assert attempt.content == b"body"
        assert attempt.extensions["timeout"]["read"] > 1.0  # the attempt's own (Envoy's timeout + margin)
    assert [k for k, _ in plain.headers.raw] == [k for k, _ in tagged.headers.raw]
    per_call = (b"x-request-id", b"x-envoy-upstream-rq-timeout-ms", b"traceparent", b"tracestate")
    assert [v for k, v in plain.headers.raw if k not in per_call] == [
        v for k, v in tagged.headers.raw if k not in per_call
    ]


# -- response headers as the core reads them -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        [("Content-Length", "2"), ("X-Envoy-Upstream-Service-Time", "7")],
        [("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Envoy-Attempt-Count", "2")],
        [],
    ],
)
def test_response_header_dict_answers_as_httpx(raw: list[tuple[str, str]]) -> None:
    headers = httpx.Headers(raw)
    found = header_dict(headers)
    for name in {n.lower() for n, _ in raw}:
        assert found[name] == headers.get(name)  # repeated names joined with ", ", as httpx joins them
    assert len(found) == len({n.lower() for n, _ in raw})


# -- metrics without an SDK ----------------------------------------------------------------------------


def test_metrics_are_skipped_exactly_when_the_proxy_instruments_would_drop_them() -> None:
    from mesh_client.telemetry import _Instruments, metrics_are_noop

    instruments = _Instruments.get()
    for instrument in (instruments.http_duration, instruments.rpc_duration):
        # the API's proxy instruments hold a real instrument only once a meter provider is set
        # (instruments made after the SDK was installed are the SDK's own)
        proxy = type(instrument).__name__.startswith("_Proxy")
        assert metrics_are_noop() == (proxy and getattr(instrument, "_real_instrument", None) is None)


def test_with_an_sdk_every_call_is_counted(mesh: Mesh, otel: Any) -> None:
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
    with mesh.httpx_client(transport=httpx.MockTransport(lambda request: httpx.Response(200))) as client:
        for _ in range(3):
            client.get("http://users/x")
    assert counted() - before == 3


# -- the async attempt's deadline ----------------------------------------------------------------------


def test_an_asyncio_task_gets_the_timer_deadline_and_other_callers_anyio() -> None:
    import asyncio

    import sniffio

    from mesh_client.http import _async_deadline

    async def inside() -> tuple[str, str]:
        ours = type(_async_deadline.attempt_deadline(1.0)).__name__
        token = sniffio.current_async_library_cvar.set("trio")  # a library on top of asyncio says so
        try:
            declared = type(_async_deadline.attempt_deadline(1.0)).__name__
        finally:
            sniffio.current_async_library_cvar.reset(token)
        return ours, declared

    ours, declared = asyncio.run(inside())
    assert ours == "_AsyncioDeadline"
    assert declared != "_AsyncioDeadline"
    assert type(_async_deadline.attempt_deadline(1.0)).__name__ != "_AsyncioDeadline"  # no loop running here


def test_the_timer_deadline_times_out_but_leaves_other_cancellations_alone() -> None:
    import asyncio

    from mesh_client.http import _async_deadline

    async def late() -> None:
        with _async_deadline.attempt_deadline(0.01):
            await asyncio.Event().wait()  # never set

    async def in_time() -> str:
        with _async_deadline.attempt_deadline(5.0):
            await asyncio.sleep(0)
        return "done"

    async def cancelled_from_outside() -> None:
        started = asyncio.Event()

        async def victim() -> None:
            with _async_deadline.attempt_deadline(5.0):
                started.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(victim())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.raises(TimeoutError):
        asyncio.run(late())
    assert asyncio.run(in_time()) == "done"
    asyncio.run(cancelled_from_outside())


# -- the requests attempt -------------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False], ids=["headers-written-to-the-store", "headers-through-methods"])
def test_requests_attempts_keep_the_caller_headers_then_the_mesh_ones(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPResponse

    from mesh_client.http import requests as mesh_requests

    # the same request either way: the shortcut, and the public path for a requests whose
    # CaseInsensitiveDict keeps its items otherwise
    monkeypatch.setattr(mesh_requests, "_HEADER_STORE", direct and mesh_requests._HEADER_STORE)

    sent: list[requests.PreparedRequest] = []

    def send(adapter: HTTPAdapter, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        sent.append(request)
        raw = HTTPResponse(body=b"ok", headers={"content-length": "2"}, status=200, preload_content=False)
        response: requests.Response = adapter.build_response(request, raw)
        return response

    monkeypatch.setattr(HTTPAdapter, "send", send)
    with mesh.requests_session() as session:
        session.cookies.set("sid", "1")
        caller_headers = {"X-One": "1", "Connection": "x", "x-envoy-retry-on": "5xx", "X-Request-Id": "mine"}
        for _ in range(2):  # the second call takes the remembered header decisions
            r = session.post("http://users/a?x=1", data=b"body", headers=caller_headers)
            assert r.status_code == 200
            # the request as sent, to the caller's URL
            assert r.request.url == "http://users/a?x=1"
            assert r.request.headers == sent[-1].headers
            assert "Connection" not in r.request.headers
            assert r.request.headers["X-Request-Id"] != "mine"
            assert r.request.headers["x-envoy-upstream-rq-timeout-ms"] == "999"
    for attempt in sent:
        assert attempt.url == "http://127.0.0.1:9001/a?x=1"
        assert attempt.method == "POST"
        assert attempt.body == b"body"
        names = [n for n in attempt.headers if n.lower() not in ("traceparent", "tracestate")]
        assert names == [
            "User-Agent",
            "Accept-Encoding",
            "Accept",
            "X-One",
            "Cookie",
            "Content-Length",
            "Host",
            "x-request-id",
            "x-envoy-upstream-rq-timeout-ms",
            "x-envoy-retry-on",
            "x-envoy-max-retries",
        ]
        assert attempt.headers["x-envoy-retry-on"] == "connect-failure,refused-stream,reset-before-request"
        assert attempt.headers["cookie"] == "sid=1"
        assert attempt.headers["host"] == "users"
        assert attempt.headers["x-request-id"] != "mine"  # a caller's id is not a trusted one


@pytest.mark.parametrize(("tracing", "metrics"), [(False, False), (True, False), (False, True), (True, True)])
def test_a_call_has_telemetry_only_when_something_would_be_recorded(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, tracing: bool, metrics: bool
) -> None:
    monkeypatch.setattr(telemetry_module, "tracing_is_noop", lambda: not tracing)
    monkeypatch.setattr(telemetry_module, "metrics_are_noop", lambda: not metrics)
    run = mesh.start_call(mesh.config.services["users"], "GET")
    assert (run.telemetry is not None) == (tracing or metrics)
    run.abort(RuntimeError("no request is sent"))
