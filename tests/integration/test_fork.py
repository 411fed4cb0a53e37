"""Clients made before ``os.fork()`` work in the child, with no code of the user's: every reply is
the call's own (no pooled connection is shared with the parent), route flags keep following their
file, retry budgets and sidecar circuits start clean. Real Envoy, HAProxy, backends and forks.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh_client import Mesh, Route, call_info
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import Backend

from ..conftest import load_idl
from .forking import Channel, Child
from .servers import serve_thrift

pytestmark = [
    pytest.mark.real,
    # Python 3.12+ warns that forking a process with threads (the flag watcher's, the servers')
    # may deadlock the child; making that safe for mesh_client's objects is what is tested here
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

IDL = "service Echo { string echo(1: string token) }"
CLIENT_KINDS = ["requests", "httpx", "httpx-async", "thrift"]
#: calls each of the parent and the child makes, from this many threads (or tasks) at once
CALLS, CONCURRENCY = 200, 4
#: a flag edit must reach the child within this many seconds (poll_interval is 0.1 s)
FLIP_WITHIN = 2.0


class EchoHandler:
    def echo(self, token: str) -> str:
        return token


@dataclass
class ForkWorld:
    config: MeshConfig
    flags_path: Path
    mesh: Mesh
    echo: Any
    version: int = 1

    def set_route(self, route: Route) -> None:
        """Write both route flags and wait (bounded) until this process's mesh follows them."""
        self.version += 1
        write_flag_file(
            self.flags_path,
            [route_flag("mesh-route-users", route, self.version), route_flag("mesh-route-echo", route, self.version)],
        )
        until = time.monotonic() + 5
        while not all(self.mesh.route_for(s).route is route for s in ("users", "echo")):
            assert time.monotonic() < until, f"the parent's mesh did not see route {route} within 5 s"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def fork_world(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[ForkWorld]:
    work = tmp_path_factory.mktemp("fork")
    echo = load_idl(tmp_path_factory, IDL, "fork_echo_thrift")
    flags_path = work / "flags.json"
    write_flag_file(flags_path, [route_flag("mesh-route-users", "haproxy"), route_flag("mesh-route-echo", "haproxy")])
    echo_port = free_port()
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
        },
        "flags": {"source": "file", "path": str(flags_path), "poll_interval": 0.1},
        "services": {
            "users": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(backend.address)],
                "timeout": 2.0,
                "retries": 0,
            },
            "echo": {
                "protocol": "thrift",
                "transport": "framed",
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [f"127.0.0.1:{echo_port}"],
                "timeout": 2.0,
                "retries": 0,
            },
        },
    }
    config = load_mapping(data, source="fork registry")
    with ExitStack() as stack:
        serve_thrift(stack, echo.Echo, EchoHandler(), stack.enter_context(Mesh(config)), "framed", echo_port)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        mesh = stack.enter_context(Mesh(config))
        yield ForkWorld(config, flags_path, mesh, echo)


class EchoClient:
    """One client library, made before the fork, calling a service that echoes a token."""

    def __init__(self, kind: str, world: ForkWorld) -> None:
        self.kind = kind
        self._mesh = world.mesh
        self._loop: asyncio.AbstractEventLoop | None = None
        if kind == "requests":
            self._client: Any = world.mesh.requests_session()
        elif kind == "httpx":
            self._client = world.mesh.httpx_client()
        elif kind == "httpx-async":
            self._client = world.mesh.httpx_async_client()
            self._loop = asyncio.new_event_loop()
        else:
            self._client = world.mesh.thrift_client(world.echo.Echo, "echo")

    def after_fork(self) -> None:
        """In the child: an event loop of its own (asyncio's loops do not survive a fork); the
        client itself is used as it came from the parent."""
        if self._loop is not None:
            self._loop = asyncio.new_event_loop()

    def _one(self, token: str) -> tuple[str, Route]:
        """(the token the service echoed, the route the call took)"""
        if self.kind == "thrift":
            # a Thrift reply carries no call info: the route is what the flag decides for the call
            return self._client.echo(token), self._mesh.route_for("echo").route
        response = self._client.get("http://users/echo", headers={"x-token": token})
        info = call_info(response)
        assert info is not None
        return response.json()["headers"].get("x-token"), info.route

    async def _one_async(self, token: str, limit: asyncio.Semaphore) -> tuple[str, Route]:
        async with limit:
            response = await self._client.get("http://users/echo", headers={"x-token": token})
        info = call_info(response)
        assert info is not None
        return response.json()["headers"].get("x-token"), info.route

    def calls(self, tokens: list[str], concurrency: int = CONCURRENCY) -> list[str]:
        """Call once per token, ``concurrency`` at a time; what went wrong (empty: every reply
        was the call's own)."""
        problems: list[str] = []

        def check(token: str, outcome: tuple[str, Route] | BaseException) -> None:
            if isinstance(outcome, BaseException):
                problems.append(f"{token}: {type(outcome).__name__}: {outcome}")
            elif outcome[0] != token:
                problems.append(f"{token}: got the reply to {outcome[0]!r}")

        if self._loop is not None:

            async def run() -> list[Any]:
                limit = asyncio.Semaphore(concurrency)
                return await asyncio.gather(*(self._one_async(t, limit) for t in tokens), return_exceptions=True)

            for token, outcome in zip(tokens, self._loop.run_until_complete(run()), strict=True):
                check(token, outcome)
            return problems

        def guarded(token: str) -> tuple[str, Route] | BaseException:
            try:
                return self._one(token)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(concurrency) as pool:
            for token, outcome in zip(tokens, pool.map(guarded, tokens), strict=True):
                check(token, outcome)
        return problems

    def route_of_a_call(self) -> Route:
        token = uuid.uuid4().hex
        if self._loop is not None:
            echoed, route = self._loop.run_until_complete(self._one_async(token, asyncio.Semaphore(1)))
        else:
            echoed, route = self._one(token)
        assert echoed == token
        return route

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self._client.aclose())
            self._loop.close()
        else:
            self._client.close()


def tokens(prefix: str, n: int = CALLS) -> list[str]:
    return [f"{prefix}-{i}-{uuid.uuid4().hex}" for i in range(n)]


@pytest.mark.parametrize("route", [Route.HAPROXY, Route.ENVOY], ids=str)
@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_a_client_made_before_fork_works_in_the_child(fork_world: ForkWorld, kind: str, route: Route) -> None:
    fork_world.set_route(route)
    client = EchoClient(kind, fork_world)
    try:
        # the parent's pool holds connections on the route under test when the child is made
        assert client.calls(tokens("warm-up", CONCURRENCY)) == []
        flipped = Route.ENVOY if route is Route.HAPROXY else Route.HAPROXY

        def child_work(channel: Channel) -> None:
            client.after_fork()
            problems = client.calls(tokens(f"child{os.getpid()}"))
            channel.send({"problems": problems[:10], "failed": len(problems)})
            channel.receive(timeout=30)  # the parent edited the flag file
            edited = time.monotonic()
            while (seen := client.route_of_a_call()) is not flipped and time.monotonic() - edited < FLIP_WITHIN + 1:
                time.sleep(0.02)
            channel.send({"route": seen.value, "after": time.monotonic() - edited})

        child = Child(child_work)
        try:
            own = client.calls(tokens("parent"))  # while the child makes its calls
            report = child.receive()
            assert (report["failed"], report["problems"]) == (0, []), "the child got replies that were not its own"
            assert own == [], "the parent got replies that were not its own"
            fork_world.set_route(flipped)  # (waits until the parent's own flag client has seen it)
            child.send("edited")
            flip = child.receive()
            assert flip["route"] == flipped.value, f"the child's calls stayed on {flip['route']} after the flag edit"
            assert flip["after"] <= FLIP_WITHIN
            assert child.wait() == 0
        finally:
            child.kill()
        assert client.route_of_a_call() is flipped  # and the parent's client goes on working
    finally:
        client.close()


def test_route_flags_follow_the_file_in_a_child_forked_from_a_child(fork_world: ForkWorld) -> None:
    """A grandchild's flag client is restarted too (each fork resets what it inherits)."""
    fork_world.set_route(Route.HAPROXY)
    session = fork_world.mesh.requests_session()

    def grandchild_work(channel: Channel) -> None:
        channel.receive(timeout=30)
        until = time.monotonic() + FLIP_WITHIN
        while fork_world.mesh.route_for("users").route is not Route.ENVOY:
            assert time.monotonic() < until, "the grandchild's flag client did not see the edit"
            time.sleep(0.02)
        r = session.get("http://users/echo")
        channel.send({"route": call_info(r).route.value if call_info(r) else None})  # type: ignore[union-attr]

    def child_work(channel: Channel) -> None:
        grandchild = Child(grandchild_work)
        try:
            channel.send("ready")
            channel.receive(timeout=30)
            grandchild.send("edited")
            report = grandchild.receive()
            channel.send({"grandchild": report, "status": grandchild.wait()})
        finally:
            grandchild.kill()

    child = Child(child_work)
    try:
        assert child.receive() == "ready"
        fork_world.set_route(Route.ENVOY)
        child.send("edited")
        assert child.receive() == {"grandchild": {"route": "envoy"}, "status": 0}
        assert child.wait() == 0
    finally:
        child.kill()
        session.close()


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_forks_while_other_threads_of_the_parent_are_calling(fork_world: ForkWorld, kind: str) -> None:
    """A fork can catch another thread of the parent holding a lock of the mesh's objects (pool,
    budget, route cache): the child must still call at once, and exit."""
    fork_world.set_route(Route.HAPROXY)
    client = EchoClient(kind, fork_world)
    stop = False
    problems: list[str] = []

    def keep_calling() -> None:
        while not stop:
            problems.extend(client.calls(tokens("busy", 8), concurrency=2))

    def child_work(channel: Channel) -> None:
        client.after_fork()
        channel.send({"problems": client.calls(tokens("child", 4), concurrency=2)})

    # (first calls import modules: a fork while another thread imports a module for the first time
    # can deadlock the child in Python's import machinery, whatever the library)
    assert client.calls(tokens("warm-up", 4)) == []
    busy = threading.Thread(target=keep_calling)
    busy.start()
    try:
        for _ in range(20):
            child = Child(child_work)
            try:
                assert child.receive(timeout=10) == {"problems": []}
                assert child.wait(timeout=10) == 0
            finally:
                child.kill()
    finally:
        stop = True
        busy.join(30)
        client.close()
    assert problems == []
