"""Shadow reads through real Envoy and HAProxy, with requests, httpx and httpx async.

The backend plants a difference: for every tenth item it answers otherwise when the request came
through Envoy (it sees ``x-envoy-expected-rq-timeout-ms``, which only Envoy adds), and every answer
carries volatile members (a timestamp, per-item etags) that the registry's ``ignore_json`` leaves
out. ``/slow`` answers after 2 s through Envoy. Each test waits for the copies with
``mesh.shadow_drain`` (never a sleep) and proves its point by what the backend received, what the
caller got and what ``mesh.shadow_stats`` counted.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import mesh_client
from mesh_client import Mesh, Route, call_info
from mesh_client.cli import parser
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.routing import write_flag_file
from mesh_client.shadow import SHADOW_HEADER
from mesh_client.shadow.flags import stage_flag
from mesh_client.shadow.stats import ShadowEvent, observe
from mesh_client.sidecar import free_port, start_envoy, start_haproxy

from .cli.helpers import write_toml
from .conftest import CLIENT_KINDS, Caller
from .forking import Channel, run_in_child
from .servers import serve_asgi, serve_wsgi

pytestmark = [
    pytest.mark.real,
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

ENVOY_ADDED = "x-envoy-expected-rq-timeout-ms"
CALLS = 200
PLANTED = [i for i in range(CALLS) if i % 10 == 0]
SLOW = 2.0


@dataclass
class Seen:
    method: str
    path: str
    key: str
    headers: dict[str, str]


@dataclass
class CatalogBackend:
    """The upstream: records every request; counts the copies it is serving at once."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    copies_now: int = 0
    copies_peak: int = 0

    def records(self, key: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.key == key]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
        path = environ["PATH_INFO"]
        key = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p).get("key", "")
        copy = SHADOW_HEADER in headers
        with self.lock:
            self.seen.append(Seen(environ["REQUEST_METHOD"], path, key, headers))
            if copy:
                self.copies_now += 1
                self.copies_peak = max(self.copies_peak, self.copies_now)
        try:
            body = self._answer(path, headers)
        finally:
            if copy:
                with self.lock:
                    self.copies_now -= 1
        start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
        return [body]

    @staticmethod
    def _answer(path: str, headers: dict[str, str]) -> bytes:
        via_envoy = ENVOY_ADDED in headers
        if path.startswith("/slow/") and via_envoy:
            time.sleep(SLOW)  # (the backend's own pace: it answers the copy's route after 2 s)
        number = int(path.rsplit("/", 1)[1]) if path.rsplit("/", 1)[1].isdigit() else -1
        name = f"item-{number}"
        if path.startswith("/items/") and number % 10 == 0 and via_envoy:
            name += "-as-seen-through-envoy"  # the planted difference
        return json.dumps(
            {
                "id": number,
                "name": name,
                "generated_at": time.time(),
                "items": [{"n": i, "etag": uuid.uuid4().hex} for i in range(3)],
            }
        ).encode()


@dataclass
class ShadowWorld:
    config: MeshConfig
    flags_path: Path
    backend: CatalogBackend
    data: dict[str, Any]
    stages: dict[str, str] = field(default_factory=dict)
    version: int = 1

    def write(self) -> None:
        self.version += 1
        write_flag_file(
            self.flags_path, [stage_flag(f"mesh-route-{s}", stage, self.version) for s, stage in self.stages.items()]
        )

    def set_stage(self, mesh: Mesh, service: str, stage: str) -> None:
        """Write the flag file and wait (bounded) until ``mesh`` follows it."""
        if self.stages.get(service) != stage:
            self.stages[service] = stage
            self.write()
        until = time.monotonic() + 5
        while mesh.route_for(service).stage != stage:
            assert time.monotonic() < until, f"the flag client did not see stage {stage} within 5 s"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[ShadowWorld]:
    work = tmp_path_factory.mktemp("shadow")
    backend = CatalogBackend()
    with serve_wsgi(backend) as address:
        ignore = ["generated_at", "items[].etag"]
        data = {
            "mesh": {
                "caller": "checkout",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
            },
            "flags": {"source": "file", "path": str(work / "flags.json"), "poll_interval": 0.1},
            "services": {
                "catalog": {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(address)],
                    "timeout": 2.0,
                    "shadow": {"sample": 1.0, "max_in_flight": 1024, "ignore_json": ignore},
                },
                "slow": {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(address)],
                    "timeout": 3.0,
                    "shadow": {"sample": 1.0, "max_in_flight": 4, "ignore_json": ignore},
                },
            },
        }
        config = load_mapping(data, source="shadow integration registry")
        shadow_world = ShadowWorld(config, work / "flags.json", backend, data, {"catalog": "off", "slow": "off"})
        shadow_world.write()
        envoy = start_envoy(config, work / "envoy", binary=envoy_bin)
        try:
            haproxy = start_haproxy(config, work / "haproxy", binary=haproxy_bin)
            try:
                yield shadow_world
            finally:
                haproxy.stop()
        finally:
            envoy.stop()


@pytest.fixture
def mesh(world: ShadowWorld) -> Iterator[Mesh]:
    """A mesh of its own per test: its shadow counts are the test's alone."""
    with Mesh(world.config) as m:
        yield m


@pytest.fixture(params=CLIENT_KINDS)
def caller(request: pytest.FixtureRequest, mesh: Mesh) -> Iterator[Caller]:
    c = Caller(request.param, mesh)
    yield c
    drain(c, mesh)
    c.close()


def drain(caller: Caller, mesh: Mesh, timeout: float = 30.0) -> None:
    """Wait for every copy: an asyncio client's copies are tasks on its loop, which must run."""
    loop = caller._loop
    if loop is not None:
        assert loop.run_until_complete(mesh.shadow_drain_async(timeout))
    else:
        assert mesh.shadow_drain(timeout)


@pytest.fixture
def events() -> Iterator[list[ShadowEvent]]:
    found: list[ShadowEvent] = []
    with observe(found.append):
        yield found


def test_shadow_finds_exactly_the_planted_differences(
    world: ShadowWorld, mesh: Mesh, caller: Caller, events: list[ShadowEvent], caplog: pytest.LogCaptureFixture
) -> None:
    world.set_stage(mesh, "catalog", "shadow")
    key = uuid.uuid4().hex
    for i in range(CALLS):
        response = caller.request("GET", f"http://catalog/items/{i}?key={key}")
        assert response.json()["name"] == f"item-{i}"  # HAProxy's answer, never the planted one
        info = call_info(response)
        assert info is not None
        assert (info.route, info.stage) == (Route.HAPROXY, "shadow")
    drain(caller, mesh)
    stats = mesh.shadow_stats("catalog")
    assert (stats.compared, stats.matched, stats.mismatched) == (CALLS, CALLS - len(PLANTED), len(PLANTED))
    assert (stats.errors, stats.skipped, stats.in_flight) == (0, 0, 0)
    mismatched = sorted(int(e.target.split("/")[2].split("?")[0]) for e in events if e.result == "mismatch")
    assert mismatched == PLANTED
    # each mismatch is the planted member and nothing else: the volatile ones were left out
    wheres = {d.where for e in events if e.comparison is not None for d in e.comparison.differences}
    assert wheres == {"body $.name"}
    # every call reached the backend twice: once via HAProxy, its copy via Envoy, same request id
    seen = world.backend.records(key)
    assert len(seen) == 2 * CALLS
    copies = [s for s in seen if SHADOW_HEADER in s.headers]
    assert len(copies) == CALLS
    assert all(ENVOY_ADDED in s.headers for s in copies)
    assert not any(ENVOY_ADDED in s.headers for s in seen if s not in copies)
    primary_ids = sorted(s.headers["x-request-id"] for s in seen if s not in copies)
    assert sorted(s.headers["x-request-id"] for s in copies) == primary_ids
    assert any("item-10-as-seen-through-envoy" in line for line in caplog.messages)


def test_posts_are_never_copied(world: ShadowWorld, mesh: Mesh, caller: Caller) -> None:
    world.set_stage(mesh, "catalog", "shadow")
    key = uuid.uuid4().hex
    for i in range(20):
        assert caller.request("POST", f"http://catalog/orders/{i}?key={key}", content=b"{}").status_code == 200
    caller.request("GET", f"http://catalog/items/1?key={key}")  # (a copy, to show copies are made)
    drain(caller, mesh)
    seen = world.backend.records(key)
    posts = [s for s in seen if s.method == "POST"]
    assert sorted(s.path for s in posts) == sorted(f"/orders/{i}" for i in range(20))  # each exactly once
    assert not any(SHADOW_HEADER in s.headers for s in posts)
    assert mesh.shadow_stats("catalog").compared == 1


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[int(len(ordered) * 0.99) - 1]


#: measurements of the caller's p99 allowed: load from other processes only ever adds latency, at
#: random, to either stage; a caller that waited for its copy (2 s) would miss the bound in every one
P99_ATTEMPTS = 3


def test_a_slow_copy_route_does_not_slow_the_caller_and_the_cap_holds(
    world: ShadowWorld, mesh: Mesh, caller: Caller
) -> None:
    world.backend.copies_peak = 0
    key = uuid.uuid4().hex
    rounds, per_round = 10, 40  # 400 calls per stage: p99 is the 4th slowest, not a single outlier
    measured: list[str] = []
    shadowed = 0
    for _attempt in range(P99_ATTEMPTS):
        latencies: dict[str, list[float]] = {"off": [], "shadow": []}
        for _round in range(rounds):  # interleaved, so that the machine's load shifts hit both alike
            for stage in ("off", "shadow"):
                world.set_stage(mesh, "slow", stage)
                for i in range(per_round):
                    started = time.perf_counter()
                    response = caller.request("GET", f"http://slow/slow/{i}?key={key}")
                    latencies[stage].append(time.perf_counter() - started)
                    assert response.status_code == 200
        shadowed += rounds * per_round
        held = mesh.shadow_stats("slow")
        # the copies really were in flight meanwhile, never more than max_in_flight at once
        assert held.peak_in_flight == 4
        assert 1 <= held.in_flight <= 4
        grown = p99(latencies["shadow"]) - p99(latencies["off"])
        measured.append(f"p99 off {p99(latencies['off']) * 1000:.2f} ms, shadow {p99(latencies['shadow']) * 1000:.2f}")
        if grown < 0.005:
            break
    else:
        raise AssertionError(f"the caller's p99 grew by 5 ms or more in every measurement: {measured}")
    assert held.skipped >= shadowed // 2
    drain(caller, mesh)
    stats = mesh.shadow_stats("slow")
    assert stats.compared + stats.skipped == shadowed
    assert stats.matched == stats.compared >= 4
    assert 1 <= world.backend.copies_peak <= 4


def test_live_swaps_who_answers(world: ShadowWorld, mesh: Mesh, caller: Caller) -> None:
    world.set_stage(mesh, "catalog", "live")
    key = uuid.uuid4().hex
    response = caller.request("GET", f"http://catalog/items/10?key={key}")
    assert response.json()["name"] == "item-10-as-seen-through-envoy"  # Envoy answers the caller now
    info = call_info(response)
    assert info is not None
    assert (info.route, info.stage) == (Route.ENVOY, "live")
    drain(caller, mesh)
    primary, copy = sorted(world.backend.records(key), key=lambda s: SHADOW_HEADER in s.headers)
    assert ENVOY_ADDED in primary.headers
    assert ENVOY_ADDED not in copy.headers  # the copy went via HAProxy
    assert copy.headers[SHADOW_HEADER] == "1"
    stats = mesh.shadow_stats("catalog")
    assert (stats.compared, stats.mismatched) == (1, 1)


def _wsgi_front(mesh: Mesh) -> Callable[..., Any]:
    session = mesh.requests_session()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        key = environ["QUERY_STRING"].split("=", 1)[1]
        body = session.get(f"http://catalog/items/3?key={key}").content
        start_response("200 OK", [("content-type", "application/json")])
        return [body]

    return mesh_client.wsgi.MeshMiddleware(app, mesh)


def _asgi_front(mesh: Mesh) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        key = scope["query_string"].decode().split("=", 1)[1]
        async with mesh.httpx_async_client() as client:
            body = (await client.get(f"http://catalog/items/3?key={key}")).content
            await mesh.shadow_drain_async(10)  # (the copy's task runs on this loop: let it end)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return mesh_client.asgi.MeshMiddleware(app, mesh)


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_request_carrying_x_mesh_shadow_makes_no_copies(world: ShadowWorld, mesh: Mesh, kind: str) -> None:
    world.set_stage(mesh, "catalog", "shadow")
    server = serve_wsgi(_wsgi_front(mesh)) if kind == "wsgi" else serve_asgi(_asgi_front(mesh), free_port())
    with server as front:
        served_copy, served_call = uuid.uuid4().hex, uuid.uuid4().hex
        for key, headers in ((served_copy, {SHADOW_HEADER: "1"}), (served_call, {})):
            assert requests.get(f"http://{front}/?key={key}", headers=headers, timeout=10).status_code == 200
            assert mesh.shadow_drain(10)
    (seen,) = world.backend.records(served_copy)  # no copy of the call made while serving a copy
    assert seen.headers[SHADOW_HEADER] == "1"  # and it says so downstream
    assert ENVOY_ADDED not in seen.headers
    assert len(world.backend.records(served_call)) == 2  # the same request without the header: a copy
    assert mesh.shadow_stats("catalog").compared == 1


def test_the_copies_pool_is_made_anew_in_a_forked_child(world: ShadowWorld, mesh: Mesh) -> None:
    world.set_stage(mesh, "slow", "shadow")
    world.set_stage(mesh, "catalog", "shadow")
    session = mesh.requests_session()
    session.get("http://slow/slow/1")  # its copy is in flight (2 s) in a pool thread at the fork
    assert mesh.shadow_stats("slow").in_flight == 1
    key = uuid.uuid4().hex

    def child(channel: Channel) -> None:
        before = mesh.shadow_stats("slow")
        session.get(f"http://catalog/items/5?key={key}")
        drained = mesh.shadow_drain(10)  # (with the parent's pool, the copy in flight would never end here)
        channel.send({"in_flight_at_fork": before.in_flight, "drained": drained, **vars_of(mesh, "catalog")})

    report = run_in_child(child)
    assert report == {"in_flight_at_fork": 0, "drained": True, "compared": 1, "matched": 1, "skipped": 0}
    assert len(world.backend.records(key)) == 2  # the child's call and its copy
    assert mesh.shadow_drain(10)
    assert mesh.shadow_stats("catalog").compared == 0  # the child's copy was the child's
    assert mesh.shadow_stats("slow").compared == 1


def vars_of(mesh: Mesh, service: str) -> dict[str, int]:
    stats = mesh.shadow_stats(service)
    return {"compared": stats.compared, "matched": stats.matched, "skipped": stats.skipped}


def test_a_client_of_your_own_around_the_transport_is_skipped_not_compared(world: ShadowWorld, mesh: Mesh) -> None:
    """A client of the user's own around ``mesh.httpx_transport()`` reads bodies itself: its
    responses are streamed as far as the transport knows, so they are skipped, not compared."""
    world.set_stage(mesh, "catalog", "shadow")
    with httpx.Client(transport=mesh.httpx_transport()) as client:
        assert client.get("http://catalog/items/1").status_code == 200
    assert mesh.shadow_drain(10)
    stats = mesh.shadow_stats("catalog")
    assert (stats.skipped, stats.compared) == (1, 0)


def test_the_shadow_command_finds_the_planted_difference_and_only_it(
    world: ShadowWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = write_toml(tmp_path / "mesh.toml", world.data)
    world.stages["catalog"] = "off"  # the flag says off; the command forces its stage regardless
    world.write()
    flags_before = world.flags_path.read_text()
    key = uuid.uuid4().hex
    argv = ["shadow", str(registry), "catalog", "--path", f"/items/10?key={key}", "--path", f"/items/11?key={key}"]
    args = parser().parse_args([*argv, "--count", "10", "--concurrency", "2"])
    assert args.run(args) == 1  # a mismatch
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:7] for line in out.splitlines() if line.startswith("/items/")}
    # calls, failed, matched, mismatched, errors, skipped per path: /items/10 differs via Envoy, /items/11 not
    assert rows == {
        f"/items/10?key={key}": ["5", "0", "0", "5", "0", "0"],
        f"/items/11?key={key}": ["5", "0", "5", "0", "0", "0"],
    }
    assert 'body $.name: haproxy "item-10" / envoy "item-10-as-seen-through-envoy"' in out
    assert out.rstrip().endswith("10 call(s): 5 matched, 5 mismatched, 0 copy error(s), 0 skipped, 0 failed call(s)")
    # each call reached the backend twice: once via HAProxy (answering), its copy via Envoy
    seen = world.backend.records(key)
    assert len(seen) == 20
    assert sum(ENVOY_ADDED in s.headers and SHADOW_HEADER in s.headers for s in seen) == 10
    # the flag file is left as it was (and whatever stage it says, the command used its own)
    assert world.flags_path.read_text() == flags_before

    args = parser().parse_args(["shadow", str(registry), "catalog", "--path", "/items/11", "--stage", "live"])
    assert args.run(args) == 0  # Envoy answers, the copy goes via HAProxy: the same answers
    out = capsys.readouterr().out
    assert "stage live, envoy answers the caller, every call copied via haproxy" in out
    assert out.rstrip().endswith("20 call(s): 20 matched, 0 mismatched, 0 copy error(s), 0 skipped, 0 failed call(s)")
