"""How a call that got no answer ends: the error class and the message, for each way its last
attempt broke (see :class:`~mesh_client.steps.Failure`). Pure functions of the attempt, the
policy and the time spent; :class:`~mesh_client.core.CallRun` decides *whether* the call ends."""

from __future__ import annotations

from .errors import MeshConnectError, MeshTimeoutError, MeshTransportError
from .policy import CallPolicy
from .steps import Attempt, Broken, Failure

__all__ = ["client_enforced", "deadline_text", "envoy_enforced", "timeout_text"]

Ending = tuple[type[MeshTransportError], str]


def envoy_enforced(outcome: Broken, attempt: Attempt, spent: float, source: str) -> Ending:
    """The end of a call whose Envoy attempt broke (Envoy applies the policy: no retry here).
    ``spent``: seconds since the call started (read for timeouts only); ``source``: the registry
    file, named when failover is off."""
    detail = f" ({outcome.detail})" if outcome.detail else ""
    if outcome.kind is Failure.CONNECT:
        return MeshConnectError, (
            f"cannot connect to the Envoy sidecar at {attempt.address}{detail}; nothing was sent "
            f"(failover is off in {source})"
        )
    if outcome.kind is Failure.TIMEOUT and outcome.response_started:
        return MeshTimeoutError, (
            f"the response from the Envoy sidecar at {attempt.address} was not complete within "
            f"{attempt.timeout:.3f} s{detail}: Envoy was asked to give up after "
            f"{_envoy_timeout_text(attempt)} and passes no more of the body on after that"
        )
    if outcome.kind is Failure.TIMEOUT and spent < attempt.timeout:
        return MeshTimeoutError, (  # the library gave up before the time did (a mock, a pool timeout)
            f"the request to the Envoy sidecar at {attempt.address} timed out after {spent:.3f} s{detail}, "
            f"before the attempt's {attempt.timeout:.3f} s"
        )
    if outcome.kind is Failure.TIMEOUT:
        return MeshTimeoutError, (
            f"no answer from the Envoy sidecar at {attempt.address} within {attempt.timeout:.3f} s "
            f"(Envoy was asked to give up after {_envoy_timeout_text(attempt)}); is the sidecar stuck?"
        )
    return MeshTransportError, f"the connection to {attempt.route.value} at {attempt.address} broke{detail}"


def client_enforced(
    outcome: Broken, attempt: Attempt, attempts: int, elapsed: float, *, policy: CallPolicy, deadline_left: float | None
) -> Ending:
    """The end of a call whose last attempt broke with no retry left (the client applies the
    policy: the HAProxy route, Thrift). ``elapsed``: seconds since the call started (read for
    timeouts only); ``deadline_left``: what the caller's deadline left when the call started."""
    where = f"{attempt.route.value} at {attempt.address}"
    detail = f" ({outcome.detail})" if outcome.detail else ""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if outcome.kind is Failure.CONNECT:
        return MeshConnectError, f"cannot connect to {where}{detail} after {tries}"
    if outcome.kind is Failure.TIMEOUT:
        what = f"the response via {where} was not complete{detail}"
        if not outcome.response_started:
            # (the library's own words when it gave up before the time did: a mock's, say)
            what = f"no answer via {where}{detail if elapsed < attempt.timeout else ''}"
        return MeshTimeoutError, (
            f"{what} after {elapsed:.3f} s and {tries} (timeout {timeout_text(policy)})"
            f"{deadline_text(policy, deadline_left)}"
        )
    return MeshTransportError, f"the connection to {where} broke{detail} after {tries}"


def timeout_text(policy: CallPolicy) -> str:
    """The policy's timeouts as messages name them: ``"2 s, per try 0.5 s"``."""
    per_try = policy.per_try_timeout
    text = f"{policy.timeout:g} s"
    return text + (f", per try {per_try:g} s" if per_try is not None else "")


def deadline_text(policy: CallPolicy, deadline_left: float | None) -> str:
    """``"; shortened to … by the caller's deadline"`` when the deadline cut the policy's timeout."""
    if deadline_left is not None and deadline_left < policy.timeout:
        return f"; shortened to {max(deadline_left, 0.0):.3f} s by the caller's deadline"
    return ""


def _envoy_timeout_text(attempt: Attempt) -> str:
    for name, value in attempt.set_headers:
        if name.endswith("-upstream-rq-timeout-ms"):
            return f"{value} ms"
    return "?"  # pragma: no cover - an Envoy attempt always carries the timeout
