"""The seams of mesh_client._compat: with MESH_CLIENT_COMPAT_FALLBACK=1 every probe fails and the
public fallbacks carry the calls (``tox -e compat-fallback`` runs the unit tests so)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mesh_client._compat import FALLBACK_ENV, forced_fallback

FORCED_CHECK = """
from mesh_client._compat import otel
assert otel._METRICS_API is None, "metrics probe"
assert otel._TRACE_STATE_STORE is False, "trace state probe"
assert otel.tracing_is_noop() is False, "tracing assumed on"
assert otel.metrics_are_noop() is False, "metrics assumed on"
assert otel.no_sdk() is False, "an SDK assumed"
assert otel._SUPPRESS_HTTP_KEY is None, "suppression through the public function"
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
flags = (hx._HEADER_LIST, hx._REQUEST_STATE, hx._URL_PARTS, hx._PROXY_READER, hx._READ_TIMEOUT, hx._NETWORK_STREAM,
    hx._POOL_STATE)
assert flags == (False, False, False, None, False, False, False), flags
headers = httpx.Headers({"A": "b"})
assert hx.header_items(headers) == [(b"A", b"a", b"b")] and hx.header_items(headers) is not headers._list
assert hx.headers_of([(b"A", b"a", b"b")]) == headers
request = httpx.Request("POST", "http://a/", content=b"x")
copy = hx.copy_request(request, headers, url=httpx.URL("http://b/"))
assert (copy.url, copy.headers, copy.content) == (httpx.URL("http://b/"), headers, b"x")
assert copy.headers is not headers, "made by the constructor"
assert hx.url_parts(httpx.URL("http://a/x")) == ("http", "a", None, False, "http://a/x"), "the properties"
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
    check = "from mesh_client._compat import httpx as hx; print(hx._HEADER_LIST, hx._REQUEST_STATE, hx._URL_PARTS, "
    check += "hx._PROXY_READER is not None, hx._READ_TIMEOUT, hx._NETWORK_STREAM, hx._POOL_STATE)"
    done = run_python(check, "")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 7


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
