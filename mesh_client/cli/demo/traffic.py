"""The demo's traffic and what it did: steady calls from every caller to every demo service in
background threads (:class:`Traffic`), and every call's outcome tallied by step and service
(:class:`Ledger`), checked against the flag once every caller had loaded it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from ...info import call_info
from ...mesh import Mesh
from ...policy import Route
from .options import DEMO_SERVICES, RATE, THREADS

__all__ = ["CallOutcome", "Caller", "Ledger", "Step", "Tally", "Traffic", "call"]


@dataclass
class Tally:
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
class Step:
    """One step of the walk: its percentage, flag version, tallies and the callers' decisions."""

    number: int
    percent: float
    version: int
    tallies: dict[str, Tally]
    started: float = 0.0
    loaded_in: float | None = None  # seconds until every caller had loaded the flag
    ended: float | None = None
    settled_epoch: int | None = None
    decisions: dict[str, dict[str, Route]] = field(default_factory=dict)  # caller -> service -> route

    def envoy_callers(self, service: str) -> list[str]:
        return [caller for caller, routes in self.decisions.items() if routes[service] is Route.ENVOY]


@dataclass(frozen=True)
class CallOutcome:
    """How one call went (``route`` None: it failed, ``error`` says how)."""

    route: Route | None  # None: the call failed
    via_envoy: bool = False
    latency: float = 0.0
    attempts: int = 1
    failed_over: bool = False
    error: str = ""


class Ledger:
    """Every call's outcome, by step and service; shared by the traffic threads and the walk."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.epoch = 0
        self.current: Step | None = None
        self.error_samples: list[str] = []
        self.total_errors = 0

    def begin(self) -> tuple[Step | None, int]:
        with self.lock:
            return self.current, self.epoch

    def flip(self, step: Step) -> None:
        """A new step begins: calls in flight belong to no settled step any more."""
        with self.lock:
            self.epoch += 1
            self.current = step

    def settle(self, step: Step, decisions: dict[str, dict[str, Route]]) -> None:
        """Every caller has loaded the step's flag: from now on calls are checked against it."""
        with self.lock:
            self.epoch += 1
            step.settled_epoch = self.epoch
            step.decisions = decisions

    def record(self, step: Step, epoch: int, caller: str, service: str, outcome: CallOutcome) -> None:
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
class Caller:
    """A caller service: its own Mesh and requests session."""

    name: str
    mesh: Mesh
    session: requests.Session


def call(caller: Caller, service: str, n: int) -> CallOutcome:
    """One call from ``caller`` to ``service``, checked: status 200, call_info, the right backend."""
    started = time.perf_counter()
    try:
        r = caller.session.get(f"http://{service}/v1/{service}/{n}")
    except Exception as exc:
        return CallOutcome(None, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    info = call_info(r)
    if r.status_code != 200:
        via = f" via {info.route.value}" if info else ""
        return CallOutcome(None, error=f"status {r.status_code}{via}: {r.text[:120]!r}")
    if info is None:
        return CallOutcome(None, error="the response carries no call_info")
    if r.headers.get("x-demo-service") != service:
        return CallOutcome(None, error=f"answered by {r.headers.get('x-demo-service')!r}, not {service!r}")
    return CallOutcome(
        info.route,
        via_envoy=r.headers.get("x-demo-via-envoy") == "yes",
        latency=latency,
        attempts=info.attempts,
        failed_over=info.failed_over,
    )


class Traffic:
    """Steady calls from every caller to every demo service, at a bounded rate, in background threads."""

    def __init__(self, callers: list[Caller], ledger: Ledger, rate: float = RATE, threads: int = THREADS) -> None:
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

    def _run(self, pairs: list[tuple[Caller, str]]) -> None:
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
                self._ledger.record(step, epoch, caller.name, service, call(caller, service, n))
        except BaseException as exc:  # a bug here must fail the demo, not vanish with the thread
            self.crashed.append(f"{threading.current_thread().name}: {type(exc).__name__}: {exc}")
