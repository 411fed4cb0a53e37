"""``FakeMesh``: an in-process Envoy sidecar and HAProxy ports, for tests that must not start them.

Installed as a :class:`~mesh_client.wire.Wire`, it receives each attempt exactly as the real proxy
would (address, headers, body) and answers as that proxy would:

- **Envoy route**: it reads the ``x-envoy-*`` headers the client set and applies them the way
  Envoy's router does: the total timeout (``504 upstream request timeout``), the per-try timeout,
  retries by retry-on token and ``x-envoy-max-retries`` with Envoy's jittered back-off, ``503 no
  healthy upstream`` for a service with no handler, ``404`` for a host it has no route for, and
  it adds ``x-request-id``, ``x-envoy-expected-rq-timeout-ms``, ``x-envoy-attempt-count`` (both
  ways) and ``x-envoy-upstream-service-time`` as the rendered sidecar config does.
- **HAProxy route**: requests pass through untouched, one upstream request per attempt; its own
  error pages for refused (503) and broken (502) connections.
- **Thrift**: Envoy's thrift_proxy and HAProxy's TCP mode (neither times out or retries: the client
  does), with Envoy's ``TApplicationException`` replies.

Time is virtual (:mod:`mesh_client.clock`): a 30 s delay costs nothing, and the call still sees 30 s
pass. The project's conformance suites (``tests/integration/test_conformance*.py``) run every
scenario against this fake and against the real Envoy and HAProxy, with the same outcome.

Beside it: :mod:`.calls` (what it records), :mod:`.handlers` (what ``add`` registers) and
:mod:`.proxies` (the proxies' reply rules); their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .. import clock
from ..mesh import Mesh
from ..policy import Route
from ..registry import MeshConfig
from ..shadow.runner import drain_all
from ..shadow.stats import ShadowEvent, ShadowStats
from ..steps import Failure
from ..wire import WireFailure, WireReply, WireRequest, use_wire
from .calls import Call, Headers, ProxyRequest, UpstreamRequest
from .envoy_model import BackOff, RetryCircuit
from .handlers import Handler, resolve, thrift_args, thrift_result
from .proxies import (
    ENVOY_ROUTE_TIMEOUT,
    HAPROXY_CONNECT_PAUSE,
    HAPROXY_SERVER_TIMEOUT,
    Answer,
    RouterRules,
    envoy_answer,
    envoy_headers,
    forwarded_by_envoy,
    haproxy_page,
    local_reply,
    status_text,
    thrift_local_reply,
)
from .replies import Reply
from .shadowing import ShadowRecorder
from .variants import reached_variant

__all__ = [
    "ENVOY_ROUTE_TIMEOUT",
    "HAPROXY_CONNECT_PAUSE",
    "HAPROXY_SERVER_TIMEOUT",
    "Call",
    "FakeMesh",
    "Headers",
    "ProxyRequest",
    "UpstreamRequest",
]

#: real seconds a stopping fake waits for the shadow copies still in flight
_DRAIN_AT_EXIT = 5.0


class FakeMesh:
    """An in-process Envoy egress listener and HAProxy ports for every :class:`Mesh` (see the
    module docs). Use it through the ``fake_mesh`` fixture, or as a context manager."""

    def __init__(self, config: MeshConfig | None = None, *, seed: int = 0) -> None:
        self.config = config
        self.clock = clock.VirtualClock()
        self.calls: list[Call] = []
        self.unexpected: list[Call] = []
        self._handlers: list[Handler] = []
        self._by_call: dict[int, Call] = {}
        self._lock = threading.RLock()
        self._random = random.Random(seed)
        self._envoy_down = False
        self._haproxy_down: set[str] = set()
        self._envoy_unknown: set[str] = set()
        #: Envoy's retry circuit breaker per cluster (one per service)
        self._breakers: dict[str, RetryCircuit] = {}
        self._meshes: list[Mesh] = []
        self._stack: contextlib.ExitStack | None = None
        self._shadow = ShadowRecorder()

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeMesh:
        stack = contextlib.ExitStack()
        stack.enter_context(clock.use_virtual_clock(self.clock))
        stack.enter_context(use_wire(self))
        stack.enter_context(self._shadow.recording())
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        # the shadow copies still in flight were made under this fake: they end, and are recorded,
        # here, not in the next test's fake (a test's last call's copy may still be running)
        drain_all(_DRAIN_AT_EXIT)
        for mesh in self._meshes:
            mesh.close()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def mesh(self, registry: str | Mapping[str, Any] | MeshConfig, **kwargs: Any) -> Mesh:
        """A :class:`Mesh` for ``registry`` (a TOML path, registry data, or a loaded config), closed
        when the fake stops. Its calls go to this fake like every other mesh's."""
        if isinstance(registry, MeshConfig):
            mesh = Mesh(registry, **kwargs)
        elif isinstance(registry, Mapping):
            mesh = Mesh.from_dict(registry, **kwargs)
        else:
            mesh = Mesh.from_file(registry, **kwargs)
        self._meshes.append(mesh)
        if self.config is None:
            self.config = mesh.config
        return mesh

    # -- the test's controls -----------------------------------------------------------------------

    def add(
        self,
        service: str,
        *replies: Any,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        variant: str | None = None,
    ) -> None:
        """Answer requests to ``service`` (optionally only ``method`` / ``path``) with ``replies``:
        one :class:`Reply` for every request, several in turn (the last repeats), a callable
        ``(UpstreamRequest) -> Reply`` or, for Thrift, a handler object with the service's methods.
        Handlers are tried in the order they were added. With ``variant``, they answer the requests
        that reach that variant of the service (a routing override sent them there: see
        docs/overrides.md) and the others answer only the service's main deployment."""
        if not replies:
            raise ValueError(f"fake_mesh.add({service!r}) needs at least one reply (e.g. reply(200))")
        for r in replies:
            if r is None:
                raise TypeError(f"fake_mesh.add({service!r}): a reply is None; use reply(...) or a callable")
        if self.config is not None and service not in self.config.services:
            known = ", ".join(sorted(self.config.services)) or "none"
            raise ValueError(f"fake_mesh.add: {service!r} is not a service of the registry (services: {known})")
        if variant is not None and self.config is not None and variant not in self.config.services[service].variants:
            known = ", ".join(self.config.services[service].variants) or "none"
            raise ValueError(f"fake_mesh.add: {service!r} declares no variant {variant!r} (variants: {known})")
        with self._lock:
            self._handlers.append(Handler(service, tuple(replies), method, path, variant))

    def reset(self) -> None:
        """Forget every handler and recorded call (the sidecar states and the clock stay)."""
        with self._lock:
            self._handlers.clear()
            self.calls.clear()
            self.unexpected.clear()
            self._by_call.clear()

    def envoy_down(self, down: bool = True) -> None:
        """Make the Envoy sidecar refuse connections (``down=False``: back up)."""
        self._envoy_down = down

    def haproxy_down(self, service: str, down: bool = True) -> None:
        """Make ``service``'s HAProxy port refuse connections."""
        (self._haproxy_down.add if down else self._haproxy_down.discard)(service)

    def envoy_forgets(self, service: str) -> None:
        """Envoy has no route for ``service`` (a sidecar rendered from an older registry): 404."""
        self._envoy_unknown.add(service)

    def advance(self, seconds: float) -> None:
        """Let virtual time pass for everyone (budgets refill, circuits reopen)."""
        self.clock.advance(seconds)

    # -- reading back ------------------------------------------------------------------------------

    def shadow_stats(self, service: str, *, timeout: float = 5.0) -> ShadowStats:
        """The shadow copies of ``service``'s calls made during the test (every mesh's), once the
        copies in flight have finished: ``compared``, ``matched``, ``mismatched``, ``errors``,
        ``skipped`` (see :class:`~mesh_client.testing.shadowing.ShadowRecorder`)."""
        return self._shadow.stats(service, timeout=timeout)

    def shadow_events(self, service: str, *, timeout: float = 5.0) -> list[ShadowEvent]:
        """Each copy's outcome for ``service`` (a mismatch's differences included)."""
        return self._shadow.events(service, timeout=timeout)

    def calls_to(self, service: str) -> list[Call]:
        return [c for c in self.calls if c.service == service]

    def assert_called(
        self,
        service: str,
        *,
        times: int | None = None,
        method: str | None = None,
        path: str | None = None,
        route: Route | str | None = None,
        variant: str | None = None,
    ) -> list[Call]:
        """The calls to ``service`` matching the filters; fails unless there are ``times`` of them
        (or at least one), saying which calls were made instead."""
        __tracebackhide__ = True
        want_route = Route(route) if route is not None else None
        found = [
            c
            for c in self.calls_to(service)
            if (method is None or c.method.upper() == method.upper())
            and (path is None or c.path == path)
            and (want_route is None or c.route is want_route)
            and (variant is None or c.variant == variant)
        ]
        ok = len(found) == times if times is not None else bool(found)
        if not ok:
            what = " ".join(x for x in (method, path) if x) or "any request"
            via = (f" via {want_route.value}" if want_route else "") + (f" to variant {variant}" if variant else "")
            expected = f"{times} call(s)" if times is not None else "at least one call"
            raise AssertionError(
                f"fake_mesh: expected {expected} to {service!r} ({what}{via}), got {len(found)}.\n" + self._calls_text()
            )
        return found

    def assert_not_called(self, service: str) -> None:
        __tracebackhide__ = True
        if self.calls_to(service):
            raise AssertionError(f"fake_mesh: expected no call to {service!r}.\n" + self._calls_text())

    def last_call(self, service: str | None = None) -> Call:
        __tracebackhide__ = True
        calls = self.calls if service is None else self.calls_to(service)
        if not calls:
            raise AssertionError(f"fake_mesh: no call to {service or 'any service'} was made.\n" + self._calls_text())
        return calls[-1]

    def _calls_text(self) -> str:
        if not self.calls:
            return "No mesh call was made."
        lines = [f"  {i}. {c.describe()}" for i, c in enumerate(self.calls, 1)]
        return "Calls made:\n" + "\n".join(lines)

    def unused_handlers(self) -> list[str]:
        return [h.describe() for h in self._handlers if h.used == 0]

    def problems(self, *, assert_all_used: bool = True, allow_unexpected: bool = False) -> list[str]:
        """What a test's teardown should complain about (empty when all is well)."""
        problems = []
        if not allow_unexpected and self.unexpected:
            lines = "\n".join(f"  - {c.describe()}" for c in self.unexpected)
            problems.append(
                f"{len(self.unexpected)} call(s) reached a service with no handler (they got 503 no healthy "
                f"upstream / No server is available):\n{lines}\nAdd one, e.g. "
                f"fake_mesh.add({self.unexpected[0].service!r}, reply(200)), or mark the test "
                "@pytest.mark.fake_mesh(allow_unexpected=True)."
            )
        unused = self.unused_handlers()
        if assert_all_used and unused:
            lines = "\n".join(f"  - {u}" for u in unused)
            problems.append(
                f"{len(unused)} handler(s) were never used:\n{lines}\nRemove them, or mark the test "
                "@pytest.mark.fake_mesh(assert_all_used=False)."
            )
        return problems

    # -- the wire ----------------------------------------------------------------------------------

    def exchange(self, request: WireRequest) -> WireReply | WireFailure:
        with self._lock:
            call = self._record(request)
        if request.route is Route.ENVOY and self._envoy_down:
            result: WireReply | WireFailure = WireFailure(
                Failure.CONNECT, f"connection refused by {request.address} (fake_mesh: Envoy is down)"
            )
            elapsed = 0.0
        elif request.route is Route.HAPROXY and request.service in self._haproxy_down:
            result = WireFailure(
                Failure.CONNECT, f"connection refused by {request.address} (fake_mesh: HAProxy is down)"
            )
            elapsed = 0.0
        elif request.thrift is not None:
            result, elapsed = self._thrift(request, call)
        elif request.route is Route.ENVOY:
            result, elapsed = self._envoy(request, call)
        else:
            result, elapsed = self._haproxy(request, call)
        if elapsed > request.timeout:  # the client's own timer fires first
            result, elapsed = WireFailure(Failure.TIMEOUT, f"no answer within {request.timeout:.3f} s"), request.timeout
        clock.sleep(elapsed)
        if isinstance(result, WireFailure):
            outcome = f"{result.kind.value} failure"
        else:
            outcome = status_text(result, request.header_prefix)
        with self._lock:
            call.sent[-1] = dataclasses.replace(call.sent[-1], outcome=outcome)
        return result

    def _record(self, request: WireRequest) -> Call:
        split = urlsplit(request.target) if request.thrift is None else None
        path = split.path if split is not None else request.method
        call = self._by_call.get(request.call)
        if call is None:
            call = Call(request.service, request.method, path, request.body)
            self._by_call[request.call] = call
            self.calls.append(call)
        proxy = ProxyRequest(request.route, str(request.address), Headers(request.headers), request.timeout)
        call.sent.append(proxy)
        return call

    def _handler(self, service: str, method: str, path: str, variant: str | None) -> Handler | None:
        with self._lock:
            for h in self._handlers:
                if h.service == service and h.variant == variant and h.matches(method, path):
                    return h
        return None

    def _serve(self, request: WireRequest, call: Call, headers: Headers, attempt: int, at: float) -> Reply | None:
        """Hand the request to the service's handler: its reply, or None when there is none."""
        split = urlsplit(request.target)
        path = split.path if request.thrift is None else request.method
        args = thrift_args(request.thrift.args) if request.thrift is not None else {}
        variant = reached_variant(self.config, request)
        handler = self._handler(request.service, request.method, path, variant)
        upstream = UpstreamRequest(
            service=request.service,
            route=request.route,
            method=request.method,
            path=path,
            query=dict(parse_qsl(split.query)) if request.thrift is None else {},
            headers=headers,
            body=request.body,
            attempt=attempt,
            args=args,
            received_at=at,
            variant=variant,
        )
        if handler is None:
            with self._lock:
                if call not in self.unexpected:
                    self.unexpected.append(call)
            return None
        with self._lock:
            spec = handler.next()
        if isinstance(spec, Reply) and spec.fault == "refuse":
            return spec  # nothing reached the instance
        with self._lock:
            call.upstream.append(upstream)
        return resolve(spec, upstream, request)

    # -- HAProxy: passes requests through, one upstream request per attempt ------------------------

    def _haproxy(self, request: WireRequest, call: Call) -> tuple[WireReply | WireFailure, float]:
        headers = Headers(request.headers)
        answer = self._try(request, call, headers, 1, window=HAPROXY_SERVER_TIMEOUT)
        if answer is None:
            return haproxy_page(503), 0.0
        if answer.fault == "refuse":
            return haproxy_page(503), HAPROXY_CONNECT_PAUSE
        if answer.fault == "reset":
            return haproxy_page(502), answer.elapsed
        if answer.fault == "timeout":
            return haproxy_page(504), answer.elapsed
        return WireReply(answer.status, answer.headers, answer.body), answer.elapsed

    # -- Envoy's router, from the x-envoy-* headers ------------------------------------------------

    def _envoy(self, request: WireRequest, call: Call) -> tuple[WireReply | WireFailure, float]:
        p = request.header_prefix
        sent = Headers(request.headers)
        if request.service in self._envoy_unknown:
            return WireReply(404, envoy_headers(0, p)), 0.0
        known = self.config.services.get(request.service) if self.config is not None else None
        rules = RouterRules.read(sent, p, known.policy.timeout if known is not None else ENVOY_ROUTE_TIMEOUT)
        forwarded = forwarded_by_envoy(sent, p)
        limit, per_try, retries_left = rules.limit, rules.per_try, rules.retries
        with self._lock:
            breaker = self._breakers.setdefault(request.service, RetryCircuit())
        backoff = BackOff(self._random)
        start = clock.monotonic()
        slot: list[float] | None = None  # the breaker's slot of the retry being made
        t, n = 0.0, 0
        while True:
            n += 1
            window = min(per_try, limit - t) if per_try else limit - t
            expected = min(per_try or limit, limit - t)
            extra = [(f"{p}-attempt-count", str(n))]
            if not math.isinf(expected):
                extra.insert(0, (f"{p}-expected-rq-timeout-ms", str(max(1, math.floor(expected * 1000)))))
            answer = self._try(request, call, Headers([*forwarded, *extra]), n, window=window, at=start + t)
            t += answer.elapsed if answer is not None else 0.0
            if slot is not None:  # the retried try's outcome is in: its breaker slot is free again
                breaker.give_back(slot, start + t)
                slot = None
            if answer is None:
                return local_reply(503, "no healthy upstream", n - 1 or 1, p), t
            if answer.fault == "timeout" and t >= limit:
                return local_reply(504, "upstream request timeout", n, p), t
            if retries_left > 0 and rules.retries_after(answer, p):
                retries_left -= 1
                slot = breaker.take(start + t)
                if slot is None:  # retry overflow: the caller gets what asked for the retry
                    return envoy_answer(answer, n, p), t
                wait = backoff.next_wait()
                if t + wait >= limit:
                    breaker.give_back(slot, start + limit)
                    return local_reply(504, "upstream request timeout", n, p), limit
                t += wait
                continue
            return envoy_answer(answer, n, p), t

    def _try(
        self, request: WireRequest, call: Call, headers: Headers, n: int, *, window: float, at: float | None = None
    ) -> Answer | None:
        """One upstream request (None: the service has no handler), bounded by ``window``; it
        reaches the instance at ``at`` (now, unless Envoy's earlier tries and back-off came first)."""
        spec = self._serve(request, call, headers, n, clock.monotonic() if at is None else at)
        if spec is None:
            return None
        if spec.fault == "refuse":
            return Answer(0.0, fault="refuse")
        if spec.delay >= window:
            return Answer(window, fault="timeout")
        if spec.fault == "reset":
            return Answer(spec.delay, fault="reset")
        if request.thrift is not None:
            return Answer(spec.delay, thrift=thrift_result(request, spec))
        return Answer(spec.delay, spec.status, spec.headers, spec.body)

    # -- Thrift: no proxy timeouts or retries, Envoy's TApplicationException replies ---------------

    def _thrift(self, request: WireRequest, call: Call) -> tuple[WireReply | WireFailure, float]:
        envoy = request.route is Route.ENVOY
        cluster = request.service
        if envoy and request.service in self._envoy_unknown:
            return thrift_local_reply(f"no route for method '{request.target}'", unknown_method=True), 0.0
        answer = self._try(request, call, Headers(request.headers), 1, window=request.timeout)
        if answer is None:
            if not envoy:
                return WireFailure(Failure.RESET, "HAProxy closed the connection: no server is available"), 0.0
            return thrift_local_reply(f"no healthy upstream for '{cluster}'"), 0.0
        if answer.fault == "timeout":
            return WireFailure(Failure.TIMEOUT, "no reply in time"), answer.elapsed
        if answer.fault in ("refuse", "reset"):
            if not envoy:
                return WireFailure(Failure.RESET, "HAProxy closed the connection"), answer.elapsed
            return thrift_local_reply(f"connection failure '{cluster}'"), answer.elapsed
        return WireReply(200, thrift_reply=answer.thrift), answer.elapsed
