"""Drop-in fidelity of the mesh clients on ordinary (non-mesh) URLs, and mesh calls kept in the
mesh whatever the client's mounts and proxies (issue 13): what httpx's and requests' own suites
found (tests/dropin runs those suites), checked here one by one."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mesh_client import Mesh
from mesh_client._compat import httpx as httpx_compat
from mesh_client.http._env_proxies import environment_proxies, parse_environment_proxies
from mesh_client.testing import Backend, FakeMesh, reply

REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:15001", "default_route": "envoy"},
    "flags": {"source": "none"},
    "services": {"users": {"haproxy": "127.0.0.1:20001"}},
}
pytestmark = pytest.mark.fake_mesh(assert_all_used=False)
PROXY_VARS = [name for kind in ("HTTP", "HTTPS", "ALL", "NO") for name in (f"{kind}_PROXY", f"{kind.lower()}_proxy")]


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mesh(fake_mesh: FakeMesh) -> Mesh:
    fake_mesh.add("users", reply(200, text="from the mesh"))
    return fake_mesh.mesh(REGISTRY)


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend("plain") as server:
        yield server


class Events:
    """What a transport of the caller's own saw."""

    def __init__(self) -> None:
        self.events: list[str] = []


class SyncTransport(httpx.BaseTransport, Events):
    def __init__(self) -> None:
        Events.__init__(self)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="own")

    def __enter__(self) -> SyncTransport:
        super().__enter__()
        self.events.append("enter")
        return self

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)
        self.events.append("exit")

    def close(self) -> None:
        self.events.append("close")


class AsyncTransport(httpx.AsyncBaseTransport, Events):
    def __init__(self) -> None:
        Events.__init__(self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="own")

    async def __aenter__(self) -> AsyncTransport:
        await super().__aenter__()
        self.events.append("enter")
        return self

    async def __aexit__(self, *args: Any) -> None:
        await super().__aexit__(*args)
        self.events.append("exit")

    async def aclose(self) -> None:
        self.events.append("close")


# -- (a) the wrapped transport is entered and exited with the client ----------------------------


def test_a_client_with_a_transport_of_its_own_enters_and_exits_it(mesh: Mesh) -> None:
    transport = SyncTransport()
    with mesh.httpx_client(transport=transport) as client:
        assert client.get("http://example.org/").text == "own"
    assert transport.events == ["enter", "close", "exit"]


def test_a_mesh_transport_used_directly_forwards_enter_and_exit(mesh: Mesh) -> None:
    transport = SyncTransport()
    with httpx.Client(transport=mesh.httpx_transport(transport)):
        pass
    assert transport.events == ["enter", "close", "exit"]


def test_an_async_client_with_a_transport_of_its_own_enters_and_exits_it(mesh: Mesh) -> None:
    transport = AsyncTransport()

    async def main() -> None:
        async with mesh.httpx_async_client(transport=transport) as client:
            assert (await client.get("http://example.org/")).text == "own"
        async with httpx.AsyncClient(transport=mesh.httpx_async_transport(transport)):
            pass

    asyncio.run(main())
    assert transport.events == ["enter", "close", "exit"] * 2


def test_a_mount_of_the_callers_is_entered_once(mesh: Mesh) -> None:
    mounted = SyncTransport()
    with mesh.httpx_client(mounts={"all://users": mounted, "http://example.org": SyncTransport()}):
        pass
    assert mounted.events == ["enter", "close", "exit"]


# -- (b) proxies from the environment for every other host ---------------------------------------


def test_a_proxy_from_the_environment_carries_other_hosts_and_mesh_calls_stay_in_the_mesh(
    mesh: Mesh, fake_mesh: FakeMesh, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://{backend.address}")
    with mesh.httpx_client() as client:
        assert client.get("http://elsewhere.example/page?key=proxied").status_code == 200
        assert client.get("http://users/list").text == "from the mesh"
    (seen,) = backend.records("proxied")
    assert seen.headers["host"] == "elsewhere.example"  # (a request for that host, sent to the proxy)
    assert [call.path for call in fake_mesh.calls] == ["/list"]


def test_no_proxy_sends_a_host_directly(mesh: Mesh, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with mesh.httpx_client() as client:
        assert client.get(f"http://{backend.address}/direct?key=direct").status_code == 200
    (seen,) = backend.records("direct")
    assert seen.headers["host"] == str(backend.address)


def test_an_async_client_uses_the_environments_proxy(
    mesh: Mesh, fake_mesh: FakeMesh, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", f"http://{backend.address}")

    async def main() -> tuple[int, str]:
        async with mesh.httpx_async_client() as client:
            other = await client.get("http://elsewhere.example/a?key=async-proxied")
            return other.status_code, (await client.get("http://users/list")).text

    assert asyncio.run(main()) == (200, "from the mesh")
    (seen,) = backend.records("async-proxied")
    assert seen.headers["host"] == "elsewhere.example"


@pytest.mark.parametrize("given", ["transport", "trust_env"])
def test_no_proxy_is_read_with_a_transport_given_or_trust_env_off(
    mesh: Mesh, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    kwargs: dict[str, Any] = {"transport": SyncTransport()} if given == "transport" else {"trust_env": False}
    with mesh.httpx_client(**kwargs) as plain, httpx.Client(**kwargs) as stock:
        assert _proxy_of(plain, "http://elsewhere.example/") == _proxy_of(stock, "http://elsewhere.example/")


def _proxy_of(client: httpx.Client, url: str) -> Any:
    """The proxy a request to ``url`` goes through (None: none), as httpx's own tests read it."""
    transport = client._transport_for_url(httpx.URL(url))
    pool = getattr(transport, "_pool", None)
    return getattr(pool, "_proxy_url", None)


ENVIRONMENTS = [
    {"http": "http://p:1"},
    {"https": "p:2", "all": "socks5://q:3"},
    {"http": "http://p:1", "no": "localhost, 10.0.0.1,::1,example.com,.internal,http://x.org,"},
    {"all": "http://p:1", "no": "*"},
    {"no": "10.0.0.0/8"},
    {},
]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_fallback_reads_the_environment_as_httpx_does(env: dict[str, str]) -> None:
    import urllib.request

    from httpx import _utils

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(urllib.request, "getproxies", lambda: dict(env))
        patch.setattr(_utils, "getproxies", lambda: dict(env))  # (httpx's own name for it)
        get_environment_proxies = _utils.get_environment_proxies
        assert parse_environment_proxies() == get_environment_proxies()
        assert parse_environment_proxies(env) == get_environment_proxies()


@pytest.mark.parametrize(
    "reader",
    [None, lambda: 1 / 0, lambda: ["http://"], lambda: {"http://": 3}],
    ids=["missing", "raises", "not-a-dict", "bad-values"],
)
def test_a_changed_httpx_reader_falls_back_to_the_rules_written_here(
    reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://p:1")
    monkeypatch.setenv("NO_PROXY", "example.com")
    if reader is None:
        monkeypatch.setattr(httpx_compat, "_PROXY_READER", None)
    assert environment_proxies(reader) == {"http://": "http://p:1", "all://*example.com": None}


# -- (c) a caller's mounts never take a mesh call out of the mesh ---------------------------------


@pytest.mark.parametrize("pattern", ["http://", "all://", "all://users", "all://*users", "http://users:80"])
def test_a_callers_mount_does_not_take_mesh_calls(mesh: Mesh, fake_mesh: FakeMesh, pattern: str) -> None:
    own = SyncTransport()
    with mesh.httpx_client(mounts={pattern: own}) as client:
        assert client.get("http://users/list").text == "from the mesh"
    assert [call.path for call in fake_mesh.calls] == ["/list"]


def test_a_callers_mount_still_takes_other_hosts(mesh: Mesh) -> None:
    with mesh.httpx_client(mounts={"http://": SyncTransport(), "all://*.example": SyncTransport()}) as client:
        assert client.get("http://a.example/").text == "own"
        assert client.get("http://elsewhere/").text == "own"


def test_an_async_callers_mount_does_not_take_mesh_calls(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    async def main() -> tuple[str, str]:
        async with mesh.httpx_async_client(mounts={"http://": AsyncTransport()}) as client:
            return (await client.get("http://users/list")).text, (await client.get("http://x.example/")).text

    assert asyncio.run(main()) == ("from the mesh", "own")


def test_an_explicit_proxy_does_not_take_mesh_calls(mesh: Mesh, fake_mesh: FakeMesh) -> None:
    with mesh.httpx_client(proxy="http://proxy.invalid:3128") as client:
        assert client.get("http://users/list").text == "from the mesh"
        assert _proxy_of(client, "http://elsewhere.example/") is not None


# -- (d) requests: a pickled session works --------------------------------------------------------


def test_a_pickled_requests_session_sends(mesh: Mesh, backend: Backend) -> None:
    session = pickle.loads(pickle.dumps(mesh.requests_session()))
    assert session.get(f"http://{backend.address}/p?key=pickled").status_code == 200
    assert session.get("http://users/list").text == "from the mesh"
    assert len(backend.records("pickled")) == 1
