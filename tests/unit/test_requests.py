"""The requests wrapper (``mesh.requests_session()``), without a network: which URLs it takes,
and each attempt as it leaves the adapter (URL, body, the caller's headers then the mesh's)."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from mesh_client import InvalidServiceURL, Mesh

# -- the session's cached URL parsing -------------------------------------------------------------


def test_requests_refuses_a_bad_service_url_on_every_call(plain_mesh: Mesh) -> None:
    with plain_mesh.requests_session() as session:
        for _ in range(2):
            with pytest.raises(InvalidServiceURL, match="port"):
                session.get("http://users:8080/x")
        assert session.get_adapter("http://users/x") is session.mesh_adapter
        assert isinstance(session.get_adapter("http://example.com/x"), requests.adapters.HTTPAdapter)
        assert session.get_adapter("http://example.com/x") is not session.mesh_adapter


# -- the requests attempt -------------------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False], ids=["headers-written-to-the-store", "headers-through-methods"])
def test_requests_attempts_keep_the_caller_headers_then_the_mesh_ones(
    plain_mesh: Mesh, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPResponse

    from mesh_client._compat import requests as compat_requests

    # the same request either way: the shortcuts, and the public paths for a requests whose
    # CaseInsensitiveDict keeps its items otherwise and whose PreparedRequest has other fields
    for probe in ("_HEADER_STORE", "_REQUEST_FIELDS"):
        monkeypatch.setattr(compat_requests, probe, direct and getattr(compat_requests, probe))

    sent: list[requests.PreparedRequest] = []

    def send(adapter: HTTPAdapter, request: requests.PreparedRequest, **_: Any) -> requests.Response:
        sent.append(request)
        raw = HTTPResponse(body=b"ok", headers={"content-length": "2"}, status=200, preload_content=False)
        response: requests.Response = adapter.build_response(request, raw)
        return response

    monkeypatch.setattr(HTTPAdapter, "send", send)
    with plain_mesh.requests_session() as session:
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
            assert r.request.headers["x-envoy-upstream-rq-timeout-ms"] == "1000"  # (timed from the start)
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
