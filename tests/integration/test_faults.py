"""Fault injection with real Envoy and HAProxy; each scenario prints its figures and asserts them.

Retries stacked at several layers, with and without budgets: A -> B -> C, each hop through the
real Envoy sidecar with ``retries = 2`` on ``5xx``, and C failing every request. Without a budget
each layer multiplies: C receives (1 + 2)^2 = 9 requests per request A receives. With
mesh_client's retry budget (20 % of calls, a negligible floor), each layer adds at most 20 %, so C
receives at most about 1.2^2 = 1.44 per request.

Also: the flag file corrupted and deleted during traffic; writes that must never be applied twice;
Envoy SIGKILLed during 2,000 calls and restarted; a slow-loris upstream and black-holed ports,
where every call must end by its deadline on both routes and with every client.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import math
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import requests

import mesh_client
from mesh_client import Mesh, MeshError, MeshTimeoutError, Route, call_info, call_options
from mesh_client.registry import Address, MeshConfig, load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import SidecarProcess, free_port, start_envoy, start_haproxy
from mesh_client.sidecar.render import CONNECT_TIMEOUT, envoy_bootstrap
from mesh_client.testing import Backend
from mesh_client.testing.loopback import LoopbackServer

from .conftest import CLIENT_KINDS, Caller, MeshWorld
from .servers import answering_haproxy, black_hole, read_request_head, serve_slow_loris, serve_wsgi

CALLS = 100
BUDGETS = {
    # mesh_client's budget: 20 % of recent calls, a floor of one retry per 10 s
    "budget": {"percent": 20, "min_per_second": 0.1, "ttl": 10},
    # what plain per-layer Envoy retry headers give: no limit in practice
    "plain": {"percent": 1000, "min_per_second": 1000, "ttl": 10},
}


def make_caller(sessions: dict[str, requests.Session], target: str, extra: str = "") -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        mode = parse_qs(environ.get("QUERY_STRING", ""))["mode"][0]
        r = sessions[mode].get(f"http://{target}/work?mode={mode}{extra}")
        body = json.dumps({"status": r.status_code}).encode()
        start_response(f"{r.status_code} X", [("content-type", "application/json"), ("content-length", str(len(body)))])
        return [body]

    return app


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str) -> Iterator[dict[str, Any]]:
    work: Path = tmp_path_factory.mktemp("faults")
    with ExitStack() as stack:
        c = stack.enter_context(Backend("c"))
        sessions: dict[str, dict[str, requests.Session]] = {"a": {}, "b": {}}
        apps: dict[str, Any] = {}

        def late(name: str) -> Any:
            def app(environ: Any, start_response: Any) -> Any:
                return apps[name](environ, start_response)

            return app

        a_addr = stack.enter_context(serve_wsgi(late("a")))
        b_addr = stack.enter_context(serve_wsgi(late("b")))
        envoy_http, envoy_admin = free_port(), free_port()
        meshes: dict[tuple[str, str], Mesh] = {}
        for mode, budget in BUDGETS.items():
            services = {
                name: {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(addr)],
                    "timeout": 5.0,
                    "retries": 2,
                    "retry_on": ["5xx"],
                    "retry_budget": budget,
                }
                for name, addr in (("b", b_addr), ("c", c.address))
            }
            for caller in ("a", "b"):
                data = {
                    "mesh": {
                        "caller": caller,
                        "envoy_http": f"127.0.0.1:{envoy_http}",
                        "envoy_admin": f"127.0.0.1:{envoy_admin}",
                        "default_route": "envoy",
                    },
                    "services": services,
                }
                meshes[(mode, caller)] = stack.enter_context(Mesh.from_dict(data))
                sessions[caller][mode] = stack.enter_context(meshes[(mode, caller)].requests_session())
        stack.enter_context(start_envoy(meshes[("budget", "a")].config, work / "envoy", binary=envoy_bin))
        apps["a"] = mesh_client.wsgi.MeshMiddleware(make_caller(sessions["a"], "b"), meshes[("budget", "a")])
        apps["b"] = mesh_client.wsgi.MeshMiddleware(
            make_caller(sessions["b"], "c", "&status=503"), meshes[("budget", "b")]
        )
        yield {"a": a_addr, "c": c}


@pytest.mark.parametrize("mode", ["plain", "budget"])
def test_retry_amplification_through_three_layers(chain: dict[str, Any], mode: str) -> None:
    c: Backend = chain["c"]
    before = len(c.records())
    with requests.Session() as session:
        for _ in range(CALLS):
            r = session.get(f"http://{chain['a']}/start?mode={mode}", timeout=10)
            assert r.status_code == 503  # C fails every request
    at_c = len(c.records()) - before
    per_call = at_c / CALLS
    print(f"{mode}: C received {at_c} requests for {CALLS} requests to A ({per_call:.2f} per request)")
    if mode == "plain":
        assert per_call == pytest.approx(9.0, abs=0.01)
    else:
        # each layer retries as much as its budget allows, and no more: 100 calls to A make 121
        # requests to B and 146 to C (docs/failure-modes.md)
        expected = budgeted_requests(budgeted_requests(CALLS, BUDGETS["budget"]), BUDGETS["budget"])
        assert expected == 146
        assert expected - 1 <= at_c <= expected + 1  # (the budget's float arithmetic may round once)


def budgeted_requests(calls: int, budget: dict[str, float], retries: int = 2) -> int:
    """Requests a layer sends on for ``calls`` calls that always fail, when each call may retry
    ``retries`` times within a retry budget (docs/registry.md): every call deposits ``percent`` %
    of a retry, every retry withdraws one, ``min_per_second`` x ``ttl`` retries are always allowed
    (a run shorter than the ttl). Exact arithmetic, from the documented definition."""
    balance = Fraction(budget["min_per_second"]).limit_denominator() * int(budget["ttl"])
    share = Fraction(budget["percent"]).limit_denominator() / 100
    requests = 0
    for _ in range(calls):
        balance += share
        made = min(retries, int(balance))
        balance -= made
        requests += 1 + made
    return requests


BUDGET_CALLS = 500
ATTEMPT_COUNT_SETTINGS = ("include_request_attempt_count", "include_attempt_count_in_response")


@pytest.mark.parametrize("reported", [False, True], ids=["stock-route", "attempt-count-in-response"])
def test_envoy_retry_budget_holds_whether_or_not_envoy_reports_attempts(
    tmp_path: Path, envoy_bin: str, reported: bool
) -> None:
    """500 GETs with retries = 3 to an always-503 upstream through real Envoy, the registry's
    default retry budget (20 % of calls + 10 retries per second over 10 s). On a stock route
    (neither attempt-count setting) Envoy reports no count: each 503 is charged the retries the
    call allowed. Either way the upstream sees at most 1.2 x calls + the floor, and more than the
    calls alone (the budget lets retries happen)."""
    with Backend("users") as upstream:
        data = {
            "mesh": {
                "caller": "checkout",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
                "default_route": "envoy",
            },
            "services": {
                "users": {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(upstream.address)],
                    "timeout": 5.0,
                    "retries": 3,
                    "retry_on": ["5xx"],
                }
            },
        }
        with Mesh.from_dict(data) as mesh:
            bootstrap = envoy_bootstrap(mesh.config)
            hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            for vhost in hcm["route_config"]["virtual_hosts"]:
                for setting in ATTEMPT_COUNT_SETTINGS:
                    if not reported:
                        del vhost[setting]
                    assert vhost.get(setting, False) is reported
            with start_envoy(mesh.config, tmp_path / "envoy", binary=envoy_bin, bootstrap=bootstrap):
                started = time.monotonic()
                attempts = []
                with mesh.requests_session() as session:
                    for _ in range(BUDGET_CALLS):
                        r = session.get("http://users/always?status=503")
                        assert r.status_code == 503
                        info = call_info(r)
                        assert info is not None
                        assert info.route is Route.ENVOY
                        attempts.append(info.attempts)
                elapsed = time.monotonic() - started
            budget = mesh.config.services["users"].retry_budget
    at_upstream = len(upstream.records())
    # the floor is min_per_second retries per second over each ttl window the run spanned
    floor = budget.min_per_second * budget.ttl * math.ceil(elapsed / budget.ttl)
    bound = (1 + budget.percent / 100) * BUDGET_CALLS + floor
    print(
        f"attempt count {'reported' if reported else 'not reported'}: the upstream received {at_upstream} requests "
        f"for {BUDGET_CALLS} calls ({at_upstream / BUDGET_CALLS:.2f} per call; bound {bound:.0f}) in {elapsed:.1f} s; "
        f"call_info attempts: {sum(attempts)} in all, at most {max(attempts)}"
    )
    assert BUDGET_CALLS * (1 + budget.percent / 100) <= at_upstream <= bound
    if reported:
        assert sum(attempts) == at_upstream  # Envoy's count, call by call
    else:
        assert set(attempts) == {1}  # as far as the client knows: Envoy's retries are not visible


def test_flag_file_corrupted_deleted_and_restored_during_traffic(world: MeshWorld, key: str) -> None:
    """The flag file is corrupted, then deleted, while calls go on: every call keeps the last good
    route (Envoy). Then a file with a *different* route (HAProxy) is written: the calls switch to it
    within a few of the flag client's 0.1 s polls, which shows the file is still being read."""
    world.set_route(Route.ENVOY)
    session = world.mesh.requests_session()
    events = [
        ("corrupted", lambda: world.flags_path.write_text('{"flags": {"mesh-route-users": {')),
        ("deleted", world.flags_path.unlink),
        ("rewritten", lambda: write_flag_file(world.flags_path, [route_flag("mesh-route-users", "haproxy")])),
    ]
    routes: dict[str, list[str]] = {}
    failures = 0
    switched_after: float | None = None
    for name, change in events:
        change()
        changed = time.monotonic()
        until = changed + 1.0  # ten of the flag client's 0.1 s polls
        while time.monotonic() < until:
            r = session.get(f"http://users/chaos?key={key}")
            failures += r.status_code != 200
            info = call_info(r)
            assert info is not None
            routes.setdefault(name, []).append(info.route.value)
            if name == "rewritten" and info.route is Route.HAPROXY and switched_after is None:
                switched_after = time.monotonic() - changed
    session.close()
    rewritten = routes["rewritten"]
    flips = sum(a != b for a, b in itertools.pairwise(routes["deleted"] + rewritten))
    print(
        f"flag chaos: {sum(map(len, routes.values()))} calls, {failures} failed; corrupted/deleted: "
        f"{ {k: sorted(set(v)) for k, v in routes.items() if k != 'rewritten'} }; the rewritten file's route was "
        f"in force after {switched_after} s ({len(rewritten)} calls, {flips} flip)"
    )
    assert failures == 0
    # the last good flags (Envoy) stayed in force through the corruption and the deletion
    assert set(routes["corrupted"]) == set(routes["deleted"]) == {"envoy"}
    # the new file was read: one flip to HAProxy, within the polls (0.1 s each, plus the SDK's reload)
    assert switched_after is not None
    assert switched_after <= 0.6
    assert flips == 1
    assert rewritten[-1] == "haproxy"


class _ApplyThenFail(socketserver.BaseRequestHandler):
    """Reads one request, applies it (records its x-request-id), then resets the connection or
    answers too late, as a server that crashed or stalled after doing the work would."""

    server: _FaultServer

    def handle(self) -> None:
        sock = self.request
        data = read_request_head(sock)
        if data is None:
            return
        head, _, body = data.partition(b"\r\n\r\n")
        headers = dict(line.decode("latin-1").split(":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return
            body += chunk
        with self.server.lock:
            self.server.applied.append(headers.get("x-request-id", ""))
        if self.server.mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: the client cannot know the write was applied
        else:
            self.server.stopping.wait(self.server.stall)  # answer after the client gave up


class _FaultServer(LoopbackServer):
    def __init__(self, mode: str, stall: float = 0.0) -> None:
        super().__init__(_ApplyThenFail, name=f"fault-{mode}")
        self.mode = mode
        self.stall = stall
        self.applied: list[str] = []
        self.lock = threading.Lock()


@pytest.mark.parametrize(("mode", "posts"), [("reset", 1000), ("timeout", 40)])
@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_no_write_is_applied_twice(
    tmp_path: Path, envoy_bin: str, haproxy_bin: str, route: str, mode: str, posts: int
) -> None:
    server = _FaultServer(mode, stall=1.0).start()
    data = {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "default_route": route,
        },
        "services": {
            "orders": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(server.address)],
                "timeout": 0.15,
                # everything that could replay a request, had POST been idempotent
                "retries": 3,
                "retry_on": ["5xx", "reset", "connect-failure", "gateway-error"],
            }
        },
    }
    outcomes: Counter[str] = Counter()
    try:
        with ExitStack() as stack:
            mesh = stack.enter_context(Mesh.from_dict(data))
            stack.enter_context(start_envoy(mesh.config, tmp_path / "envoy", binary=envoy_bin))
            stack.enter_context(start_haproxy(mesh.config, tmp_path / "haproxy", binary=haproxy_bin))
            session = stack.enter_context(mesh.requests_session())
            for _ in range(posts):
                try:
                    r = session.post("http://orders/v1/orders", data=b'{"item": 1}')
                    outcomes[f"status {r.status_code}"] += 1
                except requests.RequestException as exc:
                    outcomes[type(exc).__mro__[1].__name__] += 1
    finally:
        server.stop()
    applied = Counter(server.applied)
    twice = [rid for rid, n in applied.items() if n > 1]
    print(
        f"{route}/{mode}: {posts} POSTs, applied {len(server.applied)}, twice {len(twice)}, outcomes {dict(outcomes)}"
    )
    assert len(server.applied) == posts
    assert twice == []


# -- Envoy SIGKILLed during 2,000 calls, then restarted on the same ports ------------------------

KILL_CALLS = 2000
#: calls ended when Envoy is killed
KILL_AT = 500
#: calls in flight at any time (asyncio tasks sharing one client / threads with a session each)
KILL_WORKERS = {"httpx-async": 10, "requests": 20}
KILL_TIMEOUT = 1.0
#: scheduling slack on a busy 2-core machine, on top of the policy's timeout (+ the Envoy margin)
KILL_GRACE = 0.5


#: How far past the policy's timeout the client's own timer runs on the Envoy route, as
#: docs/routes.md documents it ("the budget plus a margin of 10 % of the budget, kept between 0.1 s
#: and 1 s"), for the timeouts these tests use. Written out, not taken from mesh_client.core.
DOCUMENTED_ENVOY_MARGIN = {0.5: 0.1, 1.0: 0.1}


class _KillAndRestart:
    """SIGKILLs a running Envoy (by its own process handle) once ``at`` calls have ended, then
    starts a new one on the same ports, in a thread, while the calls go on."""

    def __init__(self, envoy: SidecarProcess, config: MeshConfig, workdir: Path, binary: str, at: int) -> None:
        self.envoy = envoy
        self.config = config
        self.workdir = workdir
        self.binary = binary
        self.at = at
        self.lock = threading.Lock()
        self.ended = 0
        self.killed_at = 0.0
        #: read just before the kill: nothing can fail because of it earlier (killed_at is read
        #: after it, and a loaded machine may run the killer thread again only much later)
        self.kill_sent = 0.0
        self.ready_at = 0.0
        self.restarted: SidecarProcess | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._kill_and_restart, daemon=True)

    def call_ended(self) -> None:
        with self.lock:
            self.ended += 1
            if self.ended == self.at:
                self.thread.start()

    def _kill_and_restart(self) -> None:
        try:
            process = self.envoy.process
            if process is None:
                raise RuntimeError("Envoy was not running")
            self.kill_sent = time.monotonic()
            process.kill()  # SIGKILL to its own pid
            self.killed_at = time.monotonic()
            process.wait(5)
            self.restarted = start_envoy(self.config, self.workdir, binary=self.binary)
            self.ready_at = time.monotonic()
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        if self.thread.ident is not None:
            self.thread.join(30)  # start_envoy gives up after 15 s
        if self.restarted is not None:
            self.restarted.stop()


@dataclass(frozen=True)
class _Call:
    started: float
    ended: float
    outcome: str  # "ok" (via Envoy), "failed over", the MeshError class, "status N" or "unexpected"
    via_envoy: bool
    problem: str = ""


def _call_record(started: float, result: object, library_error: type[BaseException]) -> _Call:
    ended = time.monotonic()
    if isinstance(result, BaseException):
        if isinstance(result, MeshError) and isinstance(result, library_error):
            return _Call(started, ended, type(result).__mro__[1].__name__, False)
        return _Call(started, ended, "unexpected", False, repr(result))
    info = call_info(result)
    status = getattr(result, "status_code", None)
    if info is None:
        return _Call(started, ended, "unexpected", False, f"no call_info on {result!r}")
    if status != 200:
        return _Call(started, ended, f"status {status}", info.route is Route.ENVOY)
    if info.failed_over:
        return _Call(started, ended, "failed over", False)
    if info.route is Route.ENVOY:
        return _Call(started, ended, "ok", True)
    return _Call(started, ended, "unexpected", False, f"via {info.route.value} without a failover")


def _calls_async(mesh: Mesh, workers: int, chaos: _KillAndRestart) -> list[_Call]:
    calls: list[_Call] = []

    async def main() -> None:
        jobs = iter(range(KILL_CALLS))
        async with mesh.httpx_async_client(limits=httpx.Limits(max_connections=workers)) as client:

            async def worker() -> None:
                for _ in jobs:
                    started = time.monotonic()
                    result: object
                    try:
                        result = await client.get("http://users/v1/ping")
                    except Exception as exc:
                        result = exc
                    calls.append(_call_record(started, result, httpx.HTTPError))
                    chaos.call_ended()

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 120)

    asyncio.run(main())
    return calls


def _calls_in_threads(mesh: Mesh, workers: int, chaos: _KillAndRestart) -> list[_Call]:
    calls: list[_Call] = []
    jobs = iter(range(KILL_CALLS))
    lock = threading.Lock()

    def worker() -> None:
        with mesh.requests_session() as session:
            while True:
                with lock:
                    if next(jobs, None) is None:
                        return
                started = time.monotonic()
                result: object
                try:
                    result = session.get("http://users/v1/ping")
                except Exception as exc:
                    result = exc
                calls.append(_call_record(started, result, requests.RequestException))
                chaos.call_ended()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a caller thread was still running after 120 s"
    return calls


@pytest.mark.parametrize("kind", list(KILL_WORKERS))
def test_envoy_killed_mid_traffic_and_restarted(tmp_path: Path, envoy_bin: str, haproxy_bin: str, kind: str) -> None:
    flags_path = tmp_path / "flags.json"
    write_flag_file(flags_path, [route_flag("mesh-route-users", "envoy")])
    with ExitStack() as stack:
        upstream = stack.enter_context(answering_haproxy(tmp_path / "upstream", haproxy_bin))
        data = {
            "mesh": {
                "caller": "checkout",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
                "failover": True,
            },
            "flags": {"source": "file", "path": str(flags_path), "poll_interval": 0.1},
            "services": {
                "users": {
                    "haproxy": f"127.0.0.1:{free_port()}",
                    "endpoints": [str(upstream)],
                    "timeout": KILL_TIMEOUT,
                    "retries": 2,
                    "retry_on": ["gateway-error", "connect-failure", "reset"],
                }
            },
        }
        config = load_mapping(data)
        envoy = stack.enter_context(start_envoy(config, tmp_path / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, tmp_path / "haproxy", binary=haproxy_bin))
        mesh = stack.enter_context(Mesh(config))
        assert mesh.route_for("users").route is Route.ENVOY
        chaos = _KillAndRestart(envoy, config, tmp_path / "envoy-restarted", envoy_bin, KILL_AT)
        stack.callback(chaos.close)
        run = _calls_async if kind == "httpx-async" else _calls_in_threads
        calls = run(mesh, KILL_WORKERS[kind], chaos)
        chaos.thread.join(30)
        assert chaos.error is None, f"killing or restarting Envoy failed: {chaos.error!r}"
        assert chaos.restarted is not None
        # back on Envoy: the first call that set out after the new Envoy was ready and went through it
        back = min((c.ended for c in calls if c.via_envoy and c.started >= chaos.ready_at), default=None)
        if back is None:  # the traffic ended first: probe on (the circuit's pause is 1 s, doubling up to 30 s)
            with mesh.requests_session() as session:
                until = time.monotonic() + 35
                while back is None:
                    info = call_info(session.get("http://users/v1/ping"))
                    if info is not None and info.route is Route.ENVOY and not info.failed_over:
                        back = time.monotonic()
                    assert time.monotonic() < until, "traffic did not return to the restarted Envoy within 35 s"
    outcomes = Counter(c.outcome for c in calls)
    failed = {name: n for name, n in outcomes.items() if name not in ("ok", "failed over")}
    deadline = KILL_TIMEOUT + DOCUMENTED_ENVOY_MARGIN[KILL_TIMEOUT]
    slow = max(calls, key=lambda c: c.ended - c.started)
    slowest = slow.ended - slow.started
    ready, returned = chaos.ready_at - chaos.killed_at, back - chaos.killed_at
    print(
        f"{kind}: {len(calls)} calls, {KILL_WORKERS[kind]} at a time, Envoy SIGKILLed after {KILL_AT}: "
        f"ok via Envoy {outcomes['ok']}, failed over {outcomes['failed over']}, failed {sum(failed.values())} "
        f"{failed}; slowest call {slowest:.3f} s ({slow.outcome}; deadline {deadline:.1f} s); the new Envoy was ready "
        f"{ready:.2f} s after the kill, traffic was back on it {returned:.2f} s after the kill"
    )
    assert [c.problem for c in calls if c.problem] == []
    assert len(calls) == KILL_CALLS
    # every call succeeded (via Envoy, or failed over to HAProxy) or raised a clear MeshError
    assert all(name.startswith("Mesh") for name in failed), failed
    assert outcomes["failed over"] > 0
    assert slowest <= deadline + KILL_GRACE
    # the circuit probed again after its first pauses (1 s, 2 s...), not after the 30 s cap
    assert returned <= 2 * ready + 2.0
    # what the kill costs, and when: a call fails only on a connection to the dying Envoy, at most
    # once per connection (one per worker); failovers happen from the kill until traffic is back
    # on the new Envoy; every call that ended before the kill went through Envoy
    killed = chaos.kill_sent
    failures = [c for c in calls if c.outcome not in ("ok", "failed over")]
    assert len(failures) <= KILL_WORKERS[kind], sorted(
        (round(c.started - chaos.killed_at, 3), round(c.ended - chaos.killed_at, 3), c.outcome, c.problem)
        for c in failures
    )
    assert all(killed <= c.ended <= chaos.killed_at + deadline + KILL_GRACE for c in failures), sorted(
        (round(c.started - killed, 3), round(c.ended - killed, 3), c.outcome) for c in failures
    )
    # (a call that set out just before the kill may reach the dead Envoy after it: what counts is
    # that it ended after the kill)
    late = [
        (round(c.started - chaos.killed_at, 3), round(c.ended - chaos.killed_at, 3))
        for c in calls
        if c.outcome == "failed over" and not (killed <= c.ended and c.started <= back)
    ]
    assert late == [], f"failovers outside the kill..back window (back at {returned:.3f} s), from the kill: {late}"
    assert {c.outcome for c in calls if c.ended < killed} == {"ok"}


# -- a slow-loris upstream and black-holed ports: every call ends by its deadline ----------------

#: the retries the black holes' services allow
HOLE_RETRIES = 2
#: Envoy's connect timeout (mesh_client.sidecar.render's CONNECT_TIMEOUT)
HOLE_CONNECT_TIMEOUT = float(CONNECT_TIMEOUT.removesuffix("s"))
HOLE_TIMEOUT = 0.5
HOLE_GRACE = 0.25
#: case: (service, path)
HOLE_CASES = {
    "slow-loris": ("loris", "/v1/items"),
    "slow-loris-chunked": ("loris", "/v1/items?chunked"),
    "silent-upstream": ("silent", "/v1/items"),
    "dropping-upstream": ("dropped", "/v1/items"),
    "stuck-sidecar": ("stuck", "/v1/items"),
}


@dataclass(frozen=True)
class Holes:
    #: services loris, silent and dropped behind a real Envoy and HAProxy
    mesh: Mesh
    #: service stuck, whose Envoy listener and HAProxy port are a black hole
    stuck: Mesh
    envoy_admin: Address


@pytest.fixture(scope="module")
def holes(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[Holes]:
    work = tmp_path_factory.mktemp("holes")
    with ExitStack() as stack:
        loris = stack.enter_context(serve_slow_loris(interval=0.2))
        silent = stack.enter_context(black_hole(handshakes=True))
        dropped = stack.enter_context(black_hole(handshakes=False))

        def service(endpoint: Address) -> dict[str, Any]:
            return {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(endpoint)],
                "timeout": HOLE_TIMEOUT,
                "retries": HOLE_RETRIES,
                "retry_on": ["gateway-error", "connect-failure", "reset"],
            }

        data = {
            "mesh": {
                "caller": "checkout",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
            },
            "services": {"loris": service(loris), "silent": service(silent), "dropped": service(dropped)},
        }
        mesh = stack.enter_context(Mesh.from_dict(data))
        stack.enter_context(start_envoy(mesh.config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(mesh.config, work / "haproxy", binary=haproxy_bin))
        stuck_data = {
            "mesh": {"caller": "checkout", "envoy_http": str(silent)},
            "services": {"stuck": {"haproxy": str(silent), "timeout": HOLE_TIMEOUT}},
        }
        stuck = stack.enter_context(Mesh.from_dict(stuck_data))
        assert mesh.config.envoy_admin is not None
        yield Holes(mesh, stuck, mesh.config.envoy_admin)


def envoy_counter(admin: Address, name: str) -> int:
    conn = http.client.HTTPConnection(admin.host, admin.port, timeout=5)
    try:
        conn.request("GET", f"/stats?filter=^{name}$")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


#: calls made at once into each black hole (one for the slow-loris cases)
HOLE_CALLS = 3
#: no call may end earlier than this before the timeout: an early answer (a 503 from a proxy that
#: gave up by itself) would mean the deadline was not what ended the call
HOLE_EARLY = 0.01


def hole_outcome(result: object) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    info = call_info(result)
    return f"{getattr(result, 'status_code', '?')}, envoy_error {info.envoy_error if info else '?'}"


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("route", ["envoy", "haproxy"])
@pytest.mark.parametrize("case", list(HOLE_CASES))
def test_every_call_ends_by_its_deadline(
    holes: Holes, make_caller: Callable[[str, Mesh], Caller], case: str, route: str, kind: str
) -> None:
    """Every call ends within [timeout, timeout (+ the documented Envoy margin) + grace]: not
    later, and not earlier either. Black holes get several calls at once."""
    service, path = HOLE_CASES[case]
    caller = make_caller(kind, holes.stuck if service == "stuck" else holes.mesh)
    envoy_timeouts = f"cluster.{service}.upstream_rq_timeout"
    before = envoy_counter(holes.envoy_admin, envoy_timeouts)
    calls = 1 if service == "loris" else HOLE_CALLS
    with call_options(route=route):
        results = caller.request_at_once(calls, "GET", f"http://{service}{path}")
    deadline = HOLE_TIMEOUT + (DOCUMENTED_ENVOY_MARGIN[HOLE_TIMEOUT] if route == "envoy" else 0.0)
    for result in results:
        info = result.info if isinstance(result, MeshError) else call_info(result)
        assert info is not None, hole_outcome(result)
        shape = hole_outcome(result)
        print(f"{case} via {route} with {kind}: ended after {info.elapsed:.3f} s (deadline {deadline:.2f} s): {shape}")
        status = getattr(result, "status_code", None)
        if route == "envoy" and service == "dropped" and (status, info.envoy_error) == (503, "connect_failure"):
            # Envoy fails every request pending on a connection whose connect timed out together
            # (upstream_rq_pending_failure_eject), so calls made at once can use up all their
            # retries before the timeout: then it answers 503 after the last try's connect failed,
            # at least one connect timeout in, never after the deadline
            assert info.attempts == HOLE_RETRIES + 1, shape
            assert HOLE_CONNECT_TIMEOUT - HOLE_EARLY <= info.elapsed <= deadline + HOLE_GRACE, shape
            continue
        # via Envoy, the client's own timer ends a call only at the timeout plus the margin
        earliest = deadline if route == "envoy" and isinstance(result, MeshTimeoutError) else HOLE_TIMEOUT
        assert earliest - HOLE_EARLY <= info.elapsed <= deadline + HOLE_GRACE, shape
        if route == "envoy" and service in ("silent", "dropped"):
            # Envoy answers itself at the call's timeout (a hanging connect times out after 0.25 s and
            # is retried; the retry's connect cannot time out before the call's timeout does)
            assert (getattr(result, "status_code", None), info.envoy_error) == (504, "timeout"), shape
        elif route == "haproxy" and service == "dropped" and not isinstance(result, BaseException):
            # HAProxy's 503 page after two 0.25 s connect timeouts: at the timeout, racing the client
            assert getattr(result, "status_code", None) == 503, shape
        else:
            assert isinstance(result, MeshTimeoutError), shape
            assert isinstance(result, caller.timeout_error), shape
        if service == "loris":
            assert "was not complete" in str(result)
            # on the Envoy route Envoy's own timeout covered the body: it stopped passing it on
            assert envoy_counter(holes.envoy_admin, envoy_timeouts) - before == (1 if route == "envoy" else 0)


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_a_caller_that_streams_gets_the_response_at_once_and_reads_the_body_itself(holes: Holes, route: str) -> None:
    url = "http://loris/v1/items"
    seen: dict[str, tuple[float, bytes]] = {}
    with call_options(route=route):
        started = time.monotonic()
        with holes.mesh.requests_session() as session, session.get(url, stream=True) as r:
            seen["requests"] = (time.monotonic() - started, r.raw.read(1))
        started = time.monotonic()
        with holes.mesh.httpx_client() as client, client.stream("GET", url) as response:
            seen["httpx"] = (time.monotonic() - started, next(response.iter_raw(1)))

        async def async_stream() -> tuple[float, bytes]:
            async with holes.mesh.httpx_async_client() as client:
                started = time.monotonic()
                async with client.stream("GET", url) as response:
                    took = time.monotonic() - started
                    async for chunk in response.aiter_raw(1):
                        return took, chunk
            raise AssertionError("no body")

        seen["httpx-async"] = asyncio.run(async_stream())
    print(f"streamed via {route}: " + ", ".join(f"{k} headers after {t * 1000:.0f} ms" for k, (t, _) in seen.items()))
    for took, first in seen.values():
        # the headers (HAProxy passes them on with the first body byte, 0.2 s), not the 20 s body,
        # nor an error at the call's 0.5 s timeout
        assert took < HOLE_TIMEOUT - 0.05
        assert first == b"x"
