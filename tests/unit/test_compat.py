"""The seams of mesh_client._compat: with MESH_CLIENT_COMPAT_FALLBACK=1 every probe fails and the
public fallbacks carry the calls (``tox -e compat-fallback`` runs the unit tests so)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests
import thriftpy2.thrift
import thriftpy2.transport
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import rewind_body

from mesh_client._compat import FALLBACK_ENV, forced_fallback
from mesh_client._compat import httpx as httpx_compat
from mesh_client._compat import requests as compat_requests
from mesh_client._compat import thriftpy2 as tp
from mesh_client.http._env_proxies import environment_proxies
from mesh_client.thrift import pool

from .compat_seams import PATHS, use_path

FORCED_CHECK = """
from mesh_client._compat import otel
assert otel._METRICS_API is None, "metrics probe"
assert otel._TRACE_STATE_STORE is False, "trace state probe"
assert otel.tracing_is_noop() is False, "tracing assumed on"
assert otel.metrics_are_noop() is False, "metrics assumed on"
assert otel.no_sdk() is False, "an SDK assumed"
from opentelemetry import context as otel_context
assert otel.current_context is otel_context.get_current, "context read through the public API"
state = otel.trace_state([("a", "1"), ("b", "2")])
assert state.to_header() == "a=1,b=2", state.to_header()
from mesh_client._compat import thriftpy2 as tp
from mesh_client.thrift import pool, reading
assert tp._ARGS_TO_KWARGS is None, "args_to_kwargs probe"
assert tp.call_kwargs({1: (10, "id", True)}, 7) == {"id": 7}
assert tp.memory_buffer_reusable() is False and pool._REUSABLE_BUFFER is False, "memory buffer probe"
assert tp._BUFFERED_CLEAN is False, "buffered transport probe"
assert tp.strict_reader(reading.pure_reader) is False, "strict reader probe"
assert reading.binary_reader is reading.pure_reader, "thrift reader"

import requests
from mesh_client._compat import requests as compat_requests
assert compat_requests._HEADER_STORE is False, "header store probe"
assert compat_requests._REQUEST_FIELDS is False, "request fields probe"
assert compat_requests._CONTENT_STORE is False, "content store probe"
assert compat_requests._INSTANCE_DICT is False, "instance dict probe"
caller = requests.structures.CaseInsensitiveDict({"A": "1", "b": "2"})
headers = compat_requests.copy_headers(caller, {"A": True, "b": True}, [("B", "3")])
assert list(headers.items()) == [("A", "1"), ("B", "3")], headers
request = requests.Request("GET", "http://h/", cookies={"c": "1"}).prepare()
assert compat_requests.attempt_copy(request)._cookies is not request._cookies, "the jar copied"

import httpx
from mesh_client._compat import httpx as hx
flags = (hx._HEADER_LIST, hx._REQUEST_STATE, hx._PROXY_READER, hx._READ_TIMEOUT, hx._NETWORK_STREAM, hx._POOL_STATE)
assert flags == (False, False, None, False, False, False), flags
headers = httpx.Headers({"A": "b"})
assert hx.header_items(headers) == [(b"A", b"a", b"b")] and hx.header_items(headers) is not headers._list
assert hx.headers_of([(b"A", b"a", b"b")]) == headers
request = httpx.Request("POST", "http://a/", content=b"x")
copy = hx.copy_request(request, headers, url=httpx.URL("http://b/"))
assert (copy.url, copy.headers, copy.content) == (httpx.URL("http://b/"), headers, b"x")
assert copy.headers is not headers, "made by the constructor"
assert hx.environment_proxies() is None, "the rules written here"
assert hx.forget_pool_connections(httpx.AsyncHTTPTransport()) is False, "nothing public for an async pool"
print("fallbacks in force")
"""


def run_python(code: str, value: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, FALLBACK_ENV: value}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_the_environment_variable_forces_every_fallback() -> None:
    done = run_python(FORCED_CHECK, "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fallbacks in force"


@pytest.mark.parametrize("value", ["", "0", "true"])
def test_only_the_value_1_forces_them(value: str) -> None:
    done = run_python("from mesh_client._compat import otel; print(otel._TRACE_STATE_STORE)", value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_without_the_variable_every_httpx_probe_succeeds() -> None:
    """(with the httpx and httpcore this is tested with: a failing one would be a changed internal)"""
    check = "from mesh_client._compat import httpx as hx; print(hx._HEADER_LIST, hx._REQUEST_STATE, "
    check += "hx._PROXY_READER is not None, hx._READ_TIMEOUT, hx._NETWORK_STREAM, hx._POOL_STATE)"
    done = run_python(check, "")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 6


def test_this_process_knows_which_mode_it_runs_in() -> None:
    assert forced_fallback() == (os.environ.get(FALLBACK_ENV) == "1")


def test_the_current_context_reader_follows_attach_and_detach() -> None:
    from opentelemetry import context as otel_context

    from mesh_client._compat import otel

    before = otel.current_context()
    assert before is otel_context.get_current()
    token = otel_context.attach(otel_context.set_value("mesh_client.test", 1))
    try:
        assert otel.current_context() is otel_context.get_current()
        assert otel.current_context().get("mesh_client.test") == 1
    finally:
        otel_context.detach(token)
    assert otel.current_context() is before
    # the fast reader where the probe holds, the public one where it is forced off
    assert (otel.current_context is otel_context.get_current) == forced_fallback()


# -- thriftpy2: each seam's fast path and fallback, in whichever mode this process runs ----------


def test_the_thriftpy2_probes_pass_on_this_thriftpy2_unless_forced() -> None:
    passing = not forced_fallback()
    assert (tp._probe_args_to_kwargs() is thriftpy2.thrift.args_to_kwargs) == passing
    assert tp._probe_memory_clean() == passing
    assert tp._probe_buffered_clean() == passing


@pytest.mark.parametrize("probed", [True, False], ids=["clean", "constructor again"])
def test_a_buffered_transport_is_emptied_either_way(probed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    class Inner(tp._Chunks):
        written = b""

        def write(self, data: bytes) -> None:
            self.written += bytes(data)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(tp, "_BUFFERED_CLEAN", probed)
    inner = Inner(b"abcd", b"wxyz")
    trans: Any = thriftpy2.transport.TBufferedTransport(inner)
    assert bytes(trans.read(1)) == b"a"
    trans.write(b"unsent")
    tp.clear_buffered(trans, inner)
    assert bytes(trans.read(2)) == b"wx"  # not the rest of the first chunk
    trans.write(b"reply")
    trans.flush()
    assert inner.written == b"reply"  # not what was dropped


@pytest.mark.parametrize("reusable", [True, False], ids=["clean", "new buffer"])
def test_the_thrift_client_writes_each_call_into_an_empty_buffer(
    reusable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "_REUSABLE_BUFFER", reusable)
    left, right = socket.socketpair()
    try:
        conn = pool.Connection(left, None)  # type: ignore[arg-type]
        first, proto = conn.writer()
        proto.write_message_begin("a", 1, 1)
        assert bytes(first.getvalue())
        second, _ = conn.writer()
        assert bytes(second.getvalue()) == b""
        assert (second is first) == reusable
    finally:
        left.close()
        right.close()


# -- requests (mesh_client._compat.requests) --------------------------------------------------------

#: each probe of the requests seams, and the flag its answer is kept in
REQUESTS_PROBES = {
    "_HEADER_STORE": compat_requests._probe_header_store,
    "_REQUEST_FIELDS": compat_requests._probe_request_fields,
    "_CONTENT_STORE": compat_requests._probe_content_store,
    "_INSTANCE_DICT": compat_requests._probe_instance_dict,
}


@pytest.fixture(params=[True, False], ids=["probed", "fallback"])
def seam(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test of a requests seam twice: through the internals (when the installed requests
    has them, in the compat-fallback job too) and through the public fallbacks."""
    fast: bool = request.param
    if fast:
        with monkeypatch.context() as unforced:
            unforced.setenv(FALLBACK_ENV, "0")
            if not all(probe() for probe in REQUESTS_PROBES.values()):
                pytest.skip("the installed requests keeps these otherwise")
    for flag in REQUESTS_PROBES:
        monkeypatch.setattr(compat_requests, flag, fast)
    return fast


@pytest.mark.parametrize("flag", list(REQUESTS_PROBES))
def test_each_requests_probe_passes_on_the_installed_requests_unless_forced(
    monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    probe = REQUESTS_PROBES[flag]
    assert getattr(compat_requests, flag) is not forced_fallback()  # (what this process probed at import)
    monkeypatch.setenv(FALLBACK_ENV, "0")
    assert probe() is True
    monkeypatch.setenv(FALLBACK_ENV, "1")
    assert probe() is False


def test_the_header_store_probe_fails_when_the_dictionary_keeps_its_items_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = CaseInsensitiveDict.__init__

    def elsewhere(self: CaseInsensitiveDict[str], data: object = None, **kwargs: str) -> None:
        original(self, data, **kwargs)
        self.__dict__["_items"] = self.__dict__.pop("_store")

    monkeypatch.setattr(CaseInsensitiveDict, "__init__", elsewhere)
    assert compat_requests._probe_header_store() is False


def test_the_request_fields_probe_fails_when_a_prepared_request_gets_a_new_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = requests.PreparedRequest.__init__

    def with_new_field(self: requests.PreparedRequest) -> None:
        original(self)
        self.__dict__["_new_field"] = object()

    monkeypatch.setattr(requests.PreparedRequest, "__init__", with_new_field)
    assert compat_requests._probe_request_fields() is False


def test_the_content_probe_fails_when_a_response_keeps_its_body_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = requests.Response.__init__

    def elsewhere(self: requests.Response) -> None:
        original(self)
        del self.__dict__["_content"]

    monkeypatch.setattr(requests.Response, "__init__", elsewhere)
    assert compat_requests._probe_content_store() is False


def test_copy_headers_keeps_the_callers_that_go_out_then_sets_the_attempts(seam: bool) -> None:
    caller: CaseInsensitiveDict[str] = CaseInsensitiveDict({"A": "1", "Drop": "x", "b": "2"})
    keep = {"A": True, "Drop": False, "b": True}
    headers = compat_requests.copy_headers(caller, keep, [("B", "3"), ("C", "4")])
    assert isinstance(headers, CaseInsensitiveDict)
    # the caller's order, a replaced header where it was, under the attempt's spelling
    assert list(headers.items()) == [("A", "1"), ("B", "3"), ("C", "4")]
    assert headers["b"] == "3"
    assert dict(headers.lower_items()) == {"a": "1", "b": "3", "c": "4"}
    assert list(caller.items()) == [("A", "1"), ("Drop", "x"), ("b", "2")]  # the caller's untouched
    headers["D"] = "5"
    assert "D" not in caller


def test_copy_headers_takes_headers_of_another_type_through_their_methods(seam: bool) -> None:
    headers = compat_requests.copy_headers({"A": "1", "Drop": "x"}, {"A": True, "Drop": False}, [("C", "4")])
    assert list(headers.items()) == [("A", "1"), ("C", "4")]


def prepared_request() -> requests.PreparedRequest:
    hooks: dict[str, list[Callable[..., object]]] = {"response": [lambda r, **_: r]}
    return requests.Request(
        "PUT", "http://users/a?x=1", headers={"X-One": "1"}, cookies={"sid": "1"}, data=io.BytesIO(b"body"), hooks=hooks
    ).prepare()


def test_attempt_copy_is_the_callers_request_with_its_cookie_jar(seam: bool) -> None:
    request = prepared_request()
    request.body.read(2)  # type: ignore[union-attr]  # (a file body, part read)
    copied = compat_requests.attempt_copy(request)
    assert copied is not request
    assert (copied.method, copied.url, copied.headers) == (request.method, request.url, request.headers)
    assert copied.body is request.body
    assert copied.hooks == request.hooks
    jar = copied._cookies  # type: ignore[attr-defined]
    assert jar.get_dict() == {"sid": "1"}
    assert (jar is request._cookies) is seam  # type: ignore[attr-defined]  # (the fallback copies the jar)
    # the body position kept: requests rewinds the body to it before a redirect sends it again
    rewind_body(copied)
    assert copied.body.read() == b"body"  # type: ignore[union-attr]
    # what a redirect or digest auth does with it: the requests' own copy, then its cookies
    again = copied.copy()
    again.prepare_cookies(again._cookies)  # type: ignore[attr-defined]
    assert again.headers["Cookie"] == "sid=1"


def answered(body: bytes, **headers: str) -> tuple[requests.Response, list[bytes]]:
    """A response read as the requests wrapper reads it (from ``raw``, in chunks, decoded)."""
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(body),
        headers={"content-length": str(len(body)), "content-type": "application/json; charset=utf-8", **headers},
        status=200,
        preload_content=False,
    )
    response = HTTPAdapter().build_response(requests.Request("GET", "http://users/a").prepare(), raw)
    chunks = []
    while chunk := raw.read(3, decode_content=True):
        chunks.append(chunk)
    return response, chunks


def test_keep_body_makes_the_chunks_read_the_responses_content(seam: bool) -> None:
    response, chunks = answered(b'{"a": 1}')
    raw = response.raw
    compat_requests.keep_body(response, chunks)
    assert response.raw is raw  # (the one cookies, the connection and the caller read)
    assert response.content == b'{"a": 1}'
    assert response.text == '{"a": 1}'
    assert response.json() == {"a": 1}
    assert b"".join(response.iter_content(2)) == b'{"a": 1}'
    assert pickle.loads(pickle.dumps(response)).content == b'{"a": 1}'


def test_keep_body_keeps_a_decoded_body_as_it_was_read(seam: bool) -> None:
    response, chunks = answered(gzip.compress(b"hello " * 100), **{"content-encoding": "gzip"})
    compat_requests.keep_body(response, chunks)
    assert response.content == b"hello " * 100


def test_keep_body_keeps_an_empty_body_as_empty(seam: bool) -> None:
    response, chunks = answered(b"")
    compat_requests.keep_body(response, chunks)
    assert response.content == b""
    assert list(response.iter_content(2)) == []


def test_a_note_on_a_response_is_read_once(seam: bool) -> None:
    response = requests.Response()
    compat_requests.note_on(response, "_mesh_client_test_note", 1.5)
    assert getattr(response, "_mesh_client_test_note") == 1.5  # noqa: B009 - (a name of our own, as set)
    assert compat_requests.take_from(response, "_mesh_client_test_note") == 1.5
    assert not hasattr(response, "_mesh_client_test_note")
    assert compat_requests.take_from(response, "_mesh_client_test_note") is None
    assert "_mesh_client_test_note" not in pickle.loads(pickle.dumps(response)).__dict__


# -- httpx and httpcore: each seam, on its probed path and on its fallback ----------------------------


@pytest.mark.parametrize("path", PATHS)
def test_header_items_are_httpx_own_on_both_paths(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    use_path(monkeypatch, "header list", path)
    headers = httpx.Headers([("X-One", "1"), ("x-one", "2"), (b"Caf\xe9", b"\xe9")])
    items = httpx_compat.header_items(headers)
    assert items == [(b"X-One", b"x-one", b"1"), (b"x-one", b"x-one", b"2"), (b"Caf\xe9", b"caf\xe9", b"\xe9")]
    made = httpx_compat.headers_of(items)
    assert (made.raw, made.get("x-ONE"), made.multi_items()) == (headers.raw, "1, 2", headers.multi_items())
    assert made == headers


@pytest.mark.parametrize("path", PATHS)
def test_a_copied_request_is_the_constructors_on_both_paths(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    probed = use_path(monkeypatch, "request state", path)
    request = httpx.Request("POST", "http://a/x", headers={"A": "b"}, content=b"body", extensions={"k": 1})
    before = (request.url, request.headers.raw, dict(request.extensions))
    headers = httpx.Headers({"C": "d"})
    copy = httpx_compat.copy_request(request, headers, url=httpx.URL("http://b:1/x"), extensions={"k": 2})
    assert type(copy) is httpx.Request
    assert (copy.method, copy.url, copy.headers, copy.extensions) == (
        "POST",
        httpx.URL("http://b:1/x"),
        headers,
        {"k": 2},
    )
    assert copy.content == b"body"
    assert (request.url, request.headers.raw, dict(request.extensions)) == before
    assert (copy.headers is headers) == probed  # (the constructor copies them)
    shown = httpx_compat.copy_request(request, headers)  # the URL and extensions kept
    assert (shown.url, shown.extensions, shown.content) == (request.url, request.extensions, b"body")


@pytest.mark.parametrize("path", PATHS)
def test_a_copied_request_keeps_an_unread_stream_unread(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    use_path(monkeypatch, "request state", path)
    request = httpx.Request("POST", "http://a/", content=iter([b"a", b"b"]))
    copy = httpx_compat.copy_request(request, request.headers)
    assert copy.stream is request.stream
    with pytest.raises(httpx.RequestNotRead):
        copy.content  # noqa: B018


class TaggedRequest(httpx.Request):
    """A subclass of Request: copied by the public constructor on both paths."""


@pytest.mark.parametrize("path", PATHS)
def test_a_subclass_of_request_is_copied_by_the_constructor(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    use_path(monkeypatch, "request state", path)
    request = TaggedRequest("GET", "http://a/")
    copy = httpx_compat.copy_request(request, httpx.Headers({"C": "d"}))
    assert type(copy) is httpx.Request
    assert copy.headers.raw == [(b"C", b"d")]


@pytest.mark.parametrize("path", PATHS)
def test_the_environment_proxies_are_the_same_on_both_paths(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    probed = use_path(monkeypatch, "proxy reader", path)
    monkeypatch.setenv("HTTP_PROXY", "http://p:1")
    monkeypatch.setenv("NO_PROXY", "example.com,10.0.0.1")
    expected = {"http://": "http://p:1", "all://*example.com": None, "all://10.0.0.1": None}
    assert httpx_compat.environment_proxies() == (expected if probed else None)
    assert environment_proxies() == expected


def _recorded_exchange() -> tuple[httpx.Response, httpx.Request, Any]:
    """A response (its 2-byte body not read yet) from an httpx transport over a recorded stream,
    its request (whose read timeout is 1 s) and the stream (see the probes)."""
    transport, stream = httpx_compat._recorded_transport()
    timeouts = {"connect": 1.0, "read": 1.0, "write": 1.0, "pool": 1.0}
    request = httpx.Request("GET", "http://127.0.0.1:1/", extensions={"timeout": timeouts})
    return transport.handle_request(request), request, stream


@pytest.mark.parametrize("path", PATHS)
def test_the_body_read_timeout_is_set_on_the_probed_path_only(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    probed = use_path(monkeypatch, "read timeout", path)
    response, request, stream = _recorded_exchange()
    httpx_compat.set_body_read_timeout(request, 0.25)
    assert response.read() == b"ok"
    assert stream.timeouts[-1] == (0.25 if probed else 1.0)  # (the fallback: the timeout it was sent with)
    assert request.extensions["timeout"]["read"] == (0.25 if probed else 1.0)


class Clock:
    """The time a body has left: ``seconds`` from now."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def left(self) -> float:
        return self.until - time.monotonic()

    def message(self) -> str:
        return "out of time"


@pytest.mark.parametrize("path", PATHS)
def test_each_read_is_bounded_on_the_probed_path_only(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    probed = use_path(monkeypatch, "network stream", path)
    response, _, stream = _recorded_exchange()
    lift = httpx_compat.bound_each_read(response, Clock(0.5))
    assert (lift is not None) == probed  # (the fallback needs a socket: see below)
    assert response.read() == b"ok"
    assert stream.timeouts[-1] == (pytest.approx(0.5, abs=0.1) if probed else 1.0)
    if lift is not None:
        assert lift() is False
        assert "read" not in vars(stream)  # the class's own reads again

    response, _, stream = _recorded_exchange()
    lift = httpx_compat.bound_each_read(response, Clock(0.0))
    if probed:
        with pytest.raises(httpx.ReadTimeout, match="out of time"):
            response.read()
        assert lift is not None
        assert lift() is False
    else:
        assert lift is None
        assert response.read() == b"ok"  # (the caller checks the time between chunks)


def test_an_http2_or_unknown_stream_is_not_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    use_path(monkeypatch, "network stream", "probed")
    response = httpx.Response(200, extensions={"http_version": b"HTTP/2", "network_stream": object()})
    assert httpx_compat.bound_each_read(response, Clock(1.0)) is None
    assert httpx_compat.bound_each_read(httpx.Response(200), Clock(1.0)) is None


@pytest.fixture
def stalled_body() -> Iterator[str]:
    """The URL of a server that sends a response's headers and 2 of its 10 body bytes, then nothing
    until the test is over."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
            done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        done.set()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_stalled_body_ends_when_the_time_is_up_on_both_paths(
    monkeypatch: pytest.MonkeyPatch, stalled_body: str, path: str
) -> None:
    """Probed: the bounded read times out. The fallback: the socket is shut down at the deadline,
    which ends the read, and the lift says the time ran out. Either way well before the request's
    own 10 s read timeout."""
    probed = use_path(monkeypatch, "network stream", path)
    transport = httpx.HTTPTransport()
    timeouts = {"connect": 10.0, "read": 10.0, "write": 10.0, "pool": 10.0}
    response = transport.handle_request(httpx.Request("GET", stalled_body, extensions={"timeout": timeouts}))
    started = time.monotonic()
    lift = httpx_compat.bound_each_read(response, Clock(0.2))
    assert lift is not None
    with pytest.raises(httpx.ReadTimeout if probed else httpx.RemoteProtocolError):
        response.read()
    assert lift() is not probed
    assert 0.15 < time.monotonic() - started < 5.0
    response.close()
    transport.close()


def test_a_bound_lifted_in_time_says_the_time_did_not_run_out(
    stalled_body: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_path(monkeypatch, "network stream", "fallback")
    with httpx.Client() as client, client.stream("GET", stalled_body) as response:
        lift = httpx_compat.bound_each_read(response, Clock(60.0))
        assert lift is not None
        assert lift() is False  # (its timer cancelled: the socket is left alone)
