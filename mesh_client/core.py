"""The I/O-free core every wrapper shares: one call's plan and its retry state machine.

A wrapper (requests adapter, httpx transport, httpx async transport) turns each request to a
registered service into a :class:`CallRun` and then only does I/O::

    step = run.advance(None)                  # first Attempt (or Fail: deadline already passed)
    while isinstance(step, Attempt):
        sleep(step.delay); outcome = send(step)   # Responded(...) or Broken(kind, exc)
        step = run.advance(outcome)           # next Attempt, Done or Fail

:func:`drive` and :func:`drive_async` are that loop; they differ only in ``await``. Everything
that decides (route, headers, timeouts, retry or not, back-off, the final error and
:class:`~mesh_client.CallInfo`) is here, once.

Route semantics:

- **Envoy**: one request to the sidecar carrying the policy as ``x-envoy-*`` headers; Envoy
  times out and retries. The client's own socket timeout sits a little above Envoy's so a
  stuck sidecar cannot hang the caller. If the sidecar refuses the connection (nothing was sent)
  and ``failover`` is on, the call continues on the HAProxy route.
- **HAProxy**: no ``x-envoy-*`` header; the client enforces the total and per-try timeouts and
  retries with the same retry-on meaning and Envoy's back-off (full jitter, 25 ms base, 250 ms
  cap), all inside the total timeout.
- **Thrift** (``envoy_enforces=False``): Envoy's thrift_proxy has no timeouts or retries, so the
  client enforces them as on the HAProxy route on both routes; only the address differs.
"""

from __future__ import annotations

import email.utils
import enum
import itertools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from . import clock as _clock
from . import envoy, haproxy
from .budget import RetryBudget
from .circuit import SidecarCircuit
from .context import MESH_TIMEOUT_HEADER, REQUEST_ID_HEADER
from .deadline import time_left
from .errors import DeadlineExceeded, MeshConnectError, MeshTimeoutError, MeshTransportError
from .info import CallInfo
from .policy import CallPolicy, Route
from .registry import Address, MeshConfig, ServiceConfig
from .telemetry import CallTelemetry

__all__ = [
    "Attempt",
    "Broken",
    "CallRun",
    "Done",
    "Fail",
    "Failure",
    "Responded",
    "backoff_upper_bound",
    "drive",
    "drive_async",
]

BACKOFF_BASE_MS: Final = 25
BACKOFF_CAP_MS: Final = 250
#: The client's socket timeout on the Envoy route is Envoy's timeout plus this share of it...
ENVOY_MARGIN_SHARE: Final = 0.1
#: ... but at least / at most these many seconds.
ENVOY_MARGIN_MIN: Final = 0.1
ENVOY_MARGIN_MAX: Final = 1.0
#: Below this many seconds left, another attempt is not worth starting.
MIN_ATTEMPT: Final = 0.001

#: Caller-set request headers that never go out on a mesh call (besides the Envoy prefixes and the
#: names mesh_client sets itself): hop-by-hop headers and forwarding claims of a previous hop.
DROPPED_HEADERS: Final = frozenset(
    {
        "host",
        "forwarded",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "grpc-timeout",
        MESH_TIMEOUT_HEADER,
    }
)
_ERROR_KINDS: Final = {
    DeadlineExceeded: "deadline_exceeded",
    MeshTimeoutError: "timeout",
    MeshConnectError: "connect_error",
    MeshTransportError: "transport_error",
}


_serials = itertools.count(1)
_ENVOY: Final = Route.ENVOY  # a module global is read faster than an enum member, on every call


class Failure(str, enum.Enum):
    """How an attempt failed below HTTP, as the wrapper saw it."""

    CONNECT = "connect"  # no connection was made: nothing was sent
    TIMEOUT = "timeout"  # no answer within the attempt's timeout: it may have been processed
    RESET = "reset"  # the connection broke after the request may have been sent


R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Responded(Generic[R]):
    """An attempt got an HTTP response. ``body`` is set only when the core asked for it
    (:meth:`CallRun.wants_body`), to classify a possible Envoy local reply."""

    response: R
    status: int
    headers: Mapping[str, str]
    body: bytes | None = None
    #: the local proxy's own failure kind when the wrapper already knows it (Thrift replies made
    #: by Envoy); otherwise the core classifies HAProxy's error pages from ``body``
    proxy_error: str | None = None


@dataclass(frozen=True, slots=True)
class Broken:
    """An attempt failed below HTTP; ``error`` is the wrapped library's exception."""

    kind: Failure
    error: BaseException
    detail: str = ""
    #: the status and headers had arrived, the body did not complete (in time)
    response_started: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request to send: where, with which header changes, within which timeout."""

    number: int
    route: Route
    address: Address
    host: str
    set_headers: tuple[tuple[str, str], ...]
    drop_prefixes: tuple[str, ...]
    drop_names: frozenset[str]
    timeout: float
    delay: float = 0.0
    #: the attempt's timeout is its per-try timeout (time for another attempt remains after it)
    per_try_limited: bool = False
    #: the call this attempt belongs to (unique in the process): every attempt of a call shares it
    call: int = 0

    def drops(self, name: str) -> bool:
        """Whether a header the caller set must not go out on this attempt."""
        lower = name.lower()
        return lower.startswith(self.drop_prefixes) or lower in self.drop_names

    @property
    def base_url(self) -> str:
        return f"http://{self.address}"


@dataclass(frozen=True, slots=True)
class Done(Generic[R]):
    """The call is over with this response (any status: statuses are never raised)."""

    response: R
    info: CallInfo


@dataclass(frozen=True, slots=True)
class Fail:
    """The call is over with an error: raise ``error`` (combined with the library's own class)."""

    error: type[MeshTransportError]
    message: str
    info: CallInfo
    cause: BaseException | None


Step = Attempt | Done[R] | Fail


def parse_retry_after(value: str) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP date), None if unusable."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)  # not float(int(value)): that overflows for absurdly many digits (inf here)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - _clock.wall())


_DROP_PREFIXES: dict[str, tuple[str, ...]] = {}
_DROP_NAMES: dict[tuple[str, ...], frozenset[str]] = {}
_DROP_WITH_REQUEST_ID: Final = DROPPED_HEADERS | {REQUEST_ID_HEADER}


def _drop_prefixes(header_prefix: str) -> tuple[str, ...]:
    """Caller-set Envoy control headers never go out (configured or stock prefix), nor a previous
    hop's X-Forwarded-* claims (with X-Forwarded-For, Envoy would ignore every x-envoy-* header)."""
    prefixes = _DROP_PREFIXES.get(header_prefix)
    if prefixes is None:
        prefixes = tuple(dict.fromkeys((header_prefix + "-", "x-envoy-", "x-forwarded-", "proxy-")))
        _DROP_PREFIXES[header_prefix] = prefixes
    return prefixes


def _drop_names(context_headers: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """:data:`DROPPED_HEADERS` and the context headers' names (which mesh_client sets itself),
    made once per set of names rather than once per call."""
    if len(context_headers) == 1 and context_headers[0][0] == REQUEST_ID_HEADER:
        return _DROP_WITH_REQUEST_ID  # the usual case: no trace context, no inbound request
    key = tuple([name for name, _ in context_headers])
    names = _DROP_NAMES.get(key)
    if names is None:
        names = DROPPED_HEADERS | {name.lower() for name in key}
        if len(_DROP_NAMES) >= 256:  # the names come from propagators and the registry: a few sets
            _DROP_NAMES.clear()
        _DROP_NAMES[key] = names
    return names


def backoff_upper_bound(retry_number: int) -> float:
    """Envoy's back-off ceiling before retry ``retry_number`` (1-based): (2^n - 1) x 25 ms, max 250 ms."""
    return min(BACKOFF_CAP_MS, ((1 << retry_number) - 1) * BACKOFF_BASE_MS) / 1000


class CallRun(Generic[R]):
    """The state of one logical call. Not thread-safe: one run per call."""

    def __init__(
        self,
        *,
        mesh: MeshConfig,
        service: ServiceConfig,
        method: str,
        policy: CallPolicy,
        route: Route,
        route_reason: str,
        idempotent: bool | None = None,
        replayable: bool = True,
        context_headers: tuple[tuple[str, str], ...] = (),
        telemetry: CallTelemetry | None = None,
        envoy_address: Address | None = None,
        envoy_enforces: bool = True,
        budget: RetryBudget | None = None,
        circuit: SidecarCircuit | None = None,
        clock: Callable[[], float] = _clock.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.mesh = mesh
        self.service = service
        self.method = method
        self.policy = policy
        self.route = route
        self.route_reason = route_reason
        self.clock = clock
        self.jitter = jitter
        self.replayable = replayable
        self.context_headers = context_headers
        self.telemetry = telemetry
        #: where the Envoy route goes (the HTTP egress listener unless told otherwise)
        self.envoy_address = envoy_address or mesh.envoy_http
        #: Envoy applies timeouts and retries itself (HTTP); False: the client does it on both
        #: routes, because the proxy cannot (Envoy's thrift_proxy has neither)
        self.envoy_enforces = envoy_enforces
        self.budget = budget
        self.budget_exhausted = False
        self.circuit = circuit
        if budget is not None:
            budget.deposit()
        self.tokens = policy.retry_tokens_for(method, idempotent)
        now = clock()
        self.started = now
        left = time_left(now)
        self.deadline_left = left
        total = policy.timeout if left is None else min(policy.timeout, left)
        self.end = now + total
        self.serial = next(_serials)
        self.attempts = 0
        self.retries_done = 0
        self.failed_over = False
        self._last_attempt: Attempt | None = None
        self._prefix = mesh.header_prefix
        self._drop_prefixes = _drop_prefixes(mesh.header_prefix)
        self._drop_names = _drop_names(context_headers)

    # -- the state machine ---------------------------------------------------------------------

    def advance(self, outcome: Responded[R] | Broken | None) -> Step[R]:
        """The next step after ``outcome`` (None to get the first attempt)."""
        if outcome is None:
            if self.deadline_left is not None and self.deadline_left <= 0:
                return self._fail(
                    DeadlineExceeded,
                    f"the deadline passed {-self.deadline_left * 1000:.0f} ms ago; nothing was sent",
                    None,
                )
            if self.route is _ENVOY and self.mesh.failover and self.circuit is not None and self.circuit.is_open():
                self.route = Route.HAPROXY
                self.failed_over = True
                self.route_reason += "; the Envoy sidecar refused connections recently (circuit open): via HAProxy"
            return self._attempt(0.0)
        if isinstance(outcome, Responded):
            return self._on_response(outcome)
        return self._on_broken(outcome)

    def wants_body(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether the wrapper should read this (small) response body before :meth:`advance`:
        it may be a proxy's own reply, which the core classifies."""
        if self.route is Route.ENVOY:
            return envoy.may_be_local_reply(status, headers, self._prefix)
        return haproxy.may_be_local_reply(status, headers)

    def _on_response(self, outcome: Responded[R]) -> Step[R]:
        if self.route is Route.ENVOY and self.circuit is not None:
            self.circuit.answered()
        if self.route is Route.ENVOY and self.envoy_enforces:
            reported = envoy.attempt_count(outcome.headers, self._prefix)
            if reported and self.budget is not None:
                self.budget.spend(reported - 1)  # Envoy's retries draw on the same budget
            info = self._info(
                attempts=reported or self.attempts,
                upstream_service_time=envoy.upstream_service_time(outcome.headers, self._prefix),
                envoy_error=envoy.classify_reply(outcome.status, outcome.headers, outcome.body, self._prefix),
            )
            return self._done(outcome, info)
        if self._response_retryable(outcome) and (nxt := self._retry(self._retry_after(outcome))) is not None:
            return nxt
        envoy_error = outcome.proxy_error if self.route is Route.ENVOY else None
        return self._done(outcome, self._info(envoy_error=envoy_error))

    def _on_broken(self, outcome: Broken) -> Step[R]:
        attempt = self._last_attempt
        assert attempt is not None, "advance(None) must come first"
        where = f"{attempt.route.value} at {attempt.address}"
        detail = f" ({outcome.detail})" if outcome.detail else ""
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.circuit is not None:
            self.circuit.refused()
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.mesh.failover:
            self.route = Route.HAPROXY
            self.failed_over = True
            self.attempts = 0
            self.route_reason += "; Envoy refused the connection, failed over to HAProxy"
            return self._attempt(0.0)
        if self.route is Route.ENVOY and self.envoy_enforces:
            if outcome.kind is Failure.CONNECT:
                return self._fail(
                    MeshConnectError,
                    f"cannot connect to the Envoy sidecar at {attempt.address}{detail}; nothing was sent "
                    f"(failover is off in {self.mesh.source})",
                    outcome.error,
                )
            if outcome.kind is Failure.TIMEOUT and outcome.response_started:
                return self._fail(
                    MeshTimeoutError,
                    f"the response from the Envoy sidecar at {attempt.address} was not complete within "
                    f"{attempt.timeout:.3f} s{detail}: Envoy was asked to give up after "
                    f"{self._envoy_timeout_text(attempt)} and passes no more of the body on after that",
                    outcome.error,
                )
            if outcome.kind is Failure.TIMEOUT:
                return self._fail(
                    MeshTimeoutError,
                    f"no answer from the Envoy sidecar at {attempt.address} within {attempt.timeout:.3f} s "
                    f"(Envoy was asked to give up after {self._envoy_timeout_text(attempt)}); is the sidecar stuck?",
                    outcome.error,
                )
            return self._fail(MeshTransportError, f"the connection to {where} broke{detail}", outcome.error)
        if self._failure_retryable(outcome, attempt) and (nxt := self._retry()) is not None:
            return nxt
        tries = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if outcome.kind is Failure.CONNECT:
            return self._fail(MeshConnectError, f"cannot connect to {where}{detail} after {tries}", outcome.error)
        if outcome.kind is Failure.TIMEOUT:
            elapsed = self.clock() - self.started
            what = f"the response via {where} was not complete{detail}"
            if not outcome.response_started:
                what = f"no answer via {where}"
            return self._fail(
                MeshTimeoutError,
                f"{what} after {elapsed:.3f} s and {tries} (timeout {self._timeout_text()}){self._deadline_text()}",
                outcome.error,
            )
        return self._fail(MeshTransportError, f"the connection to {where} broke{detail} after {tries}", outcome.error)

    # -- retry rules (HAProxy route; Envoy applies the same ones itself) -------------------------

    def _response_retryable(self, outcome: Responded[R]) -> bool:
        if not self.replayable:  # the body went to HAProxy already and cannot be sent again
            return False
        status, tokens = outcome.status, self.tokens
        proxy_said = outcome.proxy_error or haproxy.classify_reply(status, outcome.body)
        if proxy_said in ("connect_failure", "no_healthy_upstream"):  # the proxy reached no instance
            return bool(set(tokens) & envoy.CONNECT_FAILURE_RETRY_ON)
        if proxy_said == "upstream_reset" and set(tokens) & envoy.RESET_RETRY_ON:
            return True
        if proxy_said in ("no_route", "no_cluster", "overloaded"):  # retrying cannot help, or hurts
            return False
        if f"{self._prefix}-overloaded" in outcome.headers:  # shed load: retrying would add to it
            return False
        if (status == 429 or "retry-after" in outcome.headers) and self._retry_after(outcome) is None:
            return False  # the server asked for a pause longer than the call has left
        return envoy.retry_on_covers_status(
            status, outcome.headers, tokens, self.policy.retriable_status_codes, self._prefix
        )

    def _failure_retryable(self, outcome: Broken, attempt: Attempt) -> bool:
        tokens = set(self.tokens)
        if outcome.kind is Failure.CONNECT:
            return bool(tokens & envoy.CONNECT_FAILURE_RETRY_ON)
        if not self.replayable:
            return False
        if outcome.kind is Failure.TIMEOUT:
            # only a per-try timeout can be retried: the total one ends the call
            return attempt.per_try_limited and bool(tokens & envoy.RESET_RETRY_ON)
        return bool(tokens & envoy.RESET_RETRY_ON)

    def _retry_after(self, outcome: Responded[R]) -> float | None:
        """Seconds the response asks to wait (``Retry-After``), 0 when it asks nothing, None when
        the pause would not fit in the time the call has left."""
        value = outcome.headers.get("retry-after")
        if value is None:
            return 0.0
        seconds = parse_retry_after(value)
        if seconds is None:
            return 0.0
        return seconds if self.clock() + seconds < self.end - MIN_ATTEMPT else None

    def _retry(self, at_least: float | None = 0.0) -> Attempt | None:
        if self.retries_done >= self.policy.retries:
            return None
        delay = max(at_least or 0.0, float(self.jitter(0.0, backoff_upper_bound(self.retries_done + 1))))
        now = self.clock()
        if self.end - now - delay < MIN_ATTEMPT:
            return None
        if self.budget is not None and not self.budget.try_withdraw():
            self.budget_exhausted = True
            return None
        self.retries_done += 1
        attempt = self._attempt(delay, now)
        assert isinstance(attempt, Attempt)  # time was checked above with the same clock reading
        return attempt

    # -- building attempts -----------------------------------------------------------------------

    def _attempt(self, delay: float, now: float | None = None) -> Attempt | Fail:
        remaining = self.end - (self.clock() if now is None else now) - delay
        if remaining < MIN_ATTEMPT:
            return self._fail(
                MeshTimeoutError,
                f"the timeout ({self._timeout_text()}) ran out before attempt {self.attempts + 1}; "
                f"nothing more was sent{self._deadline_text()}",
                None,
            )
        self.attempts += 1
        svc = self.service
        if self.route is _ENVOY and self.envoy_enforces:
            policy = self.policy
            retries = policy.retries
            if self.budget is not None and self.tokens and retries > 0:
                available = self.budget.available()
                if available < retries:
                    retries = available
                    self.budget_exhausted = available == 0
            # envoy.policy_headers, with the parts that do not change from call to call cached
            per_try = policy.per_try_timeout
            timeout_header, policy_rest = envoy.policy_header_template(
                self._prefix,
                per_try if per_try is not None and per_try < remaining else None,
                retries,
                self.tokens,
                policy.retriable_status_codes,
            )
            margin = remaining * ENVOY_MARGIN_SHARE  # within [ENVOY_MARGIN_MIN, ENVOY_MARGIN_MAX]
            margin = ENVOY_MARGIN_MIN if margin < ENVOY_MARGIN_MIN else min(margin, ENVOY_MARGIN_MAX)
            attempt = Attempt(
                number=self.attempts,
                route=_ENVOY,
                address=self.envoy_address,
                host=svc.envoy_host,
                set_headers=(
                    ("Host", svc.envoy_host),
                    *self.context_headers,
                    # envoy.timeout_ms(remaining), inline: remaining >= MIN_ATTEMPT, so never below 1 ms
                    (timeout_header, str(int(remaining * 1000 + 1e-6))),
                    *policy_rest,
                ),
                drop_prefixes=self._drop_prefixes,
                drop_names=self._drop_names,
                timeout=remaining + margin,
                delay=delay,
                call=self.serial,
            )
        else:
            per_try = self.policy.per_try_timeout
            timeout = min(per_try, remaining) if per_try is not None else remaining
            # no proxy adds x-envoy-expected-rq-timeout-ms here: tell the upstream its budget ourselves
            budget = (MESH_TIMEOUT_HEADER, str(envoy.timeout_ms(timeout)))
            attempt = Attempt(
                number=self.attempts,
                route=self.route,
                address=svc.haproxy if self.route is Route.HAPROXY else self.envoy_address,
                host=svc.envoy_host,
                set_headers=(("Host", svc.envoy_host), *self.context_headers, budget),
                drop_prefixes=self._drop_prefixes,
                drop_names=self._drop_names,
                timeout=timeout,
                delay=delay,
                per_try_limited=per_try is not None and per_try < remaining,
                call=self.serial,
            )
        self._last_attempt = attempt
        return attempt

    # -- results ---------------------------------------------------------------------------------

    def _info(
        self,
        *,
        attempts: int | None = None,
        upstream_service_time: float | None = None,
        envoy_error: str | None = None,
    ) -> CallInfo:
        return CallInfo(
            service=self.service.name,
            route=self.route,
            attempts=self.attempts if attempts is None else attempts,
            failed_over=self.failed_over,
            upstream_service_time=upstream_service_time,
            envoy_error=envoy_error,
            route_reason=self.route_reason,
            elapsed=self.clock() - self.started,
            retry_budget_exhausted=self.budget_exhausted,
        )

    def abort(self, error: BaseException) -> None:
        """The wrapper gave up on the call because ``error`` escaped (a bug, a cancelled task...):
        close its telemetry. The error itself is re-raised by the wrapper."""
        if self.telemetry is not None:
            kind = "cancelled" if type(error).__name__ == "CancelledError" else "error"
            self.telemetry.finish(self._info(), error_kind=kind)

    def _done(self, outcome: Responded[R], info: CallInfo) -> Done[R]:
        if self.telemetry is not None:
            self.telemetry.finish(info, status=outcome.status)
        return Done(outcome.response, info)

    def _fail(self, error: type[MeshTransportError], message: str, cause: BaseException | None) -> Fail:
        text = f"{self.method} to service {self.service.name!r}: {message}"
        info = self._info()
        if self.telemetry is not None:
            self.telemetry.finish(info, error_kind=_ERROR_KINDS.get(error, "transport_error"))
        return Fail(error, text, info, cause)

    def _timeout_text(self) -> str:
        per_try = self.policy.per_try_timeout
        text = f"{self.policy.timeout:g} s"
        return text + (f", per try {per_try:g} s" if per_try is not None else "")

    def _deadline_text(self) -> str:
        left = self.deadline_left
        if left is not None and left < self.policy.timeout:
            return f"; shortened to {max(left, 0.0):.3f} s by the caller's deadline"
        return ""

    def _envoy_timeout_text(self, attempt: Attempt) -> str:
        for name, value in attempt.set_headers:
            if name.endswith("-upstream-rq-timeout-ms"):
                return f"{value} ms"
        return "?"  # pragma: no cover - an Envoy attempt always carries the timeout


def drive(
    run: CallRun[R],
    send: Callable[[Attempt], Responded[R] | Broken],
    discard: Callable[[R], None],
    sleep: Callable[[float], None] = _clock.sleep,
) -> Done[R] | Fail:
    """Run a call to its end, synchronously. ``send`` does one attempt and classifies the result;
    ``discard`` releases a response that is being retried."""
    step = run.advance(None)
    try:
        while isinstance(step, Attempt):
            if step.delay > 0:
                sleep(step.delay)
            outcome = send(step)
            step = run.advance(outcome)
            if isinstance(step, Attempt) and isinstance(outcome, Responded):
                discard(outcome.response)
    except BaseException as exc:
        run.abort(exc)
        raise
    return step


async def drive_async(
    run: CallRun[R],
    send: Callable[[Attempt], Awaitable[Responded[R] | Broken]],
    discard: Callable[[R], Awaitable[None]],
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> Done[R] | Fail:
    """:func:`drive` for asyncio (or any loop ``sleep`` supports)."""
    if sleep is None:
        sleep = _clock.async_sleep
    step = run.advance(None)
    try:
        while isinstance(step, Attempt):
            if step.delay > 0:
                await sleep(step.delay)
            outcome = await send(step)
            step = run.advance(outcome)
            if isinstance(step, Attempt) and isinstance(outcome, Responded):
                await discard(outcome.response)
    except BaseException as exc:
        run.abort(exc)
        raise
    return step
