"""The HTTP mocking libraries with the mesh clients (docs/testing.md has the table): each one
answers and fails calls to other hosts made with a mesh client as it does for the library's own
client, its own exception reaching the caller unchanged (the same object: type and message), and
mesh calls made meanwhile go to ``fake_mesh``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import requests
import requests_mock
import responses
import respx
from pytest_httpx import HTTPXMock

from mesh_client import Mesh, MeshTimeoutError, MeshTransportError
from mesh_client.testing import FakeMesh, reply

REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:15001", "default_route": "envoy"},
    "flags": {"source": "none"},
    "services": {"users": {"haproxy": "127.0.0.1:20001"}},
}
OTHER = "http://api.example.com/items"
pytestmark = pytest.mark.fake_mesh(assert_all_used=False)


@pytest.fixture
def mesh(fake_mesh: FakeMesh) -> Mesh:
    fake_mesh.add("users", reply(200, text="from the mesh"))
    return fake_mesh.mesh(REGISTRY)


# -- requests: responses, requests-mock -----------------------------------------------------------


def test_responses_answers_other_hosts_beside_the_mesh(mesh: Mesh) -> None:
    session = mesh.requests_session()
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, OTHER, json={"mocked": True})
        assert session.get(OTHER).json() == {"mocked": True}
        assert session.get("http://users/u").text == "from the mesh"


def test_responses_own_exception_reaches_the_caller_unchanged(mesh: Mesh) -> None:
    error = requests.ConnectionError("the mock refuses")
    session = mesh.requests_session()
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, OTHER, body=error)
        with pytest.raises(requests.ConnectionError) as raised:
            session.get(OTHER)
        with pytest.raises(requests.ConnectionError, match=r"^Connection refused by Responses") as unmatched:
            session.get("http://api.example.com/not-mocked")
    assert raised.value is error
    assert type(unmatched.value) is requests.ConnectionError


def test_requests_mock_answers_other_hosts_and_mesh_calls_with_real_http(mesh: Mesh) -> None:
    session = mesh.requests_session()
    with requests_mock.Mocker(real_http=True) as mock:
        mock.get(OTHER, json={"mocked": True})
        assert session.get(OTHER).json() == {"mocked": True}
        assert session.get("http://users/u").text == "from the mesh"


def test_requests_mock_leaves_mesh_urls_to_the_mesh(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    # it replaces the adapter of every call a session sends; a mesh session keeps its mesh calls
    session = mesh.requests_session()
    with requests_mock.Mocker() as mock:
        mock.get(OTHER, json={"mocked": True})
        assert session.get("http://users/u").text == "from the mesh"
        assert session.get(OTHER).json() == {"mocked": True}
    assert [call.path for call in fake_mesh.calls] == ["/u"]


def test_requests_mock_own_exception_reaches_the_caller_unchanged(mesh: Mesh) -> None:
    error = requests.Timeout("the mock times out")
    session = mesh.requests_session()
    with requests_mock.Mocker() as mock:
        mock.get(OTHER, exc=error)
        with pytest.raises(requests.Timeout) as raised:
            session.get(OTHER)
        with pytest.raises(requests_mock.NoMockAddress):
            session.get("http://api.example.com/not-mocked")
    assert raised.value is error
    assert str(raised.value) == "the mock times out"


# -- httpx: respx, pytest-httpx --------------------------------------------------------------------


def test_respx_answers_other_hosts_beside_the_mesh(mesh: Mesh) -> None:
    with respx.mock, mesh.httpx_client() as client:
        respx.get(OTHER).mock(return_value=httpx.Response(200, json={"mocked": True}))
        assert client.get(OTHER).json() == {"mocked": True}
        assert client.get("http://users/u").text == "from the mesh"


def test_respx_own_exception_reaches_the_caller_unchanged(mesh: Mesh) -> None:
    error = httpx.ConnectError("the mock refuses")

    async def main() -> None:
        async with mesh.httpx_async_client() as client:
            with pytest.raises(httpx.ConnectError) as raised:
                await client.get(OTHER)
            assert raised.value is error

    with respx.mock:
        respx.get(OTHER).mock(side_effect=error)
        with mesh.httpx_client() as client, pytest.raises(httpx.ConnectError) as raised:
            client.get(OTHER)
        assert raised.value is error
        assert str(raised.value) == "the mock refuses"
        asyncio.run(main())


def test_pytest_httpx_answers_other_hosts_beside_the_mesh(mesh: Mesh, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url=OTHER, json={"mocked": True})
    with mesh.httpx_client() as client:
        assert client.get(OTHER).json() == {"mocked": True}
        assert client.get("http://users/u").text == "from the mesh"


def test_pytest_httpx_own_exception_reaches_the_caller_unchanged(mesh: Mesh, httpx_mock: HTTPXMock) -> None:
    error = httpx.ReadTimeout("the mock times out")
    httpx_mock.add_exception(error, url=OTHER, is_reusable=True)

    async def main() -> BaseException:
        async with mesh.httpx_async_client() as client:
            with pytest.raises(httpx.ReadTimeout) as raised:
                await client.get(OTHER)
            return raised.value

    with mesh.httpx_client() as client, pytest.raises(httpx.ReadTimeout) as raised:
        client.get(OTHER)
    assert raised.value is error
    assert str(raised.value) == "the mock times out"
    assert asyncio.run(main()) is error


def test_a_session_that_requests_mock_sent_with_keeps_its_mesh_calls_in_the_mesh(mesh: Mesh) -> None:
    session = mesh.requests_session()
    with requests_mock.Mocker() as mock:
        mock.get(OTHER, json={"mocked": True})
        assert session.get(OTHER).json() == {"mocked": True}
    with requests_mock.Mocker(session=session) as mock:  # (the instance's own send replaced)
        mock.get(OTHER, json={"again": True})
        assert session.get(OTHER).json() == {"again": True}
        assert session.get("http://users/u").text == "from the mesh"
    assert session.get("http://users/u").text == "from the mesh"


def test_a_mocks_message_on_a_mesh_call_reaches_the_caller() -> None:
    # without fake_mesh, a mesh call's attempts go through requests' HTTPAdapter, which responses
    # replaces: its refusal (no mock for the sidecar's address) is what the caller reads
    with Mesh.from_dict(REGISTRY) as mesh, responses.RequestsMock() as mock:
        with pytest.raises(requests.ConnectionError, match="Connection refused by Responses") as raised:
            mesh.requests_session().get("http://users/u")
        assert mock.calls  # (refused by the mock: nothing was sent)
    assert isinstance(raised.value, MeshTransportError)
    assert isinstance(raised.value.__cause__, requests.ConnectionError)
    assert "Connection refused by Responses" in str(raised.value.__cause__)


def test_respx_refusal_of_a_mesh_call_reaches_the_caller_unchanged() -> None:
    # without fake_mesh, respx sees the attempt to the sidecar's address, which it has no route for
    with Mesh.from_dict(REGISTRY) as mesh, respx.mock(assert_all_called=False):
        client = mesh.httpx_client()
        with pytest.raises(respx.models.AllMockedAssertionError, match="not mocked"):
            client.get("http://users/u")


def test_a_session_finds_requests_own_adapter_choice_through_its_class() -> None:
    # (not through the name requests.Session: the drop-in runs put a mesh session class there)
    with Mesh.from_dict(REGISTRY) as mesh, pytest.MonkeyPatch.context() as patch:
        session = mesh.requests_session()
        patch.setattr(requests, "Session", type(session))
        assert session.get_adapter("https://api.example.com/") is session.adapters["https://"]
        assert session.get_adapter("http://users/") is session.mesh_adapter


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_pytest_httpx_no_response_on_a_mesh_call_keeps_its_message(httpx_mock: HTTPXMock, route: str) -> None:
    # without fake_mesh, pytest-httpx sees the attempt to the sidecar, has no response for it and
    # raises a timeout at once: the mesh error says so, with the mock's message, not a timeout
    # that did not happen
    registry = {**REGISTRY, "mesh": {**REGISTRY["mesh"], "default_route": route}}
    with Mesh.from_dict(registry) as mesh, pytest.raises(httpx.TimeoutException) as raised:
        mesh.httpx_client().get("http://users/u")
    assert isinstance(raised.value, MeshTimeoutError)
    assert "No response can be found for GET request on http://127.0.0.1:" in str(raised.value)
    assert isinstance(raised.value.__cause__, httpx.TimeoutException)
    assert str(raised.value.__cause__).startswith("No response can be found")
    httpx_mock.reset()  # (the mock's own check of unexpected requests: this one was meant)
