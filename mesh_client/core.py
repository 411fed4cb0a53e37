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

The pieces it reads live beside it: the messages to and from wrappers in :mod:`mesh_client.steps`,
what a service's calls share in :mod:`mesh_client.plan`, the retry rules in
:mod:`mesh_client.retrying`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar

from . import envoy, failures, haproxy
from .context import MESH_TIMEOUT_HEADER, REQUEST_ID_HEADER
from .deadline import current_deadline
from .driving import drive, drive_async
from .errors import DeadlineExceeded, MeshConnectError, MeshTimeoutError, MeshTransportError
from .info import CallInfo, new_call_info
from .plan import DROP_WITH_REQUEST_ID, ServicePlan, drop_names
from .policy import CallPolicy, Route
from .registry import Address, MeshConfig, ServiceConfig
from .retrying import (
    MIN_ATTEMPT,
    backoff_upper_bound,
    envoy_may_have_retried,
    failure_retryable,
    parse_retry_after,
    response_retryable,
)
from .steps import Attempt, Broken, Done, Fail, Failure, Responded, Step
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
    "parse_retry_after",
]

#: The client's socket timeout on the Envoy route is Envoy's timeout plus this share of it...
ENVOY_MARGIN_SHARE: Final = 0.1
#: ... but at least / at most these many seconds.
ENVOY_MARGIN_MIN: Final = 0.1
ENVOY_MARGIN_MAX: Final = 1.0

_ERROR_KINDS: Final = {
    DeadlineExceeded: "deadline_exceeded",
    MeshTimeoutError: "timeout",
    MeshConnectError: "connect_error",
    MeshTransportError: "transport_error",
}


_serials = itertools.count(1)
_ENVOY: Final = Route.ENVOY  # a module global is read faster than an enum member, on every call

R = TypeVar("R")


def _envoy_timeouts(seconds: float) -> tuple[str, float]:
    """For an Envoy attempt with ``seconds`` left (at least MIN_ATTEMPT): Envoy's timeout header
    value (whole ms, rounded down: never below 1 ms here) and the client's socket timeout, a
    margin above it (:data:`ENVOY_MARGIN_SHARE` of it, within [:data:`ENVOY_MARGIN_MIN`,
    :data:`ENVOY_MARGIN_MAX`])."""
    margin = seconds * ENVOY_MARGIN_SHARE
    margin = ENVOY_MARGIN_MIN if margin < ENVOY_MARGIN_MIN else min(margin, ENVOY_MARGIN_MAX)
    return str(int(seconds * 1000 + 1e-6)), seconds + margin


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
    #: the service's own policy and the method's usual retry tokens (no call options changed
    #: them): the first Envoy attempt may be the plan's prepared one (see :meth:`_attempt`)
    usual: bool = False

    def __init__(  # noqa: PLR0917 - start_call passes them positionally: keywords cost 2,000 instructions a call
        self,
        plan: ServicePlan,
        method: str,
        policy: CallPolicy,
        route: Route,
        route_reason: str,
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
        now = plan.clock()
        budget = plan.budget
        #: whole retries the budget allowed when the call started (-1: no budget)
        self._budget_left = -1 if budget is None else budget.deposit(now if budget.clock is plan.clock else None)
        # the usual call: the service's own policy, its tokens for this method already worked out
        tokens = plan.tokens.get(method) if idempotent is None and policy is plan.service.policy else None
        if tokens is None:
            self.tokens = plan.tokens_for(policy, method, idempotent)
        else:
            self.tokens, self.usual = tokens, True
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
        """The next step after ``outcome`` (None to get the first attempt, which is timed from
        the run's start: ask for it right after making the run, as :func:`drive` does)."""
        if outcome is None:
            if self.deadline_left is not None and self.deadline_left <= 0:
                return self._fail(
                    DeadlineExceeded,
                    f"the deadline passed {-self.deadline_left * 1000:.0f} ms ago; nothing was sent",
                    None,
                )
            circuit = self.plan.circuit
            if (
                self.route is _ENVOY
                and circuit is not None
                and circuit.open_until  # (0.0: never opened, or answered since; is_open() not asked)
                and self.plan.mesh.failover
                and circuit.is_open()
            ):
                self.route = Route.HAPROXY
                self.failed_over = True
                self.route_reason += "; the Envoy sidecar refused connections recently (circuit open): via HAProxy"
            return self._attempt(0.0, self.started)
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
        circuit = plan.circuit
        if self.route is _ENVOY and circuit is not None and circuit.open_until:  # (0.0: nothing to close)
            circuit.answered()
        if self.route is _ENVOY and plan.envoy_enforces:
            prefix, headers = plan.mesh.header_prefix, outcome.headers
            status, codes = outcome.status, self.policy.retriable_status_codes
            reported, service_time, envoy_error = envoy.read_answer(status, headers, outcome.body, prefix)
            if plan.budget is not None:  # Envoy's retries draw on the same budget
                # the usual answer (the application's, below 400, its status retried by no
                # retriable_status_codes entry) is one Envoy gave up no retry for: skip the rules
                # (a property test in test_core checks that envoy_may_have_retried says no to it)
                retried = (envoy_error is not None or status >= 400 or status in codes) and envoy_may_have_retried(
                    outcome, envoy_error, self.tokens, codes, prefix
                )
                if reported:
                    plan.budget.spend(reported - 1)
                elif self.envoy_retries and retried:
                    plan.budget.spend(self.envoy_retries)  # no count: charge all it was allowed
                if self.envoy_retries < self.policy.retries and self.tokens and not self.budget_exhausted:
                    # the budget cut Envoy's retries short: exhausted if Envoy used them all up
                    self.budget_exhausted = (reported is None or reported > self.envoy_retries) and retried
            # (positional: attempts, upstream_service_time, envoy_error)
            info = self._info(reported or self.attempts, service_time, envoy_error)
            return self._done(outcome, info)
        status = outcome.status
        if (
            status < 400
            and outcome.proxy_error is None
            and status not in self.policy.retriable_status_codes
            and "envoy-ratelimited" not in self.tokens
        ):  # the usual answer (a Thrift reply, a 200): no retry rule can apply (see response_retryable)
            return self._done(outcome, self._info())
        pause = self._retry_after(outcome) if "retry-after" in outcome.headers else 0.0
        if (
            response_retryable(
                outcome,
                self.tokens,
                self.policy.retriable_status_codes,
                plan.mesh.header_prefix,
                replayable=self.replayable,
                pause_fits=pause is not None,
            )
            and (nxt := self._retry(pause)) is not None
        ):
            return nxt
        envoy_error = outcome.proxy_error if self.route is Route.ENVOY else None
        return self._done(outcome, self._info(None, None, envoy_error))

    def _on_broken(self, outcome: Broken) -> Step[R]:
        attempt = self._last_attempt
        assert attempt is not None, "advance(None) must come first"
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.plan.circuit is not None:
            self.plan.circuit.refused()
        if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.plan.mesh.failover:
            self.route = Route.HAPROXY
            self.failed_over = True
            self.attempts = 0
            self.route_reason += "; Envoy refused the connection, failed over to HAProxy"
            return self._attempt(0.0)
        timed_out = outcome.kind is Failure.TIMEOUT
        if self.route is Route.ENVOY and self.plan.envoy_enforces:
            spent = self.plan.clock() - self.started if timed_out else 0.0
            return self._fail(*failures.envoy_enforced(outcome, attempt, spent, self.plan.mesh.source), outcome.error)
        if failure_retryable(outcome, attempt, self.tokens, self.replayable) and (nxt := self._retry()) is not None:
            return nxt
        elapsed = self.plan.clock() - self.started if timed_out else 0.0
        ending = failures.client_enforced(
            outcome, attempt, self.attempts, elapsed, policy=self.policy, deadline_left=self.deadline_left
        )
        return self._fail(*ending, outcome.error)

    def _envoy_may_have_retried(self, outcome: Responded[R], envoy_error: str | None) -> bool:
        return envoy_may_have_retried(
            outcome, envoy_error, self.tokens, self.policy.retriable_status_codes, self.plan.mesh.header_prefix
        )

    # -- retry rules (HAProxy route; Envoy applies the same ones itself: see mesh_client.retrying) ---

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
                f"the timeout ({failures.timeout_text(self.policy)}) ran out before attempt {self.attempts + 1}; "
                f"nothing more was sent{failures.deadline_text(self.policy, self.deadline_left)}",
                None,
            )
        self.attempts += 1
        context_headers = self.context_headers
        if (len(context_headers) == 1 and context_headers[0][0] == REQUEST_ID_HEADER) or not context_headers:
            dropped = DROP_WITH_REQUEST_ID  # the usual case: no trace context, no inbound request (or framed Thrift)
        else:
            dropped = drop_names(context_headers)
        policy = self.policy
        per_try = policy.per_try_timeout
        if self.route is _ENVOY and plan.envoy_enforces:
            retries = policy.retries
            if self._budget_left >= 0 and self.tokens and retries > 0 and self._budget_left < retries:
                retries = self._budget_left  # (the budget as the call found it: one Envoy attempt per call)
                self.budget_exhausted = retries == 0
            # the usual call's first attempt with no deadline from upstream: its whole timeout left,
            # so its headers after the context headers and its socket timeout are the same on every
            # such call (worked out once per method, then read from the plan)
            first = self.usual and self.attempts == 1 and self.deadline_left is None and retries == policy.retries
            prepared = plan.first_envoy.get(self.method) if first else None
            if prepared is not None:
                tail, timeout, self.envoy_retries = prepared
            else:
                if self.tokens:
                    self.envoy_retries = retries  # (the template sends it only with a retry-on condition)
                per_try_applies = per_try is not None and per_try < remaining
                # (the service policy's template read here: one call fewer than envoy_template's own read)
                template = (
                    plan.envoy_headers.get((per_try_applies, retries, self.tokens))
                    if policy is plan.service.policy
                    else None
                )
                if template is None:
                    template = plan.envoy_template(policy, per_try_applies, retries, self.tokens)
                timeout_header, policy_rest = template
                if first and len(plan.first_envoy) < 64:
                    # from the policy's timeout itself (remaining is that, give or take a rounding)
                    whole_ms, whole_timeout = _envoy_timeouts(policy.timeout)
                    plan.first_envoy[self.method] = (
                        ((timeout_header, whole_ms), *policy_rest),
                        whole_timeout,
                        self.envoy_retries,
                    )
                remaining_ms, timeout = _envoy_timeouts(remaining)
                tail = ((timeout_header, remaining_ms), *policy_rest)
            attempt = Attempt(  # (positional, in Attempt's field order: keywords cost twice as much)
                self.attempts,  # number
                _ENVOY,  # route
                plan.envoy_address,  # address
                plan.host_header[1],  # host
                (plan.host_header, *context_headers, *tail),  # set_headers
                plan.drop_prefixes,  # drop_prefixes
                dropped,  # drop_names
                timeout,  # timeout
                delay,  # delay
                False,  # per_try_limited (Envoy times each try itself)
                self.serial,  # call
            )
        else:
            timeout = min(per_try, remaining) if per_try is not None else remaining
            if plan.carries_headers:
                # no proxy adds x-envoy-expected-rq-timeout-ms here: tell the upstream its budget ourselves
                set_headers: tuple[tuple[str, str], ...] = (
                    plan.host_header,
                    *context_headers,
                    (MESH_TIMEOUT_HEADER, str(envoy.timeout_ms(timeout))),
                )
            else:  # framed Thrift
                set_headers = ()
            attempt = Attempt(
                self.attempts,  # number
                self.route,  # route
                plan.service.haproxy if self.route is Route.HAPROXY else plan.envoy_address,  # address
                plan.host_header[1],  # host
                set_headers,  # set_headers
                plan.drop_prefixes,  # drop_prefixes
                dropped,  # drop_names
                timeout,  # timeout
                delay,  # delay
                per_try is not None and per_try < remaining,  # per_try_limited
                self.serial,  # call
            )
        self._last_attempt = attempt
        return attempt

    # -- results ---------------------------------------------------------------------------------

    def _info(
        self,
        attempts: int | None = None,
        upstream_service_time: float | None = None,
        envoy_error: str | None = None,
    ) -> CallInfo:
        return new_call_info(  # (positional, in CallInfo's field order; half the cost of CallInfo(...))
            self.plan.service.name,  # service
            self.route,  # route
            self.attempts if attempts is None else attempts,  # attempts
            self.failed_over,  # failed_over
            upstream_service_time,  # upstream_service_time
            envoy_error,  # envoy_error
            self.route_reason,  # route_reason
            self.plan.clock() - self.started,  # elapsed
            self.budget_exhausted,  # retry_budget_exhausted
            self.variant and (self.variant if self.route is _ENVOY else self.haproxy_variant),  # variant
            self.stage,  # stage
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
