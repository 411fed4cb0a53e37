"""Mesh calls look to the caller as plain calls do (issue 13): ``r.request`` is the request as it
went out, to the caller's URL; requests' ``r.elapsed`` is the time to the answering attempt's
headers; a session's mounts do not take mesh calls out of the mesh."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from mesh_client import Mesh, call_info
from mesh_client.testing import Backend, FakeMesh, reply

pytestmark = pytest.mark.fake_mesh(assert_all_used=False)

#: the HAProxy route: what the upstream receives is what the client sent (no sidecar adds headers)
REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:15001"},
    "flags": {"source": "none"},
    "services": {"users": {"haproxy": "127.0.0.1:20001", "retries": 1, "retry_on": ["gateway-error"], "timeout": 2.0}},
}
#: the caller's headers: one that goes out, and two the mesh drops (an Envoy control header, hop-by-hop)
CALLER_HEADERS = {"X-Custom": "kept", "x-envoy-retry-on": "5xx", "Keep-Alive": "timeout=5"}


@pytest.fixture
def mesh(fake_mesh: FakeMesh) -> Mesh:
    return fake_mesh.mesh(REGISTRY)


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend("elsewhere") as server:
        yield server


def _names(headers: Any) -> set[str]:
    return {name.lower() for name in headers}


def _assert_shows_what_was_sent(request: Any, fake_mesh: FakeMesh) -> None:
    arrived = fake_mesh.last_call("users").headers
    assert str(request.url) == "http://users/list?q=1"
    assert request.headers["x-request-id"] == arrived["x-request-id"]
    assert request.headers["X-Custom"] == "kept"
    assert "x-envoy-retry-on" not in request.headers
    assert "keep-alive" not in _names(request.headers)
    assert _names(request.headers) - {"host"} <= _names(arrived)


# -- r.request: the headers as sent, the caller's URL ---------------------------------------------


def test_requests_response_shows_the_request_as_sent(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(200, text="ok"))
    r = mesh.requests_session().get("http://users/list?q=1", headers=CALLER_HEADERS)
    _assert_shows_what_was_sent(r.request, fake_mesh)
    assert r.request.path_url == "/list?q=1"


def test_httpx_response_shows_the_request_as_sent(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(200, text="ok"))
    with mesh.httpx_client() as client:
        r = client.get("http://users/list?q=1", headers=CALLER_HEADERS)
    _assert_shows_what_was_sent(r.request, fake_mesh)
    assert r.request.headers["host"] == "users"


def test_httpx_async_response_shows_the_request_as_sent(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(200, text="ok"))

    async def main() -> httpx.Response:
        async with mesh.httpx_async_client() as client:
            return await client.get("http://users/list?q=1", headers=CALLER_HEADERS)

    _assert_shows_what_was_sent(asyncio.run(main()).request, fake_mesh)


def test_a_streamed_httpx_response_shows_the_request_as_sent(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(200, text="ok"))
    with mesh.httpx_client() as client, client.stream("GET", "http://users/list?q=1", headers=CALLER_HEADERS) as r:
        _assert_shows_what_was_sent(r.request, fake_mesh)
        assert r.read() == b"ok"


def test_a_redirect_out_of_the_mesh_carries_nothing_the_mesh_added(
    mesh: Mesh, fake_mesh: FakeMesh, backend: Backend
) -> None:
    target = f"http://{backend.address}/moved?key=redirected"
    fake_mesh.add("users", reply(302, headers={"Location": target}))
    r = mesh.requests_session().get("http://users/list?q=1", headers=CALLER_HEADERS)
    with mesh.httpx_client(follow_redirects=True) as client:
        h = client.get("http://users/list?q=1", headers=CALLER_HEADERS)
    for response in (r, h):
        assert response.status_code == 200
        assert [str(each.request.url) for each in response.history] == ["http://users/list?q=1"]
        assert "x-request-id" in response.history[0].request.headers  # (as sent to the mesh)
    for record in backend.records("redirected"):
        assert "x-request-id" not in record.headers
        assert record.headers["x-custom"] == "kept"
    assert len(backend.records("redirected")) == 2


# -- requests' r.elapsed: sending the answering attempt to its headers ----------------------------


def test_requests_elapsed_is_the_answering_attempts_time_to_headers(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(503, delay=0.4), reply(200, text="ok", delay=0.1))
    r = mesh.requests_session().get("http://users/list")
    assert r.status_code == 200
    assert call_info(r).attempts == 2
    assert call_info(r).elapsed >= 0.5  # the whole call, both attempts
    assert 0.1 <= r.elapsed.total_seconds() < 0.2  # (virtual time: the fake's delay, not the test's)


def test_requests_elapsed_of_each_redirect_hop_is_its_own(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(302, headers={"Location": "/second"}, delay=0.3), path="/first")
    fake_mesh.add("users", reply(200, text="ok", delay=0.1), path="/second")
    r = mesh.requests_session().get("http://users/first")
    assert 0.3 <= r.history[0].elapsed.total_seconds() < 0.4
    assert 0.1 <= r.elapsed.total_seconds() < 0.2


# -- requests: a session's mounts never take a mesh call ------------------------------------------


class _Refusing(requests.adapters.BaseAdapter):
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        raise AssertionError(f"the mounted adapter was asked for {request.url}")

    def close(self) -> None:
        pass


def test_a_mounted_adapter_under_a_service_does_not_take_its_calls(
    mesh: Mesh, fake_mesh: FakeMesh, backend: Backend
) -> None:
    fake_mesh.add("users", reply(200, text="from the mesh"))
    session = mesh.requests_session()
    session.mount("http://users/v2/", _Refusing())
    session.mount(f"http://{backend.address}/", _Refusing())
    assert session.get("http://users/v2/list").text == "from the mesh"
    with pytest.raises(AssertionError, match="mounted adapter"):  # other hosts: as requests does
        session.get(f"http://{backend.address}/x")
