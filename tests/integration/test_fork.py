"""Clients made before ``os.fork()`` work in the child, with no code of the user's: every reply is
the call's own (no pooled connection is shared with the parent), route flags keep following their
file, retry budgets and sidecar circuits start clean. Real Envoy, HAProxy, backends and forks.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from mesh_client import Mesh, Route, call_info, call_options
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.routing import route_flag, use_flag_client_factory, write_flag_file
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import Backend

from ..conftest import load_idl
from .conftest import registry
from .forking import Channel, Child, run_in_child
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
    data: dict[str, Any]
    config: MeshConfig
    flags_path: Path
    mesh: Mesh
    echo: Any
    version: int = 1

    def set_route(self, route: Route) -> float:
        """Write both route flags and wait (bounded) until this process's mesh follows them;
        the ``time.monotonic()`` of the write."""
        self.version += 1
        written = time.monotonic()
        write_flag_file(
            self.flags_path,
            [route_flag("mesh-route-users", route, self.version), route_flag("mesh-route-echo", route, self.version)],
        )
        until = time.monotonic() + 5
        while not all(self.mesh.route_for(s).route is route for s in ("users", "echo")):
            assert time.monotonic() < until, f"the parent's mesh did not see route {route} within 5 s"
            time.sleep(0.01)
        return written


@pytest.fixture(scope="module")
def fork_world(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[ForkWorld]:
    work = tmp_path_factory.mktemp("fork")
    echo = load_idl(tmp_path_factory, IDL, "fork_echo_thrift")
    flags_path = work / "flags.json"
    write_flag_file(flags_path, [route_flag("mesh-route-users", "haproxy"), route_flag("mesh-route-echo", "haproxy")])
    echo_port = free_port()
    data = registry(backend, flags_path, envoy_thrift=f"127.0.0.1:{free_port()}")
    policy = {"timeout": 2.0, "retries": 0}  # (a retry would hide a broken connection)
    data["services"]["users"] = {**data["services"]["users"], **policy}
    data["services"]["echo"] = {
        "protocol": "thrift",
        "transport": "framed",
        "haproxy": f"127.0.0.1:{free_port()}",
        "endpoints": [f"127.0.0.1:{echo_port}"],
        **policy,
    }
    config = load_mapping(data, source="fork registry")
    with ExitStack() as stack:
        serve_thrift(stack, echo.Echo, EchoHandler(), stack.enter_context(Mesh(config)), "framed", echo_port)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        mesh = stack.enter_context(Mesh(config))
        yield ForkWorld(data, config, flags_path, mesh, echo)


class EchoClient:
    """One client library, made before the fork, calling a service that echoes a token."""

    def __init__(self, kind: str, world: ForkWorld, url: str = "http://users/echo") -> None:
        self.kind = kind
        self.url = url
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

    def _one(self, token: str) -> tuple[str, Route | None]:
        """(the token the service echoed, the route the call took; None: not a mesh call)"""
        if self.kind == "thrift":
            # a Thrift reply carries no call info: the route is what the flag decides for the call
            return self._client.echo(token), self._mesh.route_for("echo").route
        # (timeout=: mesh calls ignore it, the registry's applies; calls to other hosts need one)
        return self._echoed(self._client.get(self.url, headers={"x-token": token}, timeout=5))

    async def _one_async(self, token: str, limit: asyncio.Semaphore) -> tuple[str, Route | None]:
        async with limit:
            return self._echoed(await self._client.get(self.url, headers={"x-token": token}, timeout=5))

    @staticmethod
    def _echoed(response: Any) -> tuple[str, Route | None]:
        info = call_info(response)
        return response.json()["headers"].get("x-token"), info.route if info is not None else None

    def calls(self, tokens: list[str], concurrency: int = CONCURRENCY) -> list[str]:
        """Call once per token, ``concurrency`` at a time; what went wrong (empty: every reply
        was the call's own)."""
        problems: list[str] = []

        def check(token: str, outcome: tuple[str, Route | None] | BaseException) -> None:
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

        def guarded(token: str) -> tuple[str, Route | None] | BaseException:
            try:
                return self._one(token)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(concurrency) as pool:
            for token, outcome in zip(tokens, pool.map(guarded, tokens), strict=True):
                check(token, outcome)
        return problems

    def route_of_a_call(self) -> Route | None:
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
            # when the parent wrote the flag file (time.monotonic() is the system's, shared by processes)
            edited = channel.receive(timeout=30)
            while (seen := client.route_of_a_call()) is not flipped and time.monotonic() - edited < FLIP_WITHIN + 1:
                time.sleep(0.02)
            channel.send({"route": seen.value, "after": time.monotonic() - edited})

        child = Child(child_work)
        try:
            own = client.calls(tokens("parent"))  # while the child makes its calls
            report = child.receive()
            assert (report["failed"], report["problems"]) == (0, []), "the child got replies that were not its own"
            assert own == [], "the parent got replies that were not its own"
            child.send(fork_world.set_route(flipped))
            flip = child.receive()
            assert flip["route"] == flipped.value, f"the child's calls stayed on {flip['route']} after the flag edit"
            assert flip["after"] <= FLIP_WITHIN
            assert child.wait() == 0
        finally:
            child.kill()
        assert client.route_of_a_call() is flipped  # and the parent's client goes on working
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_calls_to_other_hosts_through_a_mesh_client_get_their_own_connections_in_the_child(
    fork_world: ForkWorld, backend: Backend, kind: str
) -> None:
    """A mesh client also calls hosts that are not mesh services (here the backend directly): in
    the child those calls open new connections too, where plain requests and httpx clients would
    share the parent's."""
    client = EchoClient(kind, fork_world, url=f"http://{backend.address}/echo")
    try:
        assert client.calls(tokens("warm-up", CONCURRENCY)) == []

        def child_work(channel: Channel) -> None:
            client.after_fork()
            channel.send(client.calls(tokens("child")))

        child = Child(child_work)
        try:
            assert client.calls(tokens("parent")) == []
            assert child.receive() == []
            assert child.wait() == 0
        finally:
            child.kill()
    finally:
        client.close()


def test_route_flags_follow_the_file_in_a_child_forked_from_a_child(fork_world: ForkWorld) -> None:
    """A grandchild's flag client is restarted too (each fork resets what it inherits)."""
    fork_world.set_route(Route.HAPROXY)
    session = fork_world.mesh.requests_session()

    def grandchild_work(channel: Channel) -> None:
        until = channel.receive(timeout=30) + FLIP_WITHIN  # (when the file was written)
        while fork_world.mesh.route_for("users").route is not Route.ENVOY:
            assert time.monotonic() < until, "the grandchild's flag client did not see the edit"
            time.sleep(0.02)
        r = session.get("http://users/echo")
        channel.send({"route": call_info(r).route.value if call_info(r) else None})  # type: ignore[union-attr]

    def child_work(channel: Channel) -> None:
        grandchild = Child(grandchild_work)
        try:
            channel.send("ready")
            grandchild.send(channel.receive(timeout=30))
            report = grandchild.receive()
            channel.send({"grandchild": report, "status": grandchild.wait()})
        finally:
            grandchild.kill()

    child = Child(child_work)
    try:
        assert child.receive() == "ready"
        child.send(fork_world.set_route(Route.ENVOY))
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


def test_retry_budgets_and_sidecar_circuits_start_clean_in_the_child(fork_world: ForkWorld) -> None:
    """What the parent learnt about failures (an empty retry budget, a sidecar that refused) is
    not the child's: like a freshly started process, the child probes the sidecar itself and has
    the budget's floor to retry with."""
    data = copy.deepcopy(fork_world.data)
    data["mesh"]["envoy_http"] = f"127.0.0.1:{free_port()}"  # nothing listens: Envoy refuses
    data["flags"] = {"source": "none"}
    users = data["services"]["users"]
    users.update(retries=2, retry_on=["5xx"], retry_budget={"percent": 0, "min_per_second": 0.1, "ttl": 10})
    with Mesh.from_dict(data) as mesh:
        session = mesh.requests_session()
        with call_options(route=Route.ENVOY):
            session.get("http://users/echo")  # refused: via HAProxy, and the circuit opens
            parent_reason = call_info(session.get("http://users/echo")).route_reason  # type: ignore[union-attr]
        assert "circuit open" in parent_reason
        failing = session.get("http://users/echo?status=503")  # (the budget's floor: 1 retry per 10 s)
        assert (failing.status_code, call_info(failing).attempts) == (503, 2)  # type: ignore[union-attr]
        assert mesh.retry_budget("users").available() == 0

        def child_work(channel: Channel) -> None:
            budget = mesh.retry_budget("users").available()
            r = session.get("http://users/echo?status=503")
            with call_options(route=Route.ENVOY):
                reason = call_info(session.get("http://users/echo")).route_reason  # type: ignore[union-attr]
            channel.send({"budget": budget, "attempts": call_info(r).attempts, "reason": reason})  # type: ignore[union-attr]

        report = run_in_child(child_work)
        assert (report["budget"], report["attempts"]) == (1, 2)
        assert "Envoy refused the connection, failed over to HAProxy" in report["reason"]
        assert "circuit open" not in report["reason"]
        # the parent's own state is untouched by the child
        assert mesh.retry_budget("users").available() == 0
        with call_options(route=Route.ENVOY):
            assert "circuit open" in call_info(session.get("http://users/echo")).route_reason  # type: ignore[union-attr]


def test_a_flag_client_of_your_own_is_restarted_with_its_postfork(fork_world: ForkWorld, tmp_path: Path) -> None:
    """A router on a client from ``client_factory`` cannot be rebuilt by mesh_client: the child
    calls the client's ``postfork()`` (LaunchDarkly's SDK), so its file data source polls again."""
    from ldclient import LDClient
    from ldclient.config import Config
    from ldclient.integrations import Files

    flags = tmp_path / "own-flags.json"
    write_flag_file(flags, [route_flag("mesh-route-users", "haproxy")])

    def own_client(_: Any) -> Any:
        source = Files.new_data_source(paths=[str(flags)], auto_update=True, poll_interval=0.1, force_polling=True)
        return LDClient(Config("own", update_processor_class=source, send_events=False), start_wait=5)

    with use_flag_client_factory(own_client), Mesh(fork_world.config) as mesh:
        assert mesh.route_for("users").route is Route.HAPROXY

        def child_work(channel: Channel) -> None:
            channel.send("ready")
            until = channel.receive(timeout=30) + FLIP_WITHIN  # (when the file was written)
            while mesh.route_for("users").route is not Route.ENVOY:
                assert time.monotonic() < until, "the child's own flag client did not see the edit"
                time.sleep(0.02)
            channel.send("seen")

        child = Child(child_work)
        try:
            assert child.receive() == "ready"
            written = time.monotonic()
            write_flag_file(flags, [route_flag("mesh-route-users", "envoy", version=2)])
            child.send(written)
            assert child.receive() == "seen"
            assert child.wait() == 0
        finally:
            child.kill()


class _StaticFlagClient:
    """A flag client of the user's own without ``postfork()``: always says "envoy"."""

    class _Detail:
        def __init__(self) -> None:
            self.value = "envoy"
            self.reason = {"kind": "FALLTHROUGH"}

    def variation_detail(self, key: str, context: Any, default: Any) -> Any:
        return self._Detail()

    def close(self) -> None:
        pass


def test_a_flag_client_without_postfork_keeps_its_flags_and_the_child_says_so(
    fork_world: ForkWorld, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh_client.routing")
    with use_flag_client_factory(lambda _: _StaticFlagClient()), Mesh(fork_world.config) as mesh:

        def child_work(channel: Channel) -> None:
            warnings = [r.getMessage() for r in caplog.records if r.name == "mesh_client.routing"]
            channel.send({"route": mesh.route_for("users").route.value, "warnings": warnings})

        report = run_in_child(child_work)
    assert report["route"] == "envoy"  # the client goes on answering as it did
    assert len(report["warnings"]) == 1
    assert "has no postfork(); in this forked process" in report["warnings"][0]
    assert "route flags keep the values they had at the fork" in report["warnings"][0]


@pytest.mark.parametrize("route", [Route.HAPROXY, Route.ENVOY], ids=str)
def test_multiprocessing_workers_and_a_child_that_exits_normally(fork_world: ForkWorld, route: Route) -> None:
    """A fork-context ``multiprocessing.Pool`` and an ``os.fork()`` child that ends like a program
    (atexit handlers, thread shutdown): every reply is the call's own and nothing hangs at exit,
    in the children or the parent."""
    fork_world.set_route(route)
    script = Path(__file__).with_name("fork_exit.py")
    command = [sys.executable, str(script), json.dumps(fork_world.data)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"pool": [], "parent": [], "child_status": 0}


# -- a real pre-fork server ---------------------------------------------------------------------

WORKERS = 3
#: mesh calls each worker must have made, through clients its master made and used, on each route
PER_WORKER = 100


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def call(self, token: str, client: str) -> dict[str, Any]:
        r = requests.get(self.url, params={"token": token, "client": client}, timeout=10)
        r.raise_for_status()
        reply: dict[str, Any] = r.json()
        reply["sent"], reply["at"] = token, time.monotonic()
        return reply

    def burst(self, n: int) -> list[dict[str, Any]]:
        """``n`` calls, 2 workers' worth at a time (so every worker gets some), alternating the
        app's requests and httpx clients."""
        sent = [(f"g{i}-{uuid.uuid4().hex}", ("requests", "httpx")[i % 2]) for i in range(n)]
        with ThreadPoolExecutor(2 * WORKERS) as pool:
            return list(pool.map(lambda args: self.call(*args), sent))


@pytest.fixture
def gunicorn(fork_world: ForkWorld, tmp_path: Path) -> Iterator[Gunicorn]:
    """gunicorn --preload serving prefork_app, started with the route flags set to HAProxy."""
    fork_world.set_route(Route.HAPROXY)
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps(fork_world.data))
    port = free_port()
    log = tmp_path / "gunicorn.log"
    command = [
        *(sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS)),
        *("--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10", "--access-logfile", "-"),
        *("--pythonpath", str(Path(__file__).parent), "prefork_app:app"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "MESH_FORK_REGISTRY": str(registry)}
        )
    server = Gunicorn(process, f"http://127.0.0.1:{port}/call", log)
    try:
        until = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"gunicorn exited at start:\n{log.read_text()}"
            assert time.monotonic() < until, f"gunicorn did not answer within 30 s:\n{log.read_text()}"
            try:
                server.call("ready", "requests")
                break
            except requests.RequestException:
                time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def calls_until_every_worker_made(server: Gunicorn, route: Route, per_worker: int) -> dict[int, int]:
    """Calls until each worker has made ``per_worker`` of them; every one must be the call's own,
    on ``route``, from a worker forked from the master that imported the app. Calls per worker."""
    made: Counter[int] = Counter()
    for _ in range(60):
        for reply in server.burst(60):
            assert reply["token"] == reply["sent"], f"worker {reply['pid']} got another call's reply: {reply}"
            assert reply["route"] == route.value, reply
            assert reply["imported_in"] == server.process.pid != reply["pid"]  # (--preload: forked workers)
            made[reply["pid"]] += 1
        assert len(made) <= WORKERS
        if len(made) == WORKERS and min(made.values()) >= per_worker:
            return dict(made)
    raise AssertionError(f"the workers did not each make {per_worker} calls: {dict(made)}")


def test_gunicorn_preload_workers_follow_the_flag_and_get_only_their_own_replies(
    fork_world: ForkWorld, gunicorn: Gunicorn
) -> None:
    before = calls_until_every_worker_made(gunicorn, Route.HAPROXY, PER_WORKER)

    edited = fork_world.set_route(Route.ENVOY)  # an edit of the flag file...
    seen: dict[int, float] = {}  # ...seen by each worker: seconds after the edit (at the latest)
    while len(seen) < WORKERS and time.monotonic() - edited < FLIP_WITHIN + 3:
        for reply in gunicorn.burst(12):
            assert reply["token"] == reply["sent"]
            if reply["route"] == "envoy":
                seen[reply["pid"]] = min(seen.get(reply["pid"], math.inf), reply["at"] - edited)
    assert set(seen) == set(before), f"workers that saw the flag edit: {seen} (workers: {sorted(before)})"
    assert max(seen.values()) <= FLIP_WITHIN, seen

    assert set(calls_until_every_worker_made(gunicorn, Route.ENVOY, PER_WORKER)) == set(before)

    stopping = time.monotonic()
    gunicorn.process.send_signal(signal.SIGTERM)  # (its own pid: the master)
    assert gunicorn.process.wait(timeout=30) == 0
    stopped_in = time.monotonic() - stopping
    log = gunicorn.log.read_text()
    # a worker that hangs at exit is killed by the master after --graceful-timeout (10 s)
    assert stopped_in < 8, f"gunicorn took {stopped_in:.1f} s to stop:\n{log}"
    assert "Traceback" not in log, log
    assert "SIGKILL" not in log, log
    assert log.count("Worker exiting") == WORKERS, log
