"""The httpx wrappers (``mesh.httpx_client()``, ``httpx_transport()`` and their asyncio twins),
without a network: each attempt as it leaves the transport (URL, body, the caller's headers then
the mesh's), the attempt request copied from the caller's, failover, the response headers the core
reads, and the asyncio transport's deadline on a whole attempt."""

from __future__ import annotations

import httpx
import pytest

from mesh_client import Mesh, call_info
from mesh_client.http._httpx_attempt import header_dict

# -- the client's cached URL parsing --------------------------------------------------------------


def test_httpx_attempts_keep_the_caller_headers_in_order_then_the_mesh_ones(plain_mesh: Mesh) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"ok")

    with plain_mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
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


def test_the_headers_kept_encoded_are_the_same_every_call_and_the_request_id_is_not_kept(plain_mesh: Mesh) -> None:
    """Host and the policy headers go out encoded once (kept per value); each call's request id
    is made for it and never kept, so calls do not fill the cache of encoded headers."""
    from mesh_client.http import _httpx_attempt

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    _httpx_attempt._ENCODED_ITEMS.clear()
    with plain_mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
        for _ in range(50):
            client.get("http://users/a")
    ids = {request.headers["x-request-id"] for request in seen}
    assert len(ids) == 50  # a fresh one every call
    policy = {(k, v) for k, v in seen[0].headers.raw if k.lower().startswith(b"x-envoy-") or k == b"Host"}
    assert all(
        {(k, v) for k, v in r.headers.raw if k.lower().startswith(b"x-envoy-") or k == b"Host"} == policy for r in seen
    )
    kept = {name for name, _ in _httpx_attempt._ENCODED_ITEMS}
    assert kept == {"Host", "x-envoy-upstream-rq-timeout-ms", "x-envoy-retry-on", "x-envoy-max-retries"}


def test_each_caller_url_keeps_its_own_proxy_url(plain_mesh: Mesh) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    urls = ["http://users/a?x=1", "http://users/a?x=2", "http://users/a", "http://users/a?", "http://USERS./a?x=1"]
    with plain_mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
        for url in urls * 2:  # (the second time from the cache)
            client.get(url)
    expected = ["/a?x=1", "/a?x=2", "/a", "/a?", "/a?x=1"]
    assert seen == [f"http://127.0.0.1:9001{target}" for target in expected * 2]


def test_httpx_failover_sends_the_same_url_to_each_proxy(plain_mesh: Mesh) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.port == 9001:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    with plain_mesh.httpx_client(transport=httpx.MockTransport(handler)) as client:
        r = client.get("http://users/p?q=1")
    info = call_info(r)
    assert info is not None
    assert info.failed_over
    assert seen == ["http://127.0.0.1:9001/p?q=1", "http://127.0.0.1:20001/p?q=1"]


# -- the httpx attempt request, copied from the caller's ------------------------------------------


class TaggedRequest(httpx.Request):
    """A Request subclass: the transport makes its attempts with httpx's public constructor."""


def test_httpx_attempts_are_the_same_from_a_request_or_a_subclass(plain_mesh: Mesh) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=request.content)

    transport = plain_mesh.httpx_transport(httpx.MockTransport(handler))
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
