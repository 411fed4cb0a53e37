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
  retries with the same retry-on meaning and Envoy's back-off (full jitter below an interval of
  25 ms doubling per retry, 250 ms cap), all inside the total timeout.
- **Thrift** (``envoy_enforces=False``): Envoy's thrift_proxy has no timeouts or retries, so the
  client enforces them as on the HAProxy route on both routes; only the address differs.
"""

from __future__ import annotations

import email.utils
import enum
import itertools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, NamedTuple, TypeVar

from . import clock as _clock
from . import envoy, haproxy
from ._cache import BoundedCache
from .budget import RetryBudget
from .circuit import SidecarCircuit
from .context import MESH_TIMEOUT_HEADER, REQUEST_ID_HEADER
from .deadline import current_deadline
from .errors import DeadlineExceeded, MeshConnectError, MeshTimeoutError, MeshTransportError
from .info import CallInfo
from .policy import CallPolicy, Route
from .registry import Address, MeshConfig, ServiceConfig
from .shadow import SHADOW_HEADER
from .telemetry import CallTelemetry

__all__ = [
    "Attempt",
    "Broken",
    "CallRun",
    "Done",
    "Fail",
    "Failure",
    "Responded",
    "ServicePlan",
    "backoff_upper_bound",
    "drive",
    "drive_async",
]

#: Envoy's retry back-off (its router's ``JitteredExponentialBackOffStrategy`` with the default
#: ``retry_back_off``): the interval starts at the base and doubles each retry up to the cap (10 x the
#: base); each wait is drawn uniformly below the interval ("full jitter").
BACKOFF_BASE_MS: Final = 25
BACKOFF_CAP_MS: Final = 10 * BACKOFF_BASE_MS
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
        SHADOW_HEADER,  # set by mesh_client only: on copies, and while serving a copy
    }
)
_ERROR_KINDS: Final = {
    DeadlineExceeded: "deadline_exceeded",
    MeshTimeoutError: "timeout",
    MeshConnectError: "connect_error",
    MeshTransportError: "transport_error",
}


#: Envoy's own replies to requests it never sent upstream: no retry can have happened before them
_NOT_RETRIED_BY_ENVOY: Final = frozenset(
    {"no_route", "no_cluster", "no_healthy_upstream", "overloaded", "invalid_header"}
)

_serials = itertools.count(1)
_ENVOY: Final = Route.ENVOY  # a module global is read faster than an enum member, on every call


class Failure(str, enum.Enum):
    """How an attempt failed below HTTP, as the wrapper saw it."""

    CONNECT = "connect"  # no connection was made: nothing was sent
    TIMEOUT = "timeout"  # no answer within the attempt's timeout: it may have been processed
    RESET = "reset"  # the connection broke after the request may have been sent


R = TypeVar("R")


@dataclass(slots=True)
class Responded(Generic[R]):
    """An attempt got an HTTP response. ``body`` is set only when the core asked for it
    (:meth:`CallRun.wants_body`), to classify a possible Envoy local reply.

    A message from a wrapper to :meth:`CallRun.advance`, read once and not kept (so not frozen:
    a frozen dataclass costs three times as much to make, once per attempt)."""

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


class Attempt(NamedTuple):
    """One request to send: where, with which header changes, within which timeout.

    An immutable record (a named tuple: made once per attempt, at half the cost of a frozen
    dataclass)."""

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
#: the names come from propagators and the registry: a few sets
_DROP_NAMES: BoundedCache[tuple[str, ...], frozenset[str]] = BoundedCache(256)
_DROP_WITH_REQUEST_ID: Final = DROPPED_HEADERS | {REQUEST_ID_HEADER}


def _drop_prefixes(header_prefix: str) -> tuple[str, ...]:
    """Caller-set Envoy control headers never go out (configured or stock prefix), nor a previous
    hop's X-Forwarded-* claims (with X-Forwarded-For, Envoy would ignore every x-envoy-* header),
    nor mesh_client's own ``x-mesh-*`` headers (routing overrides, variant, shadow copies: only the
    library sets them)."""
    prefixes = _DROP_PREFIXES.get(header_prefix)
    if prefixes is None:
        prefixes = tuple(dict.fromkeys((header_prefix + "-", "x-envoy-", "x-forwarded-", "proxy-", "x-mesh-")))
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
        names = _DROP_NAMES.put(key, DROPPED_HEADERS | {name.lower() for name in key})
    return names


def backoff_upper_bound(retry_number: int) -> float:
    """Envoy's back-off ceiling before retry ``retry_number`` (1-based), in seconds:
    25 ms x 2^(n-1), at most 250 ms, that is 25, 50, 100, 200, then 250 ms (measured through
    Envoy 1.40: ``tests/integration/test_conformance.py::test_backoff_timing``)."""
    doublings = min(max(retry_number, 1) - 1, 16)  # (past the cap long before 16: no huge shift)
    return min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << doublings) / 1000


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """What every call to one service through one mesh shares, worked out once: where the Envoy
    route goes, who enforces the policy, the service's retry budget and sidecar circuit, and the
    header rules. :meth:`Mesh.start_call <mesh_client.Mesh.start_call>` keeps one per service;
    the caches at the end fill as calls are made (per method, per retry count)."""

    mesh: MeshConfig
    service: ServiceConfig
    #: where the Envoy route goes (the HTTP egress listener unless told otherwise)
    envoy_address: Address
    #: Envoy applies timeouts and retries itself (HTTP); False: the client does it on both routes,
    #: because the proxy cannot (Envoy's thrift_proxy has neither)
    envoy_enforces: bool = True
    budget: RetryBudget | None = None
    circuit: SidecarCircuit | None = None
    clock: Callable[[], float] = _clock.monotonic
    jitter: Callable[[float, float], float] = random.uniform
    #: the service policy's retry-on tokens per method (for calls that do not declare idempotence)
    tokens: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    #: (per-try timeout applies, retries, tokens) -> the service policy's Envoy header template
    envoy_headers: dict[tuple[bool, int, tuple[str, ...]], tuple[str, tuple[tuple[str, str], ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: caller-set headers with these prefixes never go out (see :func:`_drop_prefixes`)
    drop_prefixes: tuple[str, ...] = field(init=False, compare=False, repr=False)
    #: ``("Host", service.envoy_host)``
    host_header: tuple[str, str] = field(init=False, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        mesh: MeshConfig,
        service: ServiceConfig,
        *,
        envoy_address: Address | None = None,
        envoy_enforces: bool = True,
        budget: RetryBudget | None = None,
        circuit: SidecarCircuit | None = None,
        clock: Callable[[], float] = _clock.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> ServicePlan:
        return cls(
            mesh,
            service,
            envoy_address or mesh.envoy_http,
            envoy_enforces,
            budget,
            circuit,
            clock,
            jitter,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_prefixes", _drop_prefixes(self.mesh.header_prefix))
        object.__setattr__(self, "host_header", ("Host", self.service.envoy_host))

    def envoy_template(
        self, policy: CallPolicy, per_try_applies: bool, retries: int, tokens: tuple[str, ...]
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        """:func:`envoy.policy_header_template` for ``policy``, remembered here for the service's
        own policy (a dictionary read instead of the cache's five-argument key)."""
        own = policy is self.service.policy
        if own:
            found = self.envoy_headers.get((per_try_applies, retries, tokens))
            if found is not None:
                return found
        template = envoy.policy_header_template(
            self.mesh.header_prefix,
            policy.per_try_timeout if per_try_applies else None,
            retries,
            tokens,
            policy.retriable_status_codes,
        )
        if own and len(self.envoy_headers) < 64:
            self.envoy_headers[(per_try_applies, retries, tokens)] = template
        return template

    def tokens_for(self, policy: CallPolicy, method: str, idempotent: bool | None) -> tuple[str, ...]:
        """``policy.retry_tokens_for(method, idempotent)``, remembered per method for the
        service's own policy (the usual call)."""
        if idempotent is not None or policy is not self.service.policy:
            return policy.retry_tokens_for(method, idempotent)
        tokens = self.tokens.get(method)
        if tokens is None:
            tokens = policy.retry_tokens_for(method, None)
            if len(self.tokens) < 64:  # methods are few (HTTP) or bounded by the IDL (Thrift)
                self.tokens[method] = tokens
        return tokens


class CallRun(Generic[R]):
    """The state of one logical call. Not thread-safe: one run per call.

    ``plan`` holds what calls to the service share; the rest is this call's: the merged policy,
    the route and why, the context headers, the telemetry. For a one-off run (a test), make its
    plan with :meth:`ServicePlan.of`."""

    # defaults of the per-call state (class attributes: one store fewer each per call)
    attempts: int = 0
    retries_done: int = 0
    failed_over: bool = False
    budget_exhausted: bool = False
    #: the x-envoy-max-retries the Envoy attempt allowed (what a retryable answer without
    #: Envoy's attempt count is charged to the budget)
    envoy_retries: int = 0
    _last_attempt: Attempt | None = None
    #: the migration stage the flag answered (None: a plain route)
    stage: str | None = None
    #: the copy of this call to make once it is answered (a ``mesh_client.shadow.runner.ShadowCall``)
    shadow: Any = None
    #: the variant a routing override sends the call to on the Envoy route, and the one it
    #: reaches on the HAProxy route (see mesh_client.steering); None: the main deployment
    variant: str | None = None
    haproxy_variant: str | None = None

    def __init__(
        self,
        plan: ServicePlan,
        method: str,
        policy: CallPolicy,
        route: Route,
        route_reason: str,
        *,
        context_headers: tuple[tuple[str, str], ...] = (),
        telemetry: CallTelemetry | None = None,
        idempotent: bool | None = None,
        replayable: bool = True,
    ) -> None:
        self.plan = plan
        self.method = method
        self.policy = policy
        self.route = route
        self.route_reason = route_reason
        self.context_headers = context_headers
        self.telemetry = telemetry
        self.replayable = replayable
        budget = plan.budget
        #: whole retries the budget allowed when the call started (-1: no budget)
        self._budget_left = budget.deposit() if budget is not None else -1
        self.tokens = plan.tokens_for(policy, method, idempotent)
        now = plan.clock()
        self.started = now
        at = current_deadline()
        if at is None:
            self.deadline_left = None
            self.end = now + policy.timeout
        else:
            left = self.deadline_left = at - now
            self.end = now + (policy.timeout if policy.timeout < left else left)
        self.serial = next(_serials)

    @property
    def mesh(self) -> MeshConfig:
        return self.plan.mesh

    @property
    def service(self) -> ServiceConfig:
        return self.plan.service

    @property
    def envoy_address(self) -> Address:
        return self.plan.envoy_address

    @property
    def clock(self) -> Callable[[], float]:
        return self.plan.clock

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
            circuit = self.plan.circuit
            if self.route is _ENVOY and circuit is not None and self.plan.mesh.failover and circuit.is_open():
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
        if self.route is _ENVOY:
            return envoy.may_be_local_reply(status, headers, self.plan.mesh.header_prefix)
        return haproxy.may_be_local_reply(status, headers)

    def _on_response(self, outcome: Responded[R]) -> Step[R]:
        plan = self.plan
        if self.route is _ENVOY and plan.circuit is not None:
            plan.circuit.answered()
        if self.route is _ENVOY and plan.envoy_enforces:
            prefix, headers = plan.mesh.header_prefix, outcome.headers
            reported = envoy.attempt_count(headers, prefix)
            envoy_error = envoy.classify_reply(outcome.status, headers, outcome.body, prefix)
            if plan.budget is not None:  # Envoy's retries draw on the same budget
                if reported:
                    plan.budget.spend(reported - 1)
                elif self.envoy_retries and self._envoy_may_have_retried(outcome, envoy_error):
                    plan.budget.spend(self.envoy_retries)  # no count: charge all it was allowed
                if self.envoy_retries < self.policy.retries and self.tokens and not self.budget_exhausted:
                    # the budget cut Envoy's retries short: exhausted if Envoy used them all up
                    used_up = reported is None or reported > self.envoy_retries
                    self.budget_exhausted = used_up and self._envoy_may_have_retried(outcome, envoy_error)
            info = self._info(
                attempts=reported or self.attempts,
                upstream_service_time=envoy.upstream_service_time(headers, prefix),
                envoy_error=envoy_error,
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
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.plan.circuit is not None:
            self.plan.circuit.refused()
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.plan.mesh.failover:
            self.route = Route.HAPROXY
            self.failed_over = True
            self.attempts = 0
            self.route_reason += "; Envoy refused the connection, failed over to HAProxy"
            return self._attempt(0.0)
        if self.route is Route.ENVOY and self.plan.envoy_enforces:
            if outcome.kind is Failure.CONNECT:
                return self._fail(
                    MeshConnectError,
                    f"cannot connect to the Envoy sidecar at {attempt.address}{detail}; nothing was sent "
                    f"(failover is off in {self.plan.mesh.source})",
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
            if outcome.kind is Failure.TIMEOUT and (spent := self.plan.clock() - self.started) < attempt.timeout:
                return self._fail(  # the library gave up before the time did (a mock, a pool timeout)
                    MeshTimeoutError,
                    f"the request to the Envoy sidecar at {attempt.address} timed out after {spent:.3f} s{detail}, "
                    f"before the attempt's {attempt.timeout:.3f} s",
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
            elapsed = self.plan.clock() - self.started
            what = f"the response via {where} was not complete{detail}"
            if not outcome.response_started:
                # (the library's own words when it gave up before the time did: a mock's, say)
                what = f"no answer via {where}{detail if elapsed < attempt.timeout else ''}"
            return self._fail(
                MeshTimeoutError,
                f"{what} after {elapsed:.3f} s and {tries} (timeout {self._timeout_text()}){self._deadline_text()}",
                outcome.error,
            )
        return self._fail(MeshTransportError, f"the connection to {where} broke{detail} after {tries}", outcome.error)

    def _envoy_may_have_retried(self, outcome: Responded[R], envoy_error: str | None) -> bool:
        """Whether Envoy could have retried before giving up with this answer: the call's retry-on
        tokens cover it, so Envoy stopped only when its retries (or the time) ran out. A success,
        an application's 4xx and Envoy's replies to requests it never sent upstream (no route, no
        cluster, no healthy upstream, overload, invalid header) say no."""
        tokens = self.tokens
        if envoy_error is not None and f"{self.plan.mesh.header_prefix}-upstream-service-time" not in outcome.headers:
            if envoy_error in _NOT_RETRIED_BY_ENVOY:
                return False
            if envoy_error == "connect_failure":
                return not envoy.CONNECT_FAILURE_RETRY_ON.isdisjoint(tokens)
            if envoy_error in ("upstream_reset", "timeout") and not envoy.RESET_RETRY_ON.isdisjoint(tokens):
                return True
        return envoy.retry_on_covers_status(
            outcome.status, outcome.headers, tokens, self.policy.retriable_status_codes, self.plan.mesh.header_prefix
        )

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
        if f"{self.plan.mesh.header_prefix}-overloaded" in outcome.headers:  # shed load: retrying would add to it
            return False
        if (status == 429 or "retry-after" in outcome.headers) and self._retry_after(outcome) is None:
            return False  # the server asked for a pause longer than the call has left
        return envoy.retry_on_covers_status(
            status, outcome.headers, tokens, self.policy.retriable_status_codes, self.plan.mesh.header_prefix
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
        return seconds if self.plan.clock() + seconds < self.end - MIN_ATTEMPT else None

    def _retry(self, at_least: float | None = 0.0) -> Attempt | None:
        if self.retries_done >= self.policy.retries:
            return None
        delay = max(at_least or 0.0, float(self.plan.jitter(0.0, backoff_upper_bound(self.retries_done + 1))))
        now = self.plan.clock()
        if self.end - now - delay < MIN_ATTEMPT:
            return None
        if self.plan.budget is not None and not self.plan.budget.try_withdraw():
            self.budget_exhausted = True
            return None
        self.retries_done += 1
        attempt = self._attempt(delay, now)
        assert isinstance(attempt, Attempt)  # time was checked above with the same clock reading
        return attempt

    # -- building attempts -----------------------------------------------------------------------

    def _attempt(self, delay: float, now: float | None = None) -> Attempt | Fail:
        plan = self.plan
        remaining = self.end - (plan.clock() if now is None else now) - delay
        if remaining < MIN_ATTEMPT:
            return self._fail(
                MeshTimeoutError,
                f"the timeout ({self._timeout_text()}) ran out before attempt {self.attempts + 1}; "
                f"nothing more was sent{self._deadline_text()}",
                None,
            )
        self.attempts += 1
        context_headers = self.context_headers
        if len(context_headers) == 1 and context_headers[0][0] == REQUEST_ID_HEADER:
            drop_names = _DROP_WITH_REQUEST_ID  # the usual case: no trace context, no inbound request
        else:
            drop_names = _drop_names(context_headers)
        policy = self.policy
        per_try = policy.per_try_timeout
        if self.route is _ENVOY and plan.envoy_enforces:
            retries = policy.retries
            if self._budget_left >= 0 and self.tokens and retries > 0 and self._budget_left < retries:
                retries = self._budget_left  # (the budget as the call found it: one Envoy attempt per call)
                self.budget_exhausted = retries == 0
            if self.tokens:
                self.envoy_retries = retries  # (the template sends it only with a retry-on condition)
            per_try_applies = per_try is not None and per_try < remaining
            timeout_header, policy_rest = plan.envoy_template(policy, per_try_applies, retries, self.tokens)
            margin = remaining * ENVOY_MARGIN_SHARE  # within [ENVOY_MARGIN_MIN, ENVOY_MARGIN_MAX]
            margin = ENVOY_MARGIN_MIN if margin < ENVOY_MARGIN_MIN else min(margin, ENVOY_MARGIN_MAX)
            attempt = Attempt(
                number=self.attempts,
                route=_ENVOY,
                address=plan.envoy_address,
                host=plan.host_header[1],
                set_headers=(
                    plan.host_header,
                    *context_headers,
                    # envoy.timeout_ms(remaining), inline: remaining >= MIN_ATTEMPT, so never below 1 ms
                    (timeout_header, str(int(remaining * 1000 + 1e-6))),
                    *policy_rest,
                ),
                drop_prefixes=plan.drop_prefixes,
                drop_names=drop_names,
                timeout=remaining + margin,
                delay=delay,
                call=self.serial,
            )
        else:
            timeout = min(per_try, remaining) if per_try is not None else remaining
            # no proxy adds x-envoy-expected-rq-timeout-ms here: tell the upstream its budget ourselves
            budget = (MESH_TIMEOUT_HEADER, str(envoy.timeout_ms(timeout)))
            attempt = Attempt(
                number=self.attempts,
                route=self.route,
                address=plan.service.haproxy if self.route is Route.HAPROXY else plan.envoy_address,
                host=plan.host_header[1],
                set_headers=(plan.host_header, *context_headers, budget),
                drop_prefixes=plan.drop_prefixes,
                drop_names=drop_names,
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
            service=self.plan.service.name,
            route=self.route,
            attempts=self.attempts if attempts is None else attempts,
            failed_over=self.failed_over,
            upstream_service_time=upstream_service_time,
            envoy_error=envoy_error,
            route_reason=self.route_reason,
            elapsed=self.plan.clock() - self.started,
            retry_budget_exhausted=self.budget_exhausted,
            variant=self.variant and (self.variant if self.route is _ENVOY else self.haproxy_variant),
            stage=self.stage,
        )

    def abort(self, error: BaseException) -> None:
        """The wrapper gave up on the call because ``error`` escaped (a bug, a cancelled task...):
        close its telemetry. The error itself is re-raised by the wrapper."""
        if self.telemetry is not None:
            kind = "cancelled" if type(error).__name__ == "CancelledError" else "error"
            self.telemetry.finish(self._info(), error_kind=kind, peer=self._peer(), escaped=error)

    def _done(self, outcome: Responded[R], info: CallInfo) -> Done[R]:
        if self.telemetry is not None:
            self.telemetry.finish(info, status=outcome.status, peer=self._peer(), response=outcome.response)
        return Done(outcome.response, info)

    def _fail(self, error: type[MeshTransportError], message: str, cause: BaseException | None) -> Fail:
        text = f"{self.method} to service {self.plan.service.name!r}: {message}"
        info = self._info()
        if self.telemetry is not None:
            self.telemetry.finish(
                info,
                error_kind=_ERROR_KINDS.get(error, "transport_error"),
                peer=self._peer(),
                error=error,
                message=text,
                cause=cause,
            )
        return Fail(error, text, info, cause)

    def _peer(self) -> Address | None:
        """Where the last attempt went (for telemetry), None before the first."""
        attempt = self._last_attempt
        return attempt.address if attempt is not None else None

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
