"""The floor of issue 19: the least client CPU per call a wrapper at mesh_client's cut point must
add, measured against the plain client and the real mesh client in one run:
``python -m benchmarks.floor [--rounds N] [--calls N] [--no-thrift] [--no-ablation]``.

Not a section of the full bench (``python -m benchmarks``): it answers one question once, whether
issue 19's targets (10 µs CPU added per HTTP call without network, 15 µs and 1.15x for Thrift
framed) are within reach of *any* Python library that keeps the behaviour of the public spec,
and it takes about a minute on its own (on the 2-core machine of docs/performance.md).

**The floor** is a wrapper written for speed alone, with no regard for structure: one function
per client, the usual call's work inline, everything it can work out ahead worked out once per
(service, method). It does the usual call only (the service registered, its flag routing to Envoy,
no call options, no deadline, no routing overrides, no shadow copy, no inbound request, no
OpenTelemetry SDK or context, no fake wire installed); it *checks* each of those conditions on
every call and hands any other call to the real mesh transport or adapter (so what it returns is
always right; only the usual path is measured). Per usual call it does, with the part of the
public spec (``public-api.md``, the contract application code is written against; cited as "spec
§n") that requires it:

1. find the registered service from the URL's host, refuse a port, user info or a scheme other
   than ``http`` (spec §2: a registered service is addressed by its name as host; any other
   host goes out untouched);
2. read the call options: the ``call_options`` context variable and, for httpx, the request's
   ``extensions["mesh"]`` (spec §2, per-call overrides);
3. read the deadline context variable (spec §3: timeout sent = min(service timeout, time left);
   ``DeadlineExceeded`` without sending when it has passed);
4. read the routing overrides context variable (spec §7: ``x-mesh-override`` carried on, the
   variant routed);
5. read the shadow copy order context variable (spec §8: a copy is planned down the other route;
   mesh_client marks the request being sent as a copy this way) and take the stage from the flag
   decision (spec §8: ``"shadow"`` / ``"live"`` make copies);
6. read the inbound request context variable (spec §3: ``x-request-id`` is the inbound one, and
   the allowlisted context headers and ``x-mesh-shadow`` are carried on);
7. read the OpenTelemetry context variable and the global propagator (spec §3: outbound calls
   carry the current context through ``opentelemetry.propagate``; an empty context under the
   default propagators injects nothing) and whether an SDK is installed (the call's span and
   metrics, spec §1 "caller ... spans");
8. read the installed fake wire (spec §5: ``fake_mesh`` fakes the sidecar in process);
9. read the route flag's decision from the router's per-flag-version cache (spec §2: the route
   is chosen per call from the flag), and check the sidecar circuit (spec §1 ``failover``; the
   circuit that then skips a sidecar which refused connections is mesh_client's own: one
   attribute read while it has never opened);
10. deposit the call in the service's retry budget and read the retries it allows (not in the
    spec: mesh_client's retry budget, docs/routes.md; Envoy's ``x-envoy-max-retries`` is capped
    by it);
11. make a fresh ``x-request-id`` (spec §3: a new UUID4 when there is no inbound one);
12. build the ``x-envoy-*`` policy headers: the timeout in ms from the time left (for a call with
    no deadline that has just started, the policy's timeout: a constant), per-try timeout,
    retry-on and max retries (from the method's idempotence, precomputed per method) and ``Host``
    (Envoy routes by it), and drop the caller's own ``x-envoy-*``, ``x-forwarded-*``,
    ``x-mesh-*``, hop-by-hop and ``Host`` headers (spec §2: via Envoy the policy travels as
    ``x-envoy-*`` headers; spec §3 and §7: those headers are never passed on);
13. rewrite the URL to the sidecar's address (cached per URL) and set the client's socket timeout
    a little above Envoy's (so a stuck sidecar cannot hang the caller: spec §1 ``timeout``, the
    whole call) on a copy of the caller's request;
14. send;
15. on the answer: whether it may be Envoy's own local reply (status and
    ``x-envoy-upstream-service-time``; only then is the small body read and classified),
    ``x-envoy-overloaded`` / ``-drop-overload`` / ``-ratelimited`` (spec §2 ``envoy_error``),
    ``x-envoy-attempt-count`` (``attempts``, and Envoy's retries charged to the retry budget),
    ``x-envoy-upstream-service-time`` (``upstream_service_time``);
16. build a :class:`~mesh_client.CallInfo` (the real class, positionally, with ``elapsed`` from a
    second clock read) and attach it where ``call_info()`` reads it: ``response.extensions`` for
    httpx, an attribute for requests (spec §2); for requests, the response's URL set back to the
    caller's (redirects resolve against it).

What the floor leaves out that the mesh does on the usual call (none of it required by the spec
on the Envoy route): reading the body inside the attempt's time (Envoy's route timeout covers
the whole response), the ``response.request`` of an httpx client showing the headers as sent, the
``elapsed`` of a requests response measured to the headers, the suppression of OpenTelemetry's
HTTP instrumentations (no SDK: no span of the mesh's to double), the async transport's one timer
over the whole attempt (measured separately: ``httpx-async`` row ``floor + attempt timer``), and
the objects the mesh's layers hand each other (``CallRun``, ``Attempt``, ``Responded``, ``Done``).

**Thrift framed** (section 6's server, direct; the plain side is thriftpy2's framed client with its
one socket timeout set at connect): the floor reads the same context variables (options,
deadline, overrides, copy order, wire, SDK), the flag decision and budget, sets the socket
timeout once to the time the call has left, checks a pooled connection out (a list pop), takes
the next sequence id, encodes the call (thriftpy2's Cython binary protocol into the connection's
reused memory buffer), writes the frame (length and payload, one ``sendall``), reads the whole
reply frame by its length (refusing a short or oversized frame), decodes it strictly (the Cython
protocol over the buffered transport over the frame, which mesh_client probes to fail on any read
past the end: a truncated frame is an error), checks the sequence id and releases the connection.
It sets no limit on the connections in use (the mesh's ``max_connections``, not in the
spec), and the first read may wait past the call's time by as long as the ``sendall`` of a small
frame took (the mesh sets the timeout again before each read); a call on the Envoy route (a
service-name prefix) goes to the mesh, so only the direct route is measured.
``floor + idle check`` adds the mesh's ``poll(0)`` on every check-out (a connection the server
closed while idle is not used: not in the spec, but what keeps a non-idempotent call from failing
on a stale connection).

Every client's sides run interleaved in one run (:func:`benchmarks.measure.alternate`, ABBA);
CPU added is the median over rounds of each round's paired difference
(:func:`benchmarks.measure.paired_cpu_added`). HTTP uses section 1's canned responses (httpx's
``MockTransport``; requests' ``HTTPAdapter.send`` patched, restored after), with ``trust_env`` off
for requests. The ablation table takes one piece out of the httpx floor at a time (the rest
unchanged): what each piece costs in place; and adds, one at a time, a piece of the mesh's own
way of doing the same work (its planning, ``Mesh.start_call`` and ``CallRun.advance(None)``; its
building of the attempt's request; its reading of the answer; the ``send`` of the client
``mesh.httpx_client()`` returns), made in place and thrown away: what each costs on top of the
floor. The Thrift table likewise has the floor with the mesh's planning added.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import requests
import thriftpy2.protocol
import thriftpy2.transport
from opentelemetry import propagate as _otel_propagate
from opentelemetry import trace as _otel_trace
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from thriftpy2.thrift import TMessageType
from urllib3.util import parse_url

import mesh_client.clock as _mesh_clock
import mesh_client.wire as _mesh_wire
from mesh_client import Mesh, envoy
from mesh_client._compat import otel as _compat_otel
from mesh_client.budget import RetryBudget
from mesh_client.context import _inbound
from mesh_client.deadline import _deadline
from mesh_client.errors import MeshTimeoutError, MeshTransportError, as_mesh_error
from mesh_client.flag_router import FlagRouter
from mesh_client.http import httpx_errors as _httpx_errors  # noqa: F401 - (registers the combined errors)
from mesh_client.http import requests_errors as _requests_errors  # noqa: F401 - (likewise)
from mesh_client.http._async_deadline import attempt_deadline
from mesh_client.http.requests import _failure as _requests_failure
from mesh_client.info import INFO_KEY, CallInfo
from mesh_client.overrides import _in_force
from mesh_client.plan import DROP_WITH_REQUEST_ID, ServicePlan
from mesh_client.policy import NO_OPTIONS, Route, _current
from mesh_client.registry import Address, ServiceConfig
from mesh_client.shadow.runner import _order
from mesh_client.steps import Failure, Responded
from mesh_client.thrift.reading import fast_reader, strict_fast_reader

from . import report
from .instructions import _world
from .measure import Variant, alternate, paired_cpu_added
from .sequential import CANNED_HEADERS, PATH, _canned, _canned_send

_ENVOY: Final = Route.ENVOY
_new: Final = object.__new__
_monotonic: Final = time.monotonic
#: the mesh's own request-id generator is seeded per process; the floor's is its own
_ids: Final = random.Random()
_getrandbits: Final = _ids.getrandbits
_VARIANT: Final = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
#: statuses an Envoy local reply can have (mesh_client.envoy): only these are ever read further
_LOCAL: Final = frozenset({400, 404, 408, 502, 503, 504, 507})
_DROP_PREFIXES: Final = ("x-envoy-", "x-forwarded-", "proxy-", "x-mesh-")
_ENVOY_MARGIN: Final = 0.1
_METRICS: Any = _compat_otel._METRICS_API
_OTEL_CONTEXT: Final[Callable[[], Any]] = _compat_otel.current_context
_DEFAULT_TEXTMAP: Final = _otel_propagate.get_global_textmap()
#: the canned answer's headers as the core reads them (for the ablation's core run)
_CANNED_ANSWER: Final = {name.lower(): value for name, value in CANNED_HEADERS.items()}

#: the ablation's addition to the httpx floor: the mesh's planning of the call (its decision path,
#: ``Mesh.start_call`` and ``CallRun.advance(None)``), made in place and thrown away
PLANNING: Final = "mesh planning"
#: ... the mesh's whole run of the call in the core: planning, then the answer through
#: ``CallRun.advance`` to its ``Done`` (the end of call: the answer's rules, ``CallInfo``)
CORE_RUN: Final = "mesh core run"
#: ... the mesh's making of the attempt's request (``attempt_request``, from a prepared ``Attempt``)
REQUEST_BUILDING: Final = "mesh request building"
#: ... the mesh's reading of the answer (``header_dict`` and the ``envoy`` readers the core calls)
ANSWER_READING: Final = "mesh answer reading"
#: what the ablation adds, and how each is named in its table
ADDED: Final = {
    PLANNING: "+ mesh planning (start_call, advance)",
    CORE_RUN: "+ mesh core run (planning, advance(answer))",
    REQUEST_BUILDING: "+ mesh request building (attempt_request)",
    ANSWER_READING: "+ mesh answer reading (header_dict, envoy readers)",
}
#: the pieces of the httpx floor the ablation takes out one at a time
PIECES: Final = (
    "context variables",
    "flag decision",
    "retry budget",
    "request id",
    "header filter",
    "URL rewrite",
    "socket timeout",
    "answer headers",
    "CallInfo",
    "elapsed clock",
)


def _request_id() -> str:
    h = _getrandbits(128).to_bytes(16, "little").hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _unusual() -> bool:
    """Whether anything but the usual call is asked for in this context (items 2-8 of the list)."""
    return (
        _current.get() is not NO_OPTIONS
        or _deadline.get() is not None
        or _in_force.get() is not None
        or _order.get() is not None
        or _inbound.get() is not None
        or bool(_OTEL_CONTEXT())
        or _otel_propagate._HTTP_TEXT_FORMAT is not _DEFAULT_TEXTMAP
        or _otel_trace._TRACER_PROVIDER is not None
        or getattr(_METRICS, "_METER_PROVIDER", None) is not None
        or _mesh_wire._installed is not None
    )


class _Service:
    """What the floor works out once per registered service (the plan a per-(flag version,
    service) template would hold)."""

    def __init__(self, mesh: Mesh, svc: ServiceConfig) -> None:
        config = mesh.config
        self.name = svc.name
        self.policy = svc.policy
        router = mesh.router
        assert isinstance(router, FlagRouter)
        self.router = router
        #: the router's decision cache (filled per flag version, dropped when the flags change)
        self.decisions: dict[str, Any] = router._cache
        self.budget: RetryBudget = mesh.retry_budget(svc.name)
        plan = ServicePlan.of(config, svc)
        circuit = mesh._circuit(config.envoy_http)
        assert circuit is not None
        self.circuit = circuit
        self.envoy = config.envoy_http
        prefix = self.prefix = config.header_prefix
        self.prefix_bytes = (prefix + "-").encode("ascii")
        self.timeout = svc.policy.timeout
        #: the client's socket timeout on the usual call (the policy's timeout plus the margin)
        margin = min(max(svc.policy.timeout * _ENVOY_MARGIN, 0.1), 1.0)
        self.client_timeout = svc.policy.timeout + margin
        self.timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.client_timeout)
        #: method -> (Envoy retries allowed, the policy headers as (name, value) text)
        self.methods: dict[str, tuple[int, tuple[tuple[str, str], ...]]] = {}
        for method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH"):
            tokens = plan.tokens_for(svc.policy, method, None)
            self.methods[method] = (svc.policy.retries if tokens else 0, self.policy_headers(tokens))
        self.tokens = {m: plan.tokens_for(svc.policy, m, None) for m in self.methods}
        self.host = svc.envoy_host
        #: per method: the headers the floor adds besides the request id, as httpx keeps them
        self.httpx_items = {
            m: [(n.encode(), n.lower().encode(), v.encode()) for n, v in (("Host", self.host), *hs)]
            for m, (_, hs) in self.methods.items()
        }
        #: ... and as requests' CaseInsensitiveDict keeps them (lower-case name -> (name, value))
        self.requests_store = {
            m: {n.lower(): (n, v) for n, v in (("Host", self.host), *hs)} for m, (_, hs) in self.methods.items()
        }

    def policy_headers(self, tokens: tuple[str, ...], retries: int | None = None) -> tuple[tuple[str, str], ...]:
        policy = self.policy
        allowed = policy.retries if retries is None else retries
        per_try = policy.per_try_timeout if policy.per_try_timeout is not None else None
        name, rest = envoy.policy_header_template(self.prefix, per_try, allowed, tokens, policy.retriable_status_codes)
        return ((name, str(envoy.timeout_ms(policy.timeout))), *rest)

    def deposit(self, now: float) -> int:
        """The retry budget's deposit, inline (RetryBudget.deposit's own steps)."""
        b = self.budget
        with b._lock:
            if now >= b._roll_at or b._era != _mesh_clock._era:
                b._roll()
            b._calls[b._epoch % 10] += 1
            calls = b._calls_total = b._calls_total + 1
            left = int(b._floor + calls * b._share - b._retries_total)
        return left


def _services(mesh: Mesh) -> dict[str, _Service]:
    return {name: _Service(mesh, svc) for name, svc in mesh.config.services.items() if svc.protocol == "http"}


def _usual_decision(fs: _Service) -> Any:
    """The flag's decision when it is the usual one (Envoy, no stage) and the circuit is closed;
    None otherwise."""
    decision = fs.decisions.get(fs.name)
    if decision is None:
        decision = fs.router.decide(fs.name)
    if decision.route is not _ENVOY or decision.stage is not None or fs.circuit.open_until:
        return None
    return decision


def _failed(exc: BaseException, fs: _Service, started: float) -> BaseException:
    """The library's error ``exc``, also a mesh error (spec §2), after the request may have been
    sent (not on the usual path: a ``try`` costs nothing until it catches)."""
    timed_out = isinstance(exc, (httpx.TimeoutException, requests.Timeout))
    info = CallInfo(fs.name, _ENVOY, 1, False, None, None, "", _monotonic() - started)
    return as_mesh_error(MeshTimeoutError if timed_out else MeshTransportError, exc, str(exc), info)


def _answer(
    status: int, ust: bytes | str | None, count: bytes | str | None, error: str | None
) -> tuple[int | None, float | None, str | None]:
    """(Envoy's attempt count, upstream service time, Envoy error) from the answer's headers."""
    seconds = None
    if ust is not None:
        try:
            ms = int(ust)
            seconds = ms / 1000 if ms >= 0 else None
        except (ValueError, OverflowError):
            seconds = None
    attempts = None
    if count is not None:
        try:
            attempts = int(count)
        except ValueError:
            attempts = None
    return attempts, seconds, error


# -- httpx -------------------------------------------------------------------------------------------


class FloorTransport(httpx.BaseTransport):
    """The httpx floor: ``inner`` for the usual call's send, ``fallback`` (the real mesh transport
    over the same ``inner``) for every other call. ``skip`` names pieces to leave out (the
    ablation; the floor itself skips none)."""

    def __init__(
        self, mesh: Mesh, inner: httpx.BaseTransport, fallback: httpx.BaseTransport, skip: Iterable[str] = ()
    ) -> None:
        pieces = frozenset(skip)
        self.handle_request = _httpx_floor(mesh, _services(mesh), inner, fallback, pieces)  # type: ignore[method-assign,assignment]

    def handle_request(self, request: httpx.Request) -> httpx.Response:  # replaced per instance
        raise NotImplementedError


def _httpx_floor(  # noqa: PLR0915 - one function on purpose: the floor
    mesh: Mesh,
    services: dict[str, _Service],
    inner: httpx.BaseTransport,
    fallback: httpx.BaseTransport,
    skip: frozenset[str],
) -> Callable[[httpx.Request], httpx.Response]:
    send = inner.handle_request
    keep: dict[bytes, bool] = {}
    urls: dict[Any, httpx.URL] = {}
    no_ctx, no_flag, no_budget = "context variables" in skip, "flag decision" in skip, "retry budget" in skip
    no_rid, no_filter, no_url = "request id" in skip, "header filter" in skip, "URL rewrite" in skip
    no_timeout, no_answer = "socket timeout" in skip, "answer headers" in skip
    no_info, no_elapsed = "CallInfo" in skip, "elapsed clock" in skip
    #: (the ablation's one addition: the mesh's own planning, made and thrown away)
    plan_too, configs = PLANNING in skip, mesh.config.services
    core_too = CORE_RUN in skip
    build_too, read_too = REQUEST_BUILDING in skip, ANSWER_READING in skip
    attempt: Any = None
    if build_too:
        from mesh_client._compat.httpx import url_parts
        from mesh_client.http._httpx_attempt import attempt_request

        run = mesh.start_call(configs["users"], "GET")
        attempt = run.advance(None)
        run.abort(RuntimeError("a template only"))
    if read_too:
        from mesh_client.http._httpx_attempt import header_dict
    Headers, Request = httpx.Headers, httpx.Request

    def handle_request(request: httpx.Request) -> httpx.Response:  # noqa: PLR0915 - the floor
        url = request.url
        ref = url._uri_reference
        fs = services.get(ref.host)
        if fs is None:
            return send(request)
        if ref.scheme != "http" or ref.port is not None or ref.userinfo:
            return fallback.handle_request(request)  # (raises InvalidServiceURL)
        ext = request.extensions
        if (not no_ctx and (_unusual() or "mesh" in ext)) or request.method not in fs.methods:
            return fallback.handle_request(request)
        decision = None
        if not no_flag:
            decision = _usual_decision(fs)
            if decision is None:
                return fallback.handle_request(request)
        started = _monotonic()
        retries, _ = fs.methods[request.method]
        items_added = fs.httpx_items[request.method]
        exhausted = False
        if not no_budget:
            left = fs.deposit(started)
            if retries and left < retries:  # the budget caps Envoy's retries
                exhausted = left == 0
                hs = fs.policy_headers(fs.tokens[request.method], left)
                items_added = [(n.encode(), n.lower().encode(), v.encode()) for n, v in (("Host", fs.host), *hs)]
        # the caller's headers that may go out, then ours
        items = request.headers._list
        if no_filter:
            out_items = [*items, *items_added]
        else:
            try:
                out_items = [item for item in items if keep[item[1]]]
            except KeyError:
                for _, lower, _ in items:
                    name = lower.decode("latin-1")
                    keep[lower] = not (name in DROP_WITH_REQUEST_ID or name.startswith(_DROP_PREFIXES))
                out_items = [item for item in items if keep[item[1]]]
            out_items += items_added
        if not no_rid:
            out_items.append((b"x-request-id", b"x-request-id", _request_id().encode()))
        headers = _new(Headers)
        headers.__dict__ = {"_list": out_items, "_encoding": None}
        target: httpx.URL | None = url if no_url else urls.get(ref)
        if target is None:
            target = urls[ref] = url.copy_with(host=fs.envoy.host, port=fs.envoy.port)
        state = dict(request.__dict__)
        state["headers"], state["url"] = headers, target
        if not no_timeout:
            state["extensions"] = {**ext, "timeout": fs.timeouts}
        outgoing = _new(Request)
        outgoing.__dict__ = state
        if plan_too:
            mesh.start_call(configs[fs.name], request.method).advance(None)
        if core_too:
            run = mesh.start_call(configs[fs.name], request.method)
            run.advance(None)
            run.advance(Responded(None, 200, _CANNED_ANSWER))
        if build_too:
            attempt_request(request, attempt, url_parts(request.url)[4])
        try:
            response = send(outgoing)
        except httpx.ConnectError:  # nothing was sent: the mesh fails over (zero cost when not raised)
            return fallback.handle_request(request)
        except httpx.TransportError as exc:
            raise _failed(exc, fs, started) from exc
        status = response.status_code
        if read_too:
            found = header_dict(response.headers)
            envoy.may_be_local_reply(status, found, fs.prefix)
            envoy.attempt_count(found, fs.prefix)
            envoy.classify_reply(status, found, None, fs.prefix)
            envoy.upstream_service_time(found, fs.prefix)
        ust = count = error = None
        if not no_answer:
            prefix = fs.prefix_bytes
            for _, lower, value in response.headers._list:
                if lower.startswith(prefix):
                    rest = lower[len(prefix) :]
                    if rest == b"upstream-service-time":
                        ust = value
                    elif rest == b"attempt-count":
                        count = value
                    elif rest in (b"overloaded", b"drop-overload"):
                        error = "overloaded"
                    elif rest == b"ratelimited" and error is None:
                        error = "rate_limited"
            if status in _LOCAL and ust is None:  # maybe Envoy's own reply: read the small body
                headers_text = {k.decode("latin-1"): v.decode("latin-1") for _, k, v in response.headers._list}
                if envoy.may_be_local_reply(status, headers_text, "x-envoy"):
                    error = envoy.classify_reply(status, headers_text, response.read(), "x-envoy") or error
        attempts, seconds, error = _answer(status, ust, count, error)
        if attempts is not None and attempts > 1 and not no_budget:
            fs.budget.spend(attempts - 1)
        if not no_info:
            elapsed = 0.0 if no_elapsed else _monotonic() - started
            reason = decision.reason if decision is not None else ""
            response.extensions[INFO_KEY] = CallInfo(
                fs.name, _ENVOY, attempts or 1, False, seconds, error, reason, elapsed, exhausted, None, None
            )
        return response

    return handle_request


class AsyncFloorTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`FloorTransport` (no ablation); ``attempt_timer`` adds a timer
    over the whole attempt: ``"call_at"`` a ``loop.call_at`` and its cancel (the mesh's until
    issue 19's sixth part), ``"mesh"`` the mesh's own (``mesh_client.http._async_deadline``: the
    loop's attempts share one timer)."""

    def __init__(
        self,
        mesh: Mesh,
        inner: httpx.AsyncBaseTransport,
        fallback: httpx.AsyncBaseTransport,
        *,
        attempt_timer: str | None = None,
    ) -> None:
        self.services = _services(mesh)
        self.inner = inner
        self.fallback = fallback
        self.keep: dict[bytes, bool] = {}
        self.urls: dict[Any, httpx.URL] = {}
        self.attempt_timer = attempt_timer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:  # noqa: PLR0915 - the floor
        url = request.url
        ref = url._uri_reference
        fs = self.services.get(ref.host)
        if fs is None:
            return await self.inner.handle_async_request(request)
        ext = request.extensions
        if (
            ref.scheme != "http"
            or ref.port is not None
            or ref.userinfo
            or _unusual()
            or "mesh" in ext
            or request.method not in fs.methods
        ):
            return await self.fallback.handle_async_request(request)
        decision = _usual_decision(fs)
        if decision is None:
            return await self.fallback.handle_async_request(request)
        started = _monotonic()
        retries, _ = fs.methods[request.method]
        items_added = fs.httpx_items[request.method]
        exhausted = False
        left = fs.deposit(started)
        if retries and left < retries:
            exhausted = left == 0
            hs = fs.policy_headers(fs.tokens[request.method], left)
            items_added = [(n.encode(), n.lower().encode(), v.encode()) for n, v in (("Host", fs.host), *hs)]
        items = request.headers._list
        keep = self.keep
        try:
            out_items = [item for item in items if keep[item[1]]]
        except KeyError:
            for _, lower, _ in items:
                name = lower.decode("latin-1")
                keep[lower] = not (name in DROP_WITH_REQUEST_ID or name.startswith(_DROP_PREFIXES))
            out_items = [item for item in items if keep[item[1]]]
        out_items += items_added
        out_items.append((b"x-request-id", b"x-request-id", _request_id().encode()))
        headers = _new(httpx.Headers)
        headers.__dict__ = {"_list": out_items, "_encoding": None}
        target = self.urls.get(ref)
        if target is None:
            target = self.urls[ref] = url.copy_with(host=fs.envoy.host, port=fs.envoy.port)
        state = dict(request.__dict__)
        state["headers"], state["url"] = headers, target
        state["extensions"] = {**ext, "timeout": fs.timeouts}
        outgoing = _new(httpx.Request)
        outgoing.__dict__ = state
        try:
            if self.attempt_timer == "mesh":
                with attempt_deadline(fs.client_timeout):
                    response = await self.inner.handle_async_request(outgoing)
            elif self.attempt_timer == "call_at":
                task = asyncio.current_task()
                assert task is not None
                loop = task.get_loop()
                handle = loop.call_at(loop.time() + fs.client_timeout, task.cancel)
                try:
                    response = await self.inner.handle_async_request(outgoing)
                finally:
                    handle.cancel()
            else:
                response = await self.inner.handle_async_request(outgoing)
        except httpx.ConnectError:
            return await self.fallback.handle_async_request(request)
        except httpx.TransportError as exc:
            raise _failed(exc, fs, started) from exc
        status = response.status_code
        ust = count = error = None
        prefix = fs.prefix_bytes
        for _, lower, value in response.headers._list:
            if lower.startswith(prefix):
                rest = lower[len(prefix) :]
                if rest == b"upstream-service-time":
                    ust = value
                elif rest == b"attempt-count":
                    count = value
                elif rest in (b"overloaded", b"drop-overload"):
                    error = "overloaded"
                elif rest == b"ratelimited" and error is None:
                    error = "rate_limited"
        if status in _LOCAL and ust is None:
            headers_text = {k.decode("latin-1"): v.decode("latin-1") for _, k, v in response.headers._list}
            if envoy.may_be_local_reply(status, headers_text, "x-envoy"):
                error = envoy.classify_reply(status, headers_text, await response.aread(), "x-envoy") or error
        attempts, seconds, error = _answer(status, ust, count, error)
        if attempts is not None and attempts > 1:
            fs.budget.spend(attempts - 1)
        response.extensions[INFO_KEY] = CallInfo(
            fs.name, _ENVOY, attempts or 1, False, seconds, error, decision.reason, _monotonic() - started, exhausted
        )
        return response


# -- requests ------------------------------------------------------------------------------------------


class FloorAdapter(HTTPAdapter):
    """The requests floor, mounted for the registered services' URLs; ``fallback`` (a real
    ``MeshAdapter``) takes every call but the usual one."""

    def __init__(self, mesh: Mesh, fallback: HTTPAdapter) -> None:
        super().__init__()
        self.services = _services(mesh)
        self.fallback = fallback
        self.keep: dict[str, bool] = {}
        self.targets: dict[str, tuple[_Service | None, str, bool]] = {}

    def send(  # noqa: PLR0915, PLR0917 - the signature of HTTPAdapter.send; the floor
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        url = request.url or ""
        target = self.targets.get(url)
        if target is None:
            parts = parse_url(url)
            fs = self.services.get((parts.host or "").lower())
            odd = parts.scheme != "http" or parts.port is not None or bool(parts.auth)
            target = self.targets[url] = (fs, parts.request_uri, odd)
        fs, path, odd = target
        if fs is None:
            plain: requests.Response = HTTPAdapter.send(
                self, request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            return plain
        method = request.method or "GET"
        if odd or _unusual() or method not in fs.methods:
            odd_one: requests.Response = self.fallback.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            return odd_one
        decision = _usual_decision(fs)
        if decision is None:
            other: requests.Response = self.fallback.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            return other
        started = _monotonic()
        retries, _ = fs.methods[method]
        added = fs.requests_store[method]
        exhausted = False
        left = fs.deposit(started)
        if retries and left < retries:
            exhausted = left == 0
            hs = fs.policy_headers(fs.tokens[method], left)
            added = {n.lower(): (n, v) for n, v in (("Host", fs.host), *hs)}
        store = request.headers._store  # type: ignore[attr-defined]
        keep = self.keep
        try:
            kept = {k: v for k, v in store.items() if keep[k]}
        except KeyError:
            for name in store:
                keep[name] = not (name in DROP_WITH_REQUEST_ID or name.startswith(_DROP_PREFIXES))
            kept = {k: v for k, v in store.items() if keep[k]}
        kept.update(added)
        kept["x-request-id"] = ("x-request-id", _request_id())
        headers: Any = _new(CaseInsensitiveDict)
        headers._store = kept
        prepared = _new(requests.PreparedRequest)
        prepared.__dict__ = {**request.__dict__, "url": f"http://{fs.envoy}{path}", "headers": headers}
        try:
            response: requests.Response = HTTPAdapter.send(
                self, prepared, stream=stream, timeout=fs.client_timeout, verify=verify, cert=cert, proxies=proxies
            )
        except requests.RequestException as exc:
            broken = _requests_failure(exc)
            if broken is None:
                raise
            if broken.kind is Failure.CONNECT:  # nothing was sent: the mesh fails over
                fallen: requests.Response = self.fallback.send(
                    request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
                )
                return fallen
            raise _failed(exc, fs, started) from exc
        status = response.status_code
        answered = response.headers._store  # type: ignore[attr-defined]
        ust, count = answered.get("x-envoy-upstream-service-time"), answered.get("x-envoy-attempt-count")
        error = None
        if "x-envoy-overloaded" in answered or "x-envoy-drop-overload" in answered:
            error = "overloaded"
        elif "x-envoy-ratelimited" in answered:
            error = "rate_limited"
        if status in _LOCAL and ust is None:
            text = dict(response.headers.lower_items())
            if envoy.may_be_local_reply(status, text, "x-envoy"):
                error = envoy.classify_reply(status, text, response.content, "x-envoy") or error
        attempts, seconds, error = _answer(
            status, ust[1] if ust is not None else None, count[1] if count is not None else None, error
        )
        if attempts is not None and attempts > 1:
            fs.budget.spend(attempts - 1)
        response.url = url
        setattr(
            response,
            INFO_KEY,
            CallInfo(
                fs.name,
                _ENVOY,
                attempts or 1,
                False,
                seconds,
                error,
                decision.reason,
                _monotonic() - started,
                exhausted,
            ),
        )
        return response


def floor_session(mesh: Mesh) -> requests.Session:
    """A plain ``requests.Session`` (``trust_env`` off) with the floor adapter mounted for each
    registered HTTP service's URLs."""
    from mesh_client.http.requests import MeshAdapter

    session = requests.Session()
    session.trust_env = False
    adapter = FloorAdapter(mesh, MeshAdapter(mesh))
    for name, svc in mesh.config.services.items():
        if svc.protocol == "http":
            session.mount(f"http://{name}/", adapter)
    return session


# -- the HTTP comparisons --------------------------------------------------------------------------------


def _ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"benchmark call answered {status}")


def _get(client: httpx.Client, url: str) -> None:
    _ok(client.get(url).status_code)


def http(*, rounds: int, calls: int, warmup: int, ablation: bool) -> dict[str, Any]:
    """Plain / floor / mesh for each HTTP client, interleaved; the httpx floor's ablation."""
    world = _world()
    mesh = world.mesh
    headers, timeout = world.plain_call("users")
    plain_url, mesh_url = world.envoy_base + PATH, "http://users" + PATH
    loop = asyncio.new_event_loop()
    real_send = HTTPAdapter.send
    rows: list[dict[str, Any]] = []
    ablations: list[dict[str, Any]] = []
    with ExitStack() as stack:
        stack.callback(loop.close)
        stack.callback(mesh.close)
        HTTPAdapter.send = _canned_send  # type: ignore[assignment,method-assign]
        stack.callback(setattr, HTTPAdapter, "send", real_send)

        def sync_client(transport: httpx.BaseTransport) -> httpx.Client:
            return stack.enter_context(httpx.Client(transport=transport))

        mock = httpx.MockTransport(_canned)
        pc = sync_client(mock)
        fc = sync_client(FloorTransport(mesh, mock, mesh.httpx_transport(mock)))
        mc = stack.enter_context(mesh.httpx_client(transport=mock))
        mt = sync_client(mesh.httpx_transport(mock))
        amock = httpx.MockTransport(_canned)
        pa = httpx.AsyncClient(transport=amock)
        fa = httpx.AsyncClient(transport=AsyncFloorTransport(mesh, amock, mesh.httpx_async_transport(amock)))
        fat = httpx.AsyncClient(
            transport=AsyncFloorTransport(mesh, amock, mesh.httpx_async_transport(amock), attempt_timer="call_at")
        )
        fmt = httpx.AsyncClient(
            transport=AsyncFloorTransport(mesh, amock, mesh.httpx_async_transport(amock), attempt_timer="mesh")
        )
        ma = mesh.httpx_async_client(transport=amock)
        for a in (pa, fa, fat, fmt, ma):
            stack.callback(functools.partial(loop.run_until_complete, a.aclose()))
        ps = stack.enter_context(requests.Session())
        ps.trust_env = False
        fs = stack.enter_context(floor_session(mesh))
        ms = stack.enter_context(mesh.requests_session())
        ms.trust_env = False
        # every floor answers as the mesh does (call_info included) before anything is timed
        for response in (fc.get(mesh_url), loop.run_until_complete(fa.get(mesh_url)), fs.get(mesh_url)):
            info = getattr(response, "extensions", {}).get(INFO_KEY) or getattr(response, INFO_KEY, None)
            if response.status_code != 200 or not isinstance(info, CallInfo) or info.route is not _ENVOY:
                raise RuntimeError(f"benchmarks.floor: the floor answered {response!r} with {info!r}")

        def acall(client: httpx.AsyncClient, url: str, **kw: Any) -> Callable[[], Any]:
            async def one() -> None:
                _ok((await client.get(url, **kw)).status_code)

            return one

        sides: dict[str, list[Variant]] = {
            "httpx": [
                Variant("plain", lambda: _ok(pc.get(plain_url, headers=headers).status_code)),
                Variant("floor", lambda: _ok(fc.get(mesh_url).status_code)),
                Variant("mesh", lambda: _ok(mc.get(mesh_url).status_code)),
                Variant("mesh transport, plain client", lambda: _ok(mt.get(mesh_url).status_code)),
                Variant("plain, no extra headers", lambda: _ok(pc.get(plain_url).status_code)),
            ],
            "httpx-async": [
                Variant("plain", acall=acall(pa, plain_url, headers=headers)),
                Variant("floor", acall=acall(fa, mesh_url)),
                Variant("mesh", acall=acall(ma, mesh_url)),
                Variant("floor + attempt timer", acall=acall(fat, mesh_url)),
                Variant("floor + mesh attempt deadline", acall=acall(fmt, mesh_url)),
                Variant("plain, no extra headers", acall=acall(pa, plain_url)),
            ],
            "requests, trust_env off": [
                Variant("plain", lambda: _ok(ps.get(plain_url, headers=headers, timeout=timeout).status_code)),
                Variant("floor", lambda: _ok(fs.get(mesh_url).status_code)),
                Variant("mesh", lambda: _ok(ms.get(mesh_url).status_code)),
                Variant("plain, no extra headers", lambda: _ok(ps.get(plain_url, timeout=timeout).status_code)),
            ],
        }
        for client, variants in sides.items():
            alternate(variants, rounds=rounds, calls=calls, warmup=warmup, loop=loop)
            rows.append(_row(client, variants))
        if ablation:
            ablations = _ablation(stack, mesh, mock, mesh_url, rounds=rounds, calls=calls, warmup=warmup)
    return {"rows": rows, "ablation": ablations}


def _ablation(
    stack: ExitStack, mesh: Mesh, mock: httpx.MockTransport, url: str, *, rounds: int, calls: int, warmup: int
) -> list[dict[str, Any]]:
    """The httpx floor against itself with one piece left out, or one of the mesh's added."""
    from mesh_client.http._httpx_client import _Client

    def floor_client(*skip: str, cls: type[httpx.Client] = httpx.Client) -> httpx.Client:
        return stack.enter_context(cls(transport=FloorTransport(mesh, mock, mesh.httpx_transport(mock), skip=skip)))

    base = Variant("floor", functools.partial(_get, floor_client(), url))
    variants = [base]
    for piece in (*PIECES, *ADDED):
        name = ADDED.get(piece, f"- {piece}")
        variants.append(Variant(name, functools.partial(_get, floor_client(piece), url)))
    layered = floor_client(cls=_Client)
    variants.append(Variant("+ mesh client layer (_Client.send)", functools.partial(_get, layered, url)))
    alternate(variants, rounds=rounds, calls=calls, warmup=warmup)
    return [
        {"piece": v.name, "change_us": paired_cpu_added(v, base), "cpu_per_call_us": v.summary()["cpu_per_call_us"]}
        for v in variants[1:]
    ]


def _row(client: str, variants: list[Variant]) -> dict[str, Any]:
    plain = variants[0]
    return {
        "client": client,
        "calls_per_side": plain.summary()["calls"],
        "sides": {
            v.name: {
                "cpu_per_call_us": v.summary()["cpu_per_call_us"],
                "cpu_added_us": 0.0 if v is plain else paired_cpu_added(v, plain),
            }
            for v in variants
        },
    }


# -- Thrift framed -----------------------------------------------------------------------------------------

_binary: Any = thriftpy2.protocol
_transport: Any = thriftpy2.transport
_LENGTH: Final = struct.Struct("!i")
_MAX_FRAME: Final = 16 * 1024 * 1024
_CALL: Final = TMessageType.CALL
_REPLY: Final = TMessageType.REPLY
_POLLIN: Final = 1


class _Conn:
    __slots__ = ("buf", "poll", "proto", "seqid", "sock")

    def __init__(self, address: Address) -> None:
        import select

        self.sock = socket.create_connection((address.host, address.port), timeout=5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.seqid = 0
        self.buf = _transport.TMemoryBuffer()
        self.proto = _binary.TBinaryProtocolFactory().get_protocol(self.buf)
        self.poll = select.poll()
        self.poll.register(self.sock, _POLLIN)


class FloorThrift:
    """The Thrift framed floor for one method of one service (``call(*args)``): the usual call
    inline, any other to ``fallback`` (the mesh's Thrift client). ``idle_check`` adds the mesh's
    ``poll(0)`` of a pooled connection at check-out."""

    def __init__(
        self, mesh: Mesh, service: Any, name: str, api: str, fallback: Any, *, idle_check: bool, plan: bool = False
    ) -> None:
        if not strict_fast_reader():
            raise SystemExit("benchmarks.floor: thriftpy2's fast reader is not strict here; no floor to measure")
        svc = mesh.config.services[name]
        self.name = name
        router = mesh.router
        assert isinstance(router, FlagRouter)
        self.router = router
        self.decisions: dict[str, Any] = router._cache
        self.budget = mesh.retry_budget(name)
        self.timeout = svc.policy.timeout
        self.haproxy, self.envoy = svc.haproxy, mesh.config.envoy_thrift
        self.api = api
        self.args_cls = getattr(service, api + "_args")
        self.result_cls = getattr(service, api + "_result")
        self.fallback = getattr(fallback, api)
        self.idle: list[_Conn] = []
        self.idle_check = idle_check
        #: also make (and throw away) the mesh's own planning of the call: its decision path
        self.plan = (mesh, svc) if plan else None

    def close(self) -> None:
        for conn in self.idle:
            with contextlib.suppress(OSError):
                conn.sock.close()
        self.idle = []

    def call(self, *args: Any) -> Any:  # noqa: PLR0915 - the floor
        if (
            _current.get() is not NO_OPTIONS
            or _deadline.get() is not None
            or _in_force.get() is not None
            or _order.get() is not None
            or _otel_trace._TRACER_PROVIDER is not None
            or getattr(_METRICS, "_METER_PROVIDER", None) is not None
            or _mesh_wire._installed is not None
        ):
            return self.fallback(*args)
        decision = self.decisions.get(self.name)
        if decision is None:
            decision = self.router.decide(self.name)
        if decision.route is not Route.HAPROXY or decision.stage is not None:
            return self.fallback(*args)  # (the Envoy route adds the service prefix: not measured here)
        now = _monotonic()
        until = now + self.timeout
        b = self.budget
        with b._lock:  # the retry budget's deposit (the call's retries are the client's on Thrift)
            if now >= b._roll_at or b._era != _mesh_clock._era:
                b._roll()
            b._calls[b._epoch % 10] += 1
            b._calls_total += 1
        call_args = self.args_cls(*args)
        if self.plan is not None:
            self.plan[0].start_call(self.plan[1], self.api).advance(None)
        try:
            conn = self.idle.pop()
            if self.idle_check and conn.poll.poll(0):
                conn.sock.close()
                conn = _Conn(self.haproxy)
        except IndexError:
            conn = _Conn(self.haproxy)
        reusable = False
        try:
            seqid = conn.seqid = conn.seqid % 0x7FFFFFFF + 1
            buf, proto = conn.buf, conn.proto
            buf.clean()
            proto.write_message_begin(self.api, _CALL, seqid)
            call_args.write(proto)
            proto.write_message_end()
            payload = buf.getvalue()
            sock = conn.sock
            sock.settimeout(until - _monotonic())
            sock.sendall(_LENGTH.pack(len(payload)) + payload)
            data = sock.recv(65536)
            while len(data) < 4 or len(data) < 4 + _LENGTH.unpack_from(data)[0]:
                left = until - _monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(left)
                more = sock.recv(65536)
                if not more:
                    raise ConnectionResetError("the server closed the connection before the whole reply")
                data += more
                if len(data) >= 4 and not 0 < _LENGTH.unpack_from(data)[0] <= _MAX_FRAME:
                    raise ConnectionResetError("a reply frame of a length no server sends")
            (length,) = _LENGTH.unpack_from(data)
            if not 0 < length <= _MAX_FRAME:
                raise ConnectionResetError("a reply frame of a length no server sends")
            reader = fast_reader(data[4 : 4 + length])
            _name, mtype, rseqid = reader.read_message_begin()
            if rseqid != seqid or mtype != _REPLY:
                raise ConnectionResetError(f"reply {rseqid} (type {mtype}) to call {seqid}")
            result = self.result_cls()
            result.read(reader)
            reader.read_message_end()
            reusable = len(data) == 4 + length  # (bytes nobody asked for: never reuse)
        finally:
            if reusable:
                self.idle.append(conn)
            else:
                conn.sock.close()
        if result.success is None:
            return self.fallback(*args)  # (a declared exception or no result: the mesh's handling)
        return result.success


def thrift(*, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    """thriftpy2's framed client / the floor / the floor with the idle check / the mesh, direct
    to section 6's server (in its own process)."""
    from .backend import BackendProcess
    from .thrift import _plain, thrift_mesh
    from .thrift_server import load_users

    with ExitStack() as stack:
        users = load_users()
        server = stack.enter_context(BackendProcess("benchmarks.thrift_server")).address
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-floor-")))
        mesh = stack.enter_context(thrift_mesh(server, folder))
        framed = stack.enter_context(mesh.thrift_client(users.Users, "th-framed"))
        plain = _plain(users, server, envoy=False)
        stack.callback(plain.close)
        floor = FloorThrift(mesh, users.Users, "th-framed", "get", framed, idle_check=False)
        checked = FloorThrift(mesh, users.Users, "th-framed", "get", framed, idle_check=True)
        planned = FloorThrift(mesh, users.Users, "th-framed", "get", framed, idle_check=False, plan=True)
        stack.callback(floor.close)
        stack.callback(checked.close)
        stack.callback(planned.close)
        for one in (plain.get, framed.get, floor.call, checked.call):
            got = one(1)
            if got.id != 1 or got.name != "bench":
                raise RuntimeError(f"benchmarks.floor: a wrong Thrift answer {got!r}")
        variants = [
            Variant("plain", call=lambda: plain.get(1)),
            Variant("floor", call=lambda: floor.call(1)),
            Variant("mesh", call=lambda: framed.get(1)),
            Variant("floor + idle check", call=lambda: checked.call(1)),
            Variant("floor + mesh planning (start_call, advance)", call=lambda: planned.call(1)),
        ]
        alternate(variants, rounds=rounds, calls=calls, warmup=warmup)
        row = _row("Thrift framed, direct", variants)
        walls = {v.name: v.summary()["wall_median_us"] for v in variants}
        row["wall_ratio"] = {name: wall / walls["plain"] for name, wall in walls.items()}
        row["wall_median_us"] = walls
        return row


# -- the report -------------------------------------------------------------------------------------------


def run(
    *,
    rounds: int = 10,
    calls: int = 500,
    warmup: int = 100,
    thrift_calls: int = 500,
    ablation: bool = True,
    with_thrift: bool = True,
) -> dict[str, Any]:
    result = http(rounds=rounds, calls=calls, warmup=warmup, ablation=ablation)
    if with_thrift:
        result["thrift"] = thrift(rounds=rounds, calls=thrift_calls, warmup=warmup)
    return result


def render(result: dict[str, Any]) -> str:
    rows = list(result["rows"]) + ([result["thrift"]] if "thrift" in result else [])
    table_rows = []
    for r in rows:
        sides = r["sides"]
        target = report.THRIFT_CPU_ADDED_US if r["client"].startswith("Thrift") else report.NO_IO_CPU_ADDED_US
        floor_added = sides["floor"]["cpu_added_us"]
        table_rows.append(
            [
                r["client"],
                sides["plain"]["cpu_per_call_us"],
                sides["floor"]["cpu_per_call_us"],
                sides["mesh"]["cpu_per_call_us"],
                floor_added,
                sides["mesh"]["cpu_added_us"],
                f"{target:g}",
                "over" if floor_added > target else "within",
            ]
        )
    out = report.table(
        "The floor: client CPU per call (µs), plain / floor / mesh, and added over plain "
        f"({rows[0]['calls_per_side']:,} calls per side; HTTP without network)",
        ["client", "plain", "floor", "mesh", "floor added", "mesh added", "target", "floor vs target"],
        table_rows,
    )
    extra = [
        [r["client"], name, s["cpu_per_call_us"], s["cpu_added_us"]]
        for r in rows
        for name, s in r["sides"].items()
        if name not in ("plain", "floor", "mesh")
    ]
    if extra:
        out += "\n\n" + report.table(
            "   other sides in the same rounds (CPU µs per call, added over plain)",
            ["client", "side", "CPU", "added"],
            extra,
        )
    if "thrift" in result:
        ratios = result["thrift"]["wall_ratio"]
        walls = result["thrift"]["wall_median_us"]
        out += "\n  Thrift wall median (µs) and ratio to thriftpy2: " + ", ".join(
            f"{k} {walls[k]:.1f} ({v:.3f}x)" for k, v in ratios.items()
        )
    if result.get("ablation"):
        out += "\n\n" + report.table(
            "   the httpx floor with one piece left out (-) or one of the mesh's added (+): CPU change per call "
            "(µs, paired against the whole floor)",
            ["piece", "change"],
            [[a["piece"], a["change_us"]] for a in result["ablation"]],
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=500, help="HTTP calls per side per round")
    parser.add_argument("--thrift-calls", type=int, default=500, help="Thrift calls per side per round")
    parser.add_argument("--warmup", type=int, default=100, help="untimed calls per side first")
    parser.add_argument("--no-thrift", action="store_true")
    parser.add_argument("--no-ablation", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    t0 = time.monotonic()
    result = run(
        rounds=args.rounds,
        calls=args.calls,
        warmup=args.warmup,
        thrift_calls=args.thrift_calls,
        ablation=not args.no_ablation,
        with_thrift=not args.no_thrift,
    )
    print(render(result))
    end = os.getloadavg()[0]
    print(f"\n({time.monotonic() - t0:.0f} s; load average at the start {load[0]:.2f}, at the end {end:.2f})")


if __name__ == "__main__":
    main()
