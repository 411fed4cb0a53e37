"""The inbound/outbound context layer: what an inbound request leaves behind for the app (deadline,
request id, trace, allowlisted context headers), what every mesh call carries out (its request id,
with or without an OpenTelemetry SDK), and the trust boundary between the two (nothing an inbound
caller sends can steer a sidecar or break a call).
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Setter, TextMapPropagator

import mesh_client
from mesh_client import ConfigError, Mesh, Route
from mesh_client import telemetry as telemetry_module
from mesh_client.context import (
    NEVER_FORWARDED,
    Inbound,
    begin_request,
    check_header_value,
    current_inbound,
    new_request_id,
    outbound_headers,
    parse_grpc_timeout,
    read_inbound,
)
from mesh_client.core import Attempt, CallRun, ServicePlan
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.telemetry import CallTelemetry

from ..conftest import Otel

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
MESH_DATA: dict[str, Any] = {
    "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001", "context_headers": ["x-tenant"]},
    "services": {"users": {"haproxy": "127.0.0.1:20001"}},
}
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def inbound(headers: dict[str, str], prefix: str = "x-envoy", allow: tuple[str, ...] = ()) -> Inbound:
    return read_inbound(headers, header_prefix=prefix, context_headers=allow)


def is_uuid4(value: str) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def is_valid_request_id(value: str | None) -> bool:
    return value is not None and _VALID_REQUEST_ID.fullmatch(value) is not None


def mesh_config(**mesh: Any) -> MeshConfig:
    return load_mapping(
        {
            "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001", **mesh},
            "services": {"users": {"haproxy": "127.0.0.1:20001"}},
        }
    )


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with Mesh.from_dict(MESH_DATA) as m:
        yield m


@pytest.fixture(autouse=True)
def no_context_leaks() -> Iterator[None]:
    """Every test starts and ends outside any request and deadline."""
    assert current_inbound() is None
    assert mesh_client.time_left() is None
    yield
    assert current_inbound() is None
    assert mesh_client.time_left() is None


# -- read_inbound: deadlines --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "seconds"),
    [
        ("x-envoy-expected-rq-timeout-ms", "1500", 1.5),
        ("x-mesh-timeout-ms", "250", 0.25),
        ("grpc-timeout", "2S", 2.0),
        ("grpc-timeout", "300m", 0.3),
        ("x-envoy-expected-rq-timeout-ms", "1", 0.001),
        ("x-mesh-timeout-ms", "86400000", 86400.0),  # exactly one day is still honoured
        ("x-envoy-expected-rq-timeout-ms", " 1500 ", 1.5),  # optional whitespace around the value
    ],
)
def test_each_inbound_timeout_header_becomes_the_timeout(name: str, value: str, seconds: float) -> None:
    assert inbound({name: value}).timeout == pytest.approx(seconds)


def test_no_timeout_header_means_no_timeout() -> None:
    assert inbound({"x-request-id": "r"}).timeout is None


@pytest.mark.parametrize("smallest", ["x-envoy-expected-rq-timeout-ms", "x-mesh-timeout-ms", "grpc-timeout"])
def test_the_smallest_inbound_timeout_wins(smallest: str) -> None:
    headers = {"x-envoy-expected-rq-timeout-ms": "3000", "x-mesh-timeout-ms": "4000", "grpc-timeout": "5S"}
    headers[smallest] = "200m" if smallest == "grpc-timeout" else "200"
    assert inbound(headers).timeout == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["x-envoy-expected-rq-timeout-ms", "x-mesh-timeout-ms"])
@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "1.5",
        "1e3",
        "0x10",
        "1_000",
        "0",
        "000",
        "-5",
        "+5",
        "86400001",  # more than one day
        "999999999999",
        "1" * 40,
        "\u0661\u0665\u0660\u0660",  # Arabic-Indic digits: str.isdigit() says yes
        "\uff11\uff15",  # full-width digits
        "\u00b2",  # superscript two
        "15\x00",
        "1500ms",
    ],
)
def test_unusable_ms_timeouts_are_ignored(name: str, value: str) -> None:
    assert inbound({name: value}).timeout is None
    # ... and never hide a usable one
    other = "x-mesh-timeout-ms" if name != "x-mesh-timeout-ms" else "x-envoy-expected-rq-timeout-ms"
    assert inbound({name: value, other: "700"}).timeout == pytest.approx(0.7)


@pytest.mark.parametrize("value", ["", "S", "1", "-1S", "+1S", "1.5S", "1 S", "1s", "1X", "123456789S", "\u0661S"])
def test_unusable_grpc_timeouts_are_ignored(value: str) -> None:
    assert inbound({"grpc-timeout": value}).timeout is None
    assert inbound({"grpc-timeout": value, "x-mesh-timeout-ms": "700"}).timeout == pytest.approx(0.7)


@pytest.mark.parametrize("value", ["0S", "00000000n", "0H", "25H", "1441M", "86401S", "86400001m", "99999999H"])
def test_zero_and_over_a_day_grpc_timeouts_are_ignored(value: str) -> None:
    assert inbound({"grpc-timeout": value}).timeout is None
    assert inbound({"grpc-timeout": value, "x-mesh-timeout-ms": "700"}).timeout == pytest.approx(0.7)


def test_a_grpc_timeout_of_exactly_one_day_is_honoured() -> None:
    assert inbound({"grpc-timeout": "24H"}).timeout == pytest.approx(86400.0)
    assert inbound({"grpc-timeout": "86400000m"}).timeout == pytest.approx(86400.0)


def test_a_custom_header_prefix_is_honoured_for_the_envoy_timeout() -> None:
    assert inbound({"x-foo-expected-rq-timeout-ms": "700"}, prefix="x-foo").timeout == pytest.approx(0.7)
    assert inbound({"x-foo-expected-rq-timeout-ms": "700"}).timeout is None  # default prefix: not Envoy's header
    headers = {"x-foo-expected-rq-timeout-ms": "700", "grpc-timeout": "100m"}
    assert inbound(headers, prefix="x-foo").timeout == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("3S", 3.0),
        ("4m", 0.004),
        ("5u", 5e-6),
        ("6n", 6e-9),
        ("99999999u", 99.999999),  # 8 digits: the most gRPC allows
        ("86399S", 86399.0),
        ("00000001m", 0.001),
        (" 5S ", 5.0),
    ],
)
def test_parse_grpc_timeout_units(value: str, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        *("", "S", "5", "5s", "5h", "5x", "5 S", "-5S", "+5S", "5.0S", "5SS", "S5", "\u0665S", "\uff15S"),
        *("123456789S", "000000001S", "123456789n"),  # 9 digits, whatever the value
    ],
)
def test_parse_grpc_timeout_bad_forms(value: str) -> None:
    assert parse_grpc_timeout(value) is None


# -- read_inbound: request id and context headers -----------------------------------------------


@pytest.mark.parametrize("value", ["req-1", "a" * 200, "!~", "0123456789abcdef", 'x"y{z}'])
def test_a_valid_inbound_request_id_is_kept(value: str) -> None:
    got = inbound({"x-request-id": value})
    assert got.request_id == value
    assert not got.replaced_request_id


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "a" * 201,
        "a b",
        " abc",
        "abc ",
        "a\rb",
        "a\nb",
        "abc\r",
        "\nabc",
        "a\x00b",
        "a\tb",
        "caf\u00e9",
        "\u2603",
    ],
)
def test_a_missing_or_invalid_inbound_request_id_is_replaced_by_a_uuid4(value: str | None) -> None:
    got = inbound({} if value is None else {"x-request-id": value})
    assert got.replaced_request_id
    assert is_uuid4(got.request_id)
    assert got.request_id != value


def test_every_replacement_request_id_is_fresh() -> None:
    ids = {inbound({}).request_id for _ in range(5)}
    assert len(ids) == 5


def test_a_request_id_with_a_trailing_newline_is_replaced() -> None:
    got = inbound({"x-request-id": "abc\n"})
    assert got.replaced_request_id
    end = begin_request({"x-request-id": "abc\n"}, header_prefix="x-envoy", context_headers=())
    try:
        assert is_uuid4(dict(outbound_headers())["x-request-id"])
    finally:
        end()


def test_only_allowlisted_context_headers_are_kept() -> None:
    headers = {
        "x-team": "blue",
        "x-tenant": "acme",
        "authorization": "Bearer s3cret",
        "cookie": "session=1",
        "x-other": "no",
        "x-envoy-max-retries": "10",
    }
    got = inbound(headers, allow=("x-tenant", "x-team", "x-absent"))
    assert got.context_headers == (("x-tenant", "acme"), ("x-team", "blue"))


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\x00b", "acme\r\nx-envoy-max-retries: 10", "\u0101", "\u2603"])
def test_an_allowlisted_header_with_an_unsendable_value_is_dropped(value: str) -> None:
    got = inbound({"x-tenant": value, "x-team": "blue"}, allow=("x-tenant", "x-team"))
    assert got.context_headers == (("x-team", "blue"),)


def test_an_allowlisted_header_with_a_latin1_value_is_kept() -> None:
    got = inbound({"x-tenant": "caf\u00e9 \u00ff\tx"}, allow=("x-tenant",))
    assert got.context_headers == (("x-tenant", "caf\u00e9 \u00ff\tx"),)


# -- check_header_value -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["a\rb", "a\nb", "a\x00b", "\r\n", "tail\n", "\u0100", "\u2603", "\U0001f600", " lead", "trail\t"]
)
def test_check_header_value_refuses_unsendable_values_naming_the_header(value: str) -> None:
    with pytest.raises(ValueError, match="x-tenant"):
        check_header_value("x-tenant", value)


def test_check_header_value_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="x-tenant"):
        check_header_value("x-tenant", b"acme")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "acme", "a b\tc", "caf\u00e9", "\u00ff", "".join(map(chr, range(0x21, 0x7F)))])
def test_check_header_value_passes_ordinary_values(value: str) -> None:
    assert check_header_value("x-tenant", value) == value


# -- outbound_headers ---------------------------------------------------------------------------


def test_outside_a_request_each_call_gets_a_fresh_uuid4_request_id() -> None:
    first, second = outbound_headers(), outbound_headers()
    assert [name for name, _ in first] == ["x-request-id"]
    assert is_uuid4(first[0][1])
    assert is_uuid4(second[0][1])
    assert first[0][1] != second[0][1]


def test_inside_a_request_calls_carry_the_inbound_id_and_allowlisted_headers() -> None:
    headers = {"x-request-id": "req-1", "x-tenant": "acme", "cookie": "c=1", "x-forwarded-for": "1.2.3.4"}
    end = begin_request(headers, header_prefix="x-envoy", context_headers=("x-tenant",))
    try:
        assert mesh_client.current_request_id() == "req-1"
        out = outbound_headers()
        assert outbound_headers() == out  # the same for every call of the request
    finally:
        end()
    assert out == [("x-request-id", "req-1"), ("x-tenant", "acme")]
    assert mesh_client.current_request_id() is None
    assert is_uuid4(dict(outbound_headers())["x-request-id"])


def test_an_invalid_inbound_request_id_is_replaced_once_for_the_whole_request() -> None:
    end = begin_request({"x-request-id": "bad id"}, header_prefix="x-envoy", context_headers=())
    try:
        ids = {dict(outbound_headers())["x-request-id"] for _ in range(3)}
        current = mesh_client.current_request_id()
    finally:
        end()
    assert ids == {current}
    assert current is not None
    assert is_uuid4(current)


@pytest.mark.parametrize("value", ["acme\r\nx-envoy-max-retries: 10", "a\x00", "\u2603"])
def test_begin_request_drops_unsendable_context_values_so_calls_still_work(value: str) -> None:
    end = begin_request(
        {"x-request-id": "req-1", "x-tenant": value}, header_prefix="x-envoy", context_headers=("x-tenant",)
    )
    try:
        out = outbound_headers()
    finally:
        end()
    assert out == [("x-request-id", "req-1")]


@pytest.mark.parametrize("value", [" acme", "\tacme", "acme ", "acme\t"])
def test_inbound_context_values_with_surrounding_whitespace_do_not_break_calls(value: str) -> None:
    end = begin_request({"x-tenant": value}, header_prefix="x-envoy", context_headers=("x-tenant",))
    try:
        out = dict(outbound_headers())
    finally:
        end()
    assert out.get("x-tenant") in (None, "acme")


def test_the_outbound_call_continues_the_inbound_trace(otel: Otel) -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=value", "baggage": "k=v", "x-request-id": "req-1"}
    end = begin_request(headers, header_prefix="x-envoy", context_headers=())
    try:
        plain = dict(outbound_headers())
        telemetry = CallTelemetry("users", "GET")
        out = dict(outbound_headers(telemetry.propagation_context()))
        telemetry.span.end()
    finally:
        end()
    # without a client span, the inbound trace context itself goes on
    assert plain["traceparent"] == TRACEPARENT
    assert plain["tracestate"] == "vendor=value"
    assert plain["baggage"] == "k=v"
    # with the call's span, the same trace continues with that span as the parent
    version, trace_id, span_id, _flags = out["traceparent"].split("-")
    assert (version, trace_id) == ("00", TRACE_ID)
    assert span_id != PARENT_SPAN_ID
    [span] = otel.finished(int(TRACE_ID, 16))
    assert span.context is not None
    assert span.parent is not None
    assert format(span.context.span_id, "016x") == span_id
    assert format(span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert out["x-request-id"] == "req-1"
    # after the request, nothing of its trace remains
    assert "traceparent" not in dict(outbound_headers())


def test_a_server_span_already_active_is_kept_as_the_parent(otel: Otel) -> None:
    """An outer OpenTelemetry server instrumentation extracted the trace and started its span first."""
    from opentelemetry import trace

    with trace.get_tracer("test").start_as_current_span("server") as server:
        end = begin_request({"traceparent": TRACEPARENT}, header_prefix="x-envoy", context_headers=())
        try:
            out = dict(outbound_headers())
        finally:
            end()
    _version, trace_id, span_id, _flags = out["traceparent"].split("-")
    assert trace_id == format(server.get_span_context().trace_id, "032x")
    assert span_id == format(server.get_span_context().span_id, "016x")


def test_a_malformed_traceparent_starts_no_trace(otel: Otel) -> None:
    end = begin_request({"traceparent": "00-zz-00-01\r\n"}, header_prefix="x-envoy", context_headers=())
    try:
        out = dict(outbound_headers())
    finally:
        end()
    assert "traceparent" not in out


def test_nested_requests_restore_the_outer_one() -> None:
    end_outer = begin_request({"x-request-id": "outer"}, header_prefix="x-envoy", context_headers=())
    try:
        end_inner = begin_request({"x-request-id": "inner"}, header_prefix="x-envoy", context_headers=())
        try:
            assert mesh_client.current_request_id() == "inner"
        finally:
            end_inner()
        assert mesh_client.current_request_id() == "outer"
    finally:
        end_outer()


def test_an_inbound_timeout_only_shrinks_an_enclosing_deadline() -> None:
    with mesh_client.deadline(0.5):
        end = begin_request({"x-mesh-timeout-ms": "60000"}, header_prefix="x-envoy", context_headers=())
        try:
            inside = mesh_client.time_left()
        finally:
            end()
        after = mesh_client.time_left()
    assert inside is not None
    assert 0 < inside <= 0.5
    assert after is not None
    assert 0 < after <= 0.5


def test_a_call_started_inside_a_request_carries_its_context(mesh: Mesh, otel: Otel) -> None:
    headers = {"x-request-id": "req-1", "x-tenant": "acme", "traceparent": TRACEPARENT, "x-mesh-timeout-ms": "800"}
    end = begin_request(headers, header_prefix="x-envoy", context_headers=mesh.config.context_headers)
    try:
        run = mesh.start_call(mesh.config.services["users"], "get")
    finally:
        end()
    assert run.telemetry is not None
    run.telemetry.span.end()
    attempt = run.advance(None)
    assert isinstance(attempt, Attempt)
    assert attempt.route is Route.HAPROXY
    sent = dict(attempt.set_headers)
    assert sent["x-request-id"] == "req-1"
    assert sent["x-tenant"] == "acme"
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    assert 0 < int(sent["x-mesh-timeout-ms"]) <= 800  # the inbound deadline bounds the call
    # the app cannot send a second, conflicting copy of what the context sets
    assert attempt.drops("X-Request-Id")
    assert attempt.drops("x-tenant")
    assert attempt.drops("traceparent")


# -- outbound headers without an OpenTelemetry SDK ----------------------------------------------


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


# -- the registry's allowlist -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "kept"),
    [
        (["x-tenant"], ("x-tenant",)),
        (["X-Tenant", "x-team"], ("x-tenant", "x-team")),
        (["x-tenant", "X-TENANT"], ("x-tenant",)),
        (["authorization"], ("authorization",)),  # credentials: only by explicit opt-in
        (["Cookie"], ("cookie",)),
        (["x_tenant", "x.tenant", "baggage-ish"], ("x_tenant", "x.tenant", "baggage-ish")),
        ([], ()),
    ],
)
def test_the_registry_accepts_context_header_names_lower_cased(names: list[str], kept: tuple[str, ...]) -> None:
    assert mesh_config(context_headers=names).context_headers == kept


def test_no_context_headers_by_default() -> None:
    assert mesh_config().context_headers == ()


@pytest.mark.parametrize(
    "name",
    [
        "x-envoy-max-retries",
        "X-Envoy-Upstream-Rq-Timeout-Ms",
        "x-envoy-",
        "x-forwarded-for",
        "X-Forwarded-Proto",
        "forwarded",
        "host",
        "Host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "proxy-authorization",
        "x-request-id",
        "X-Request-ID",
        "grpc-timeout",
        "x-mesh-timeout-ms",
    ],
)
def test_the_registry_refuses_headers_that_must_never_be_forwarded(name: str) -> None:
    with pytest.raises(ConfigError, match=r"mesh\.context_headers"):
        mesh_config(context_headers=["x-tenant", name])


@pytest.mark.parametrize("name", ["", "x tenant", "x-tenant:", "x:tenant", "x(t)", "x-t\u00e9nant", "x,y", 5, None])
def test_the_registry_refuses_invalid_header_names(name: object) -> None:
    with pytest.raises(ConfigError, match=r"mesh\.context_headers"):
        mesh_config(context_headers=[name])


@pytest.mark.parametrize("value", ["x-tenant", {"x-tenant": True}, 5])
def test_the_registry_refuses_a_context_headers_value_that_is_not_a_list(value: object) -> None:
    with pytest.raises(ConfigError, match=r"mesh\.context_headers"):
        mesh_config(context_headers=value)


def test_the_registry_refuses_a_header_name_with_a_trailing_newline() -> None:
    with pytest.raises(ConfigError, match=r"mesh\.context_headers"):
        mesh_config(context_headers=["x-tenant\n"])


@pytest.mark.parametrize("name", ["x-foo-max-retries", "X-Foo-Retry-On", "x-envoy-max-retries"])
def test_the_registry_refuses_control_headers_of_a_custom_prefix(name: str) -> None:
    with pytest.raises(ConfigError, match=r"mesh\.context_headers"):
        mesh_config(header_prefix="x-foo", context_headers=["x-tenant", name])
    assert mesh_config(header_prefix="x-foo", context_headers=["x-food"]).context_headers == ("x-food",)


# -- WSGI middleware ----------------------------------------------------------------------------


class StartResponse:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        self.calls.append((status, headers))
        return lambda data: None


def environ(**headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "wsgi.url_scheme": "http",
    }
    env.update({"HTTP_" + name.upper(): value for name, value in headers.items()})
    return env


def snapshot() -> dict[str, Any]:
    return {
        "left": mesh_client.time_left(),
        "id": mesh_client.current_request_id(),
        "out": outbound_headers(),
    }


INBOUND_WSGI = {"x_envoy_expected_rq_timeout_ms": "1500", "x_request_id": "req-1", "x_tenant": "acme"}


def assert_inbound_seen(seen: dict[str, Any]) -> None:
    assert seen["id"] == "req-1"
    assert seen["left"] is not None
    assert 1.0 < seen["left"] <= 1.5
    assert seen["out"] == [("x-request-id", "req-1"), ("x-tenant", "acme")]


def assert_outside() -> None:
    assert mesh_client.time_left() is None
    assert mesh_client.current_request_id() is None


def test_wsgi_app_sees_the_inbound_context_and_it_ends_with_the_response(mesh: Mesh) -> None:
    seen: list[dict[str, Any]] = []

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(snapshot())
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    start = StartResponse()
    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(environ(**INBOUND_WSGI), start)
    assert_outside()  # the server's own context is never touched
    body = b"".join(result)
    result.close()  # type: ignore[attr-defined]
    assert body == b"ok"
    assert start.calls == [("200 OK", [("content-type", "text/plain")])]
    assert_inbound_seen(seen[0])
    assert_outside()


def test_wsgi_streaming_response_sees_the_context_on_every_chunk(mesh: Mesh) -> None:
    seen: list[dict[str, Any]] = []

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            for i in range(3):
                seen.append(snapshot())
                yield b"chunk%d" % i
        finally:
            seen.append(snapshot())  # runs on close(): still inside the request

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(environ(**INBOUND_WSGI), StartResponse())
    chunks = []
    for chunk in result:
        chunks.append(chunk)
        assert_outside()  # between chunks, the server's context is untouched
    result.close()  # type: ignore[attr-defined]
    assert chunks == [b"chunk0", b"chunk1", b"chunk2"]
    assert len(seen) == 4
    for each in seen:
        assert_inbound_seen(each)
    assert_outside()


def test_wsgi_close_mid_stream_ends_the_request(mesh: Mesh) -> None:
    seen: list[dict[str, Any]] = []

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        try:
            yield b"a"
            yield b"b"
        finally:
            seen.append(snapshot())

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(environ(**INBOUND_WSGI), StartResponse())
    assert next(iter(result)) == b"a"
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]  # a second close is harmless
    assert len(seen) == 1
    assert_inbound_seen(seen[0])
    assert_outside()


def test_wsgi_app_exception_propagates_and_the_context_is_restored(mesh: Mesh) -> None:
    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        assert mesh_client.current_request_id() == "req-1"
        raise RuntimeError("app broke")

    with pytest.raises(RuntimeError, match="app broke"):
        mesh_client.wsgi.MeshMiddleware(app, mesh)(environ(**INBOUND_WSGI), StartResponse())
    assert_outside()


def test_wsgi_exception_mid_stream_propagates_and_the_context_is_restored(mesh: Mesh) -> None:
    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        raise RuntimeError("stream broke")

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(environ(**INBOUND_WSGI), StartResponse())
    with pytest.raises(RuntimeError, match="stream broke"):
        list(result)
    result.close()  # type: ignore[attr-defined]
    assert_outside()


def test_wsgi_nothing_leaks_when_the_server_never_calls_close(mesh: Mesh) -> None:
    def first(env: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    seen: list[dict[str, Any]] = []

    def second(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(snapshot())
        start_response("200 OK", [])
        return [b""]

    result = mesh_client.wsgi.MeshMiddleware(first, mesh)(environ(**INBOUND_WSGI), StartResponse())
    assert next(iter(result)) == b"a"
    del result  # abandoned: neither exhausted nor closed
    assert_outside()
    # the next request in the same thread starts clean: no deadline, its own id
    result2 = mesh_client.wsgi.MeshMiddleware(second, mesh)(environ(x_request_id="req-2"), StartResponse())
    list(result2)
    result2.close()  # type: ignore[attr-defined]
    assert seen[0]["left"] is None
    assert seen[0]["id"] == "req-2"
    assert seen[0]["out"] == [("x-request-id", "req-2")]
    assert_outside()


def test_wsgi_invalid_inbound_request_id_is_replaced(mesh: Mesh) -> None:
    seen: list[dict[str, Any]] = []

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(snapshot())
        start_response("200 OK", [])
        return []

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(
        environ(x_request_id="a b\r\n", x_tenant="\u2603", grpc_timeout="bogus"), StartResponse()
    )
    result.close()  # type: ignore[attr-defined]
    assert is_uuid4(seen[0]["id"])
    assert seen[0]["out"] == [("x-request-id", seen[0]["id"])]
    assert seen[0]["left"] is None


# -- ASGI middleware ----------------------------------------------------------------------------


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Sent:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)


INBOUND_ASGI = [
    (b"X-Envoy-Expected-Rq-Timeout-Ms", b"1500"),
    (b"x-request-id", b"req-1"),
    (b"x-tenant", b"acme"),
    (b"authorization", b"Bearer s3cret"),
]


def scope(headers: Any, kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "asgi": {"version": "3.0"}, "method": "GET", "path": "/", "headers": headers}


async def seen_by_asgi_app(
    mesh: Mesh, sc: dict[str, Any], fail: BaseException | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the middleware in this task; return what the app saw and what the task sees after."""
    seen: dict[str, Any] = {}

    async def app(s: Any, r: Any, send: Any) -> None:
        await asyncio.sleep(0)  # let the loop run: the context must survive a suspension
        seen.update(snapshot())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if fail is not None:
            raise fail

    try:
        await mesh_client.asgi.MeshMiddleware(app, mesh)(sc, receive, Sent())
    except Exception as exc:
        if exc is not fail:
            raise
    return seen, {"left": mesh_client.time_left(), "id": mesh_client.current_request_id()}


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_asgi_app_sees_the_inbound_context_restored_after(mesh: Mesh, kind: str) -> None:
    seen, after = asyncio.run(seen_by_asgi_app(mesh, scope(INBOUND_ASGI, kind)))
    assert_inbound_seen(seen)
    assert after == {"left": None, "id": None}


def test_asgi_restores_the_tasks_own_deadline(mesh: Mesh) -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        with mesh_client.deadline(0.5):
            return await seen_by_asgi_app(mesh, scope(INBOUND_ASGI))

    seen, after = asyncio.run(main())
    assert seen["left"] is not None
    assert 0 < seen["left"] <= 0.5  # the inbound 1.5 s cannot lengthen the task's deadline
    assert after["left"] is not None
    assert 0 < after["left"] <= 0.5
    assert after["id"] is None


def test_asgi_app_exception_propagates_and_the_context_is_restored(mesh: Mesh) -> None:
    error = RuntimeError("app broke")
    seen, after = asyncio.run(seen_by_asgi_app(mesh, scope(INBOUND_ASGI), fail=error))
    assert_inbound_seen(seen)
    assert after == {"left": None, "id": None}

    async def app(s: Any, r: Any, send: Any) -> None:
        raise error

    with pytest.raises(RuntimeError, match="app broke"):
        asyncio.run(mesh_client.asgi.MeshMiddleware(app, mesh)(scope(INBOUND_ASGI), receive, Sent()))


def test_asgi_lifespan_scope_passes_through_untouched(mesh: Mesh) -> None:
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "headers": [(b"x-request-id", b"req-1")]}
    original = {**lifespan}
    send = Sent()
    got: dict[str, Any] = {}

    async def app(s: Any, r: Any, snd: Any) -> None:
        got.update(scope=s, receive=r, send=snd, id=mesh_client.current_request_id(), left=mesh_client.time_left())

    asyncio.run(mesh_client.asgi.MeshMiddleware(app, mesh)(lifespan, receive, send))
    assert got == {"scope": lifespan, "receive": receive, "send": send, "id": None, "left": None}
    assert got["scope"] is lifespan
    assert lifespan == original


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-request-id", b"\xff"), (b"x-tenant", b"\xff\x00"), (b"grpc-timeout", b"\xff")],
        [(b"\xff\xfe", b"\x80\x81"), (b"x-request-id", b"a\r\nb"), (b"x-tenant", b"\r\n")],
        [(b"x-request-id", "str-not-bytes"), (None, b"x"), (b"x-tenant", None)],
        [(bytearray(b"x-request-id"), bytearray(b"\x00"))],
        [],
        None,
    ],
)
def test_asgi_hostile_header_bytes_never_crash_it(mesh: Mesh, headers: Any) -> None:
    seen, after = asyncio.run(seen_by_asgi_app(mesh, scope(headers)))
    assert is_uuid4(seen["id"])
    assert seen["left"] is None
    for name, value in seen["out"]:
        check_header_value(name, value)
    assert dict(seen["out"])["x-request-id"] == seen["id"]
    assert after == {"left": None, "id": None}


def test_asgi_latin1_context_value_is_kept(mesh: Mesh) -> None:
    seen, _ = asyncio.run(seen_by_asgi_app(mesh, scope([(b"X-Tenant", b"caf\xe9"), (b"x-request-id", b"r")])))
    assert seen["out"] == [("x-request-id", "r"), ("x-tenant", "caf\u00e9")]


def test_asgi_a_header_entry_that_is_not_a_pair_is_ignored(mesh: Mesh) -> None:
    seen, _ = asyncio.run(seen_by_asgi_app(mesh, scope([(b"x-request-id", b"r", b"extra"), (b"x-tenant",)])))
    assert is_uuid4(seen["id"])


# -- properties: nothing an inbound caller sends escapes the boundary ---------------------------

INTERESTING_NAMES = [
    "x-request-id",
    "x-mesh-shadow",
    "traceparent",
    "tracestate",
    "baggage",
    "grpc-timeout",
    "x-envoy-expected-rq-timeout-ms",
    "x-mesh-timeout-ms",
    "x-envoy-max-retries",
    "x-forwarded-for",
    "authorization",
    "cookie",
    "host",
    "connection",
    "x-tenant",
]
INTERESTING_VALUES = [
    TRACEPARENT,
    f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01\r\nx-envoy-max-retries: 9",
    "vendor=value",
    "k=v,k2=v%0D%0A2",
    "k=\r\n",
    "1500",
    "0",
    "2S",
    "0S",
    "acme",
    "",
]
printable_ascii = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=201)
# request ids on both sides of the 1-200 printable ASCII rule, and valid ones spoilt at either end


def request_id_strategy(text: st.SearchStrategy[str], spoilers: list[str]) -> st.SearchStrategy[str]:
    """Request ids on both sides of the 1-200 printable ASCII rule, and valid ones spoilt at either end."""
    return st.one_of(
        printable_ascii,
        text,
        st.sampled_from(["", "a" * 200, "a" * 201, "req 1"]),
        printable_ascii.map(lambda body: body + "\n"),  # what a regex ending in '$' lets through
        st.builds(
            lambda body, bad, at_end: body + bad if at_end else bad + body,
            printable_ascii,
            st.sampled_from(spoilers),
            st.booleans(),
        ),
    )


SPOILERS = ["\n", "\r", "\r\n", "\x00", " ", "\t", "\u00e9"]
request_ids = request_id_strategy(st.text(), [*SPOILERS, "\u2603"])
header_values = st.one_of(st.text(), st.sampled_from(INTERESTING_VALUES), printable_ascii)


def inbound_header_dicts(
    names: st.SearchStrategy[str], values: st.SearchStrategy[str], ids: st.SearchStrategy[str] = request_ids
) -> st.SearchStrategy[dict[str, str]]:
    """Each interesting name present half of the time, plus arbitrary other headers."""
    optional = {n: ids if n == "x-request-id" else values for n in INTERESTING_NAMES}
    interesting = st.fixed_dictionaries({}, optional=optional)
    others = st.dictionaries(names, values, max_size=6)
    return st.builds(lambda fixed, extra: {**extra, **fixed}, interesting, others)


def assert_outbound_within_the_boundary(out: list[tuple[str, str]], headers: dict[str, str]) -> None:
    """``headers``: the inbound headers as the middleware saw them (lower-case names)."""
    # a request that is itself a shadow copy passes the marker on (spec: copies carry x-mesh-shadow: 1)
    shadow_in = bool(headers.get("x-mesh-shadow", "").strip())
    for name, value in out:
        if name == "x-mesh-shadow":
            assert shadow_in, "a shadow marker out without one in"
            assert value == "1", value
            continue
        check_header_value(name, value)
        assert name == "x-request-id" or name not in NEVER_FORWARDED, name
        assert not name.startswith(("x-envoy-", "x-forwarded-")), name
        assert name not in ("authorization", "cookie"), name
    names = [name for name, _ in out]
    assert names.count("x-request-id") == 1
    assert set(names) <= {"x-request-id", "x-tenant", "traceparent", "tracestate", "baggage", "x-mesh-shadow"}
    assert ("x-mesh-shadow" in names) == shadow_in
    request_id = dict(out)["x-request-id"]
    inbound_id = headers.get("x-request-id")
    if is_valid_request_id(inbound_id):
        assert request_id == inbound_id
    else:
        assert is_uuid4(request_id)
    # the allowlisted value goes on with blanks trimmed, unless nothing usable is left
    tenant = (headers.get("x-tenant") or "").strip(" \t")
    try:
        expected_tenant = check_header_value("x-tenant", tenant) if tenant else None
    except ValueError:
        expected_tenant = None
    assert dict(out).get("x-tenant") == expected_tenant


@settings(max_examples=200, deadline=None)
@given(headers=inbound_header_dicts(st.text(min_size=1, max_size=30), header_values))
def test_property_wsgi_outbound_headers_stay_within_the_boundary(
    mesh: Mesh, otel_session: Otel, headers: dict[str, str]
) -> None:
    env = environ()
    for name, value in headers.items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    seen_headers = {key[5:].lower().replace("_", "-"): v for key, v in env.items() if key.startswith("HTTP_")}
    out: list[list[tuple[str, str]]] = []

    def app(e: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        out.append(outbound_headers())
        start_response("200 OK", [])
        return [b"ok"]

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(env, StartResponse())
    assert list(result) == [b"ok"]
    result.close()  # type: ignore[attr-defined]
    assert_outbound_within_the_boundary(out[0], seen_headers)
    assert_outside()


def is_latin1(text: str) -> bool:
    return all(ord(c) <= 0xFF for c in text)


latin1_text = st.text(st.characters(max_codepoint=0xFF))


@st.composite
def random_case(draw: st.DrawFn, names: st.SearchStrategy[str]) -> str:
    """``names`` with some letters upper-cased (only where that keeps the name latin-1)."""
    name = draw(names)
    mask = draw(st.integers(min_value=0, max_value=(1 << len(name)) - 1))
    return "".join(c.upper() if mask >> i & 1 and is_latin1(c.upper()) else c for i, c in enumerate(name))


@st.composite
def asgi_header_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Header pairs as an ASGI server hands them over: any case, any order, duplicates allowed."""
    values = st.one_of(latin1_text, st.sampled_from(INTERESTING_VALUES), printable_ascii)
    names = st.text(st.characters(max_codepoint=0xFF), min_size=1, max_size=30)
    headers = draw(inbound_header_dicts(names, values, request_id_strategy(latin1_text, SPOILERS)))
    pairs = [(draw(random_case(st.just(name))), value) for name, value in headers.items()]
    pairs += draw(st.lists(st.tuples(st.sampled_from(INTERESTING_NAMES), values), max_size=3))  # duplicates
    return draw(st.permutations(pairs))


@settings(max_examples=200, deadline=None)
@given(pairs=asgi_header_pairs())
def test_property_asgi_outbound_headers_stay_within_the_boundary(
    mesh: Mesh, otel_session: Otel, pairs: list[tuple[str, str]]
) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    seen_headers: dict[str, str] = {}
    for name, value in pairs:  # the last of duplicates wins, but trace context fields are joined
        lower = name.lower()
        joined = lower in ("traceparent", "tracestate", "baggage") and lower in seen_headers
        seen_headers[lower] = f"{seen_headers[lower]},{value}" if joined else value
    seen, after = asyncio.run(seen_by_asgi_app(mesh, scope(raw)))
    assert_outbound_within_the_boundary(seen["out"], seen_headers)
    assert after == {"left": None, "id": None}


# -- properties: what a caller sets never reaches the proxy -------------------------------------


def attempts() -> list[Attempt]:
    found = []
    for cfg in (mesh_config(), mesh_config(header_prefix="x-foo", context_headers=["x-tenant"])):
        for route in Route:
            svc = cfg.services["users"]
            run: CallRun[Any] = CallRun(ServicePlan.of(cfg, svc), "GET", svc.policy, route, "test")
            attempt = run.advance(None)
            assert isinstance(attempt, Attempt)
            found.append(attempt)
    return found


ATTEMPTS = attempts()
HOP_BY_HOP = [
    "forwarded",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "x-mesh-timeout-ms",
]
dropped_names = random_case(
    st.one_of(
        st.sampled_from(HOP_BY_HOP),
        st.builds(lambda p, s: p + s, st.sampled_from(["x-envoy-", "x-forwarded-"]), st.text(max_size=20)),
    )
)


@settings(max_examples=200, deadline=None)
@given(name=dropped_names)
def test_property_caller_set_proxy_and_hop_by_hop_headers_are_dropped(name: str) -> None:
    for attempt in ATTEMPTS:
        assert attempt.drops(name), (attempt.route, name)


def test_ordinary_caller_headers_are_not_dropped() -> None:
    for attempt in ATTEMPTS:
        for name in ("accept", "content-type", "x-tenant-id", "authorization", "x-envoyish", "proxy"):
            assert not attempt.drops(name), (attempt.route, name)


def test_the_custom_prefix_control_headers_are_dropped_too() -> None:
    custom = [a for a in ATTEMPTS if a.drop_prefixes[0] == "x-foo-"]
    assert len(custom) == 2
    for attempt in custom:
        assert attempt.drops("X-Foo-Max-Retries")


@settings(max_examples=200, deadline=None)
@given(name=random_case(st.builds(lambda s: "proxy-" + s, st.text(min_size=1, max_size=20))))
def test_property_every_caller_set_proxy_header_is_dropped(name: str) -> None:
    for attempt in ATTEMPTS:
        assert attempt.drops(name), (attempt.route, name)


# -- the CompositePropagator seam (mesh_client._compat.otel.propagators_of) ------------------------


@pytest.mark.parametrize("seam", ["private", "fallback"])
def test_outbound_headers_are_the_same_whether_or_not_the_propagator_seam_is_used(
    seam: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    import mesh_client.context as context_module
    from mesh_client._compat import otel as otel_compat

    if seam == "fallback":
        monkeypatch.setattr(otel_compat, "_COMPOSITE_PARTS", False)
    monkeypatch.setattr(context_module, "_default_textmap", (None, False))  # the textmap is checked again
    names = [name for name, _ in context_module.outbound_headers()]
    assert names == ["x-request-id"]
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1)))
    with trace.use_span(span):
        sent = dict(context_module.outbound_headers())
    assert sent["traceparent"] == f"00-{0x1234:032x}-{0x5678:016x}-01"


def test_the_propagator_seam_names_the_default_propagators_or_says_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from mesh_client._compat import otel as otel_compat

    parts = [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    composite = CompositePropagator(parts)
    if not otel_compat._COMPOSITE_PARTS:  # (the compat-fallback job)
        assert otel_compat.propagators_of(composite) is None
        return
    assert otel_compat.propagators_of(composite) == parts
    assert otel_compat.propagators_of(parts[0]) == [parts[0]]
    monkeypatch.setattr(otel_compat, "_COMPOSITE_PARTS", False)
    assert otel_compat.propagators_of(composite) is None
    assert otel_compat.propagators_of(parts[0]) == [parts[0]]


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


def test_request_ids_spread_over_every_variant_digit_and_keep_122_random_bits() -> None:
    from collections import Counter

    from mesh_client.context import new_request_id

    ids = [new_request_id() for _ in range(8000)]
    variants = Counter(value[19] for value in ids)
    assert set(variants) == set("89ab")
    assert all(1700 <= count <= 2300 for count in variants.values()), variants  # 2000 each, ±7 sigma
    # every one of the other 30 hex digits takes all 16 values (no digit is fixed or narrowed)
    digits = [value.replace("-", "") for value in ids]
    for position in set(range(32)) - {12, 16}:
        assert len({text[position] for text in digits}) == 16, position
