"""The httpx and httpcore seams (``mesh_client._compat.httpx``): each probe and each fallback, in
whichever mode this process runs (``MESH_CLIENT_COMPAT_FALLBACK=1`` or not); the forced check of every
seam at once is in ``test_compat.py``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mesh_client._compat import httpx as httpx_compat
from mesh_client.http._env_proxies import environment_proxies

from .compat_seams import PATHS, use_path

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


URLS = [
    "http://users/x?a=1#f",
    "HTTP://Users.:80/x",
    "https://jo:pw@[::1]:8443/",
    "http://xn--fiqs8s.icom.museum/",
    "http://中国.icom.museum/",
    "http://a",
    "http://a/",
    "http://a/x?",
]


@pytest.mark.parametrize("path", PATHS)
def test_a_urls_parts_are_its_properties_on_both_paths(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    use_path(monkeypatch, "url parts", path)
    for text in URLS:
        url = httpx.URL(text)
        assert httpx_compat.url_parts(url)[:4] == (url.scheme, url.host, url.port, bool(url.userinfo)), text


@pytest.mark.parametrize("path", PATHS)
def test_a_urls_key_is_equal_for_equal_urls_only_on_both_paths(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    use_path(monkeypatch, "url parts", path)
    urls = [httpx.URL(text) for text in URLS]
    keys = [httpx_compat.url_parts(url)[4] for url in urls]
    for text, url, key in zip(URLS, urls, keys, strict=True):
        again = httpx_compat.url_parts(httpx.URL(text))[4]
        assert again == key, url
        assert hash(again) == hash(key), url
        assert [key == other for other in keys] == [url == other for other in urls], url


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
