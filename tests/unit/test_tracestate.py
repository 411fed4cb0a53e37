"""Inbound ``tracestate`` by the W3C Trace Context rules (the strict level of the W3C test suite).

The rules come from the specification's ``tracestate`` grammar (key = ( lcalpha / DIGIT ) 0*255
keychar, keychar including ``@``; value = 0*255 chr nblk-chr; at most 32 members; several fields
combined in order; duplicates may be dropped; an unparsable header may be dropped whole). The
middleware cases send what the W3C suite's strict tests send and check what a mesh call made while
handling the request would carry on (its attempt's headers: nothing goes on the network here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace

import mesh_client
from mesh_client import Mesh
from mesh_client._compat import forced_fallback
from mesh_client._compat import otel as compat_otel
from mesh_client.core import Attempt
from mesh_client.tracestate import MAX_MEMBERS, format_tracestate, parse_tracestate

from ..conftest import Otel

TRACE_ID = "12345678901234567890123456789012"
TRACEPARENT = f"00-{TRACE_ID}-1234567890123456-01"
KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_CHARS = "".join(map(chr, [*range(0x20, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)]))


# -- the grammar -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "members"),
    [
        ("foo=1,bar=2", [("foo", "1"), ("bar", "2")]),
        ("", []),
        (" , ,\t", []),  # empty and blank members are allowed, and skipped
        ("foo=1 \t , \t bar=2,\t \tbaz=3", [("foo", "1"), ("bar", "2"), ("baz", "3")]),  # optional whitespace
        ("\t foo=1 \t", [("foo", "1")]),
        ("foo= 1", [("foo", " 1")]),  # leading spaces are part of the value, trailing ones are not
        (f"{KEY_CHARS}={VALUE_CHARS}", [(KEY_CHARS, VALUE_CHARS)]),  # every allowed character
        (f"{KEY_CHARS}@a-z0-9_-*/=1", [(f"{KEY_CHARS}@a-z0-9_-*/", "1")]),
        ("0abc=1", [("0abc", "1")]),  # a key may start with a digit
        ("foo@=1,bar=2", [("foo@", "1"), ("bar", "2")]),  # "@" anywhere but first
        ("foo@@bar=1,foo@bar@baz=2", [("foo@@bar", "1"), ("foo@bar@baz", "2")]),
        ("z" * 256 + "=1", [("z" * 256, "1")]),  # keys of up to 256 characters
        ("t" * 242 + "@v=1,t@" + "v" * 15 + "=2", [("t" * 242 + "@v", "1"), ("t@" + "v" * 15, "2")]),
        ("k=" + "v" * 256, [("k", "v" * 256)]),  # values of up to 256 characters
        ("foo=1,foo=1", [("foo", "1")]),  # a repeated key: the first one is kept
        ("foo=1,bar=2,foo=3", [("foo", "1"), ("bar", "2")]),
        (",".join(f"k{i}={i}" for i in range(MAX_MEMBERS)), [(f"k{i}", str(i)) for i in range(MAX_MEMBERS)]),
    ],
)
def test_valid_headers_keep_their_members_in_order(header: str, members: list[tuple[str, str]]) -> None:
    assert parse_tracestate(header) == members


@pytest.mark.parametrize(
    "header",
    [
        "foo =1",  # a blank inside a member
        "FOO=1",  # upper case
        "foo.bar=1",
        "@foo=1,bar=2",  # "@" first: the whole header goes, bar with it
        "_foo=1",
        "z" * 257 + "=1,foo=1",  # a key too long
        "k=" + "v" * 257,  # a value too long
        "foo=,bar=3",  # an empty value
        "foo=bar=baz",  # "=" in a value
        "foo=a,b",  # a member without "="
        "foo=\x7f",  # outside printable ASCII
        "foo=1\x00",
        ",".join(f"k{i}={i}" for i in range(MAX_MEMBERS + 1)),  # 33 members
    ],
)
def test_an_unparsable_header_is_dropped_whole(header: str) -> None:
    assert parse_tracestate(header) is None


def test_formatting_sends_no_optional_whitespace() -> None:
    members = parse_tracestate(" a=1 ,\tb= 2 ")
    assert members is not None
    assert format_tracestate(members) == "a=1,b= 2"


# -- through the middleware -------------------------------------------------------------------------

MESH_DATA = {
    "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001"},
    "services": {"users": {"haproxy": "127.0.0.1:20001"}},
}


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with Mesh.from_dict(MESH_DATA) as m:
        yield m


def sent_headers(mesh: Mesh) -> dict[str, str]:
    """The context headers of a mesh call started now (its first attempt's)."""
    run = mesh.start_call(mesh.config.services["users"], "GET")
    attempt = run.advance(None)
    assert isinstance(attempt, Attempt)
    assert run.telemetry is not None
    run.telemetry.span.end()
    return {name.lower(): value for name, value in attempt.set_headers}


def via_wsgi(mesh: Mesh, fields: list[tuple[str, str]]) -> dict[str, str]:
    """What a call sends while handling a WSGI request with these header fields (joined by name with
    ",", as WSGI servers join repeated fields)."""
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    for name, value in fields:
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = f"{env[key]},{value}" if key in env else value
    seen: dict[str, str] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(sent_headers(mesh))
        start_response("200 OK", [])
        return [b""]

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(env, lambda *a: None)
    list(result)
    result.close()  # type: ignore[attr-defined]
    return seen


def via_asgi(mesh: Mesh, fields: list[tuple[str, str]]) -> dict[str, str]:
    """The same for an ASGI request: the server hands the fields over one by one."""
    seen: dict[str, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(sent_headers(mesh))

    scope = {"type": "http", "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]}

    async def nothing() -> dict[str, Any]:
        return {"type": "http.request"}

    async def sink(message: Any) -> None:
        return None

    asyncio.run(mesh_client.asgi.MeshMiddleware(app, mesh)(scope, nothing, sink))
    return seen


@pytest.fixture(params=["wsgi", "asgi"])
def handled(request: pytest.FixtureRequest, mesh: Mesh, otel: Otel) -> Any:
    kind = request.param
    return lambda *fields: (via_wsgi if kind == "wsgi" else via_asgi)(mesh, list(fields))


def continues(sent: dict[str, str]) -> bool:
    return sent["traceparent"].split("-")[1] == TRACE_ID


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # duplicated keys: kept once (the W3C suite accepts either of a repeated key's values)
        ([("tracestate", "foo=1,foo=1")], "foo=1"),
        ([("tracestate", "foo=1,foo=2")], "foo=1"),
        ([("tracestate", "foo=1"), ("tracestate", "foo=2")], "foo=1"),
        # keys the current grammar allows, which OpenTelemetry's parser alone drops
        ([("tracestate", "foo@=1,bar=2")], "foo@=1,bar=2"),
        ([("tracestate", "foo@@bar=1,bar=2")], "foo@@bar=1,bar=2"),
        ([("tracestate", "foo@bar@baz=1,bar=2")], "foo@bar@baz=1,bar=2"),
        ([("tracestate", "foo=1"), ("tracestate", "t" * 242 + "@v=1")], "foo=1," + "t" * 242 + "@v=1"),
        ([("tracestate", "foo=1"), ("tracestate", "t@" + "v" * 15 + "=1")], "foo=1,t@" + "v" * 15 + "=1"),
        ([("tracestate", "foo=1"), ("tracestate", "z" * 256 + "=1")], "foo=1," + "z" * 256 + "=1"),
        # several fields are one list, in order; empty fields are nothing
        (
            [("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")],
            "foo=1,bar=2,rojo=1,congo=2,baz=3",
        ),
        ([("tracestate", ""), ("tracestate", "foo=1")], "foo=1"),
        ([("TraceState", "foo=1")], "foo=1"),
        ([("tracestate", "\t foo=1 \t")], "foo=1"),
    ],
)
def test_the_inbound_tracestate_goes_on_by_the_w3c_rules(
    handled: Any, fields: list[tuple[str, str]], expected: str
) -> None:
    sent = handled(("traceparent", TRACEPARENT), *fields)
    assert continues(sent)
    assert sent["tracestate"] == (opentelemetry_keeps(expected) if forced_fallback() else expected)


def opentelemetry_keeps(header: str) -> str:
    """The compat fallback's answer (MESH_CLIENT_COMPAT_FALLBACK=1): the members OpenTelemetry's
    own ``TraceState`` constructor accepts (its older key grammar)."""
    return trace.TraceState([tuple(member.split("=", 1)) for member in header.split(",")]).to_header()  # type: ignore[misc]


@pytest.mark.parametrize(
    "fields",
    [
        [("tracestate", "@foo=1,bar=2")],
        [("tracestate", "foo=,bar=3")],
        [("tracestate", "foo=bar=baz")],
        [("tracestate", "FOO=1")],
        [("tracestate", "foo=1"), ("tracestate", "z" * 257 + "=1")],
        [("tracestate", ",".join(f"bar{i:02}={i:02}" for i in range(1, 34)))],
        [("trace-state", "foo=1")],  # not the header's name
    ],
)
def test_an_invalid_tracestate_is_not_passed_on(handled: Any, fields: list[tuple[str, str]]) -> None:
    sent = handled(("traceparent", TRACEPARENT), *fields)
    assert continues(sent)  # a bad tracestate never affects the traceparent
    assert "tracestate" not in sent


def test_no_tracestate_without_a_valid_traceparent(handled: Any) -> None:
    for fields in ([], [("traceparent", "00-" + "0" * 32 + "-1234567890123456-01")]):
        sent = handled(*fields, ("tracestate", "foo=1,bar=2"))
        assert not continues(sent)  # a new trace
        assert "tracestate" not in sent


def test_two_traceparent_fields_start_a_new_trace(handled: Any) -> None:
    other = f"00-{TRACE_ID[:-1]}1-1234567890123456-01"
    sent = handled(("traceparent", other), ("traceparent", TRACEPARENT), ("tracestate", "foo=1"))
    assert sent["traceparent"].split("-")[1] not in (TRACE_ID, TRACE_ID[:-1] + "1")
    assert "tracestate" not in sent


def test_the_trace_state_keeps_members_only_when_opentelemetry_stores_them_as_probed(
    handled: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback (a TraceState that keeps its entries otherwise): OpenTelemetry's own
    constructor, which keeps the members its older key grammar accepts; duplicates still go."""
    assert compat_otel._probe_trace_state_store() != forced_fallback()  # the installed API, as probed
    monkeypatch.setattr(compat_otel, "_TRACE_STATE_STORE", False)
    sent = handled(("traceparent", TRACEPARENT), ("tracestate", "foo=1,foo@@bar=2,bar=3,foo=4"))
    assert sent["tracestate"] == "foo=1,bar=3"
