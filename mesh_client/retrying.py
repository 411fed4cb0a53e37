"""The retry rules: which answers and failures may be retried, how long to wait before a retry,
and whether Envoy may have retried already. Pure functions of a call's retry-on tokens and an
attempt's outcome.

On the HAProxy route (and for Thrift on both routes) the client applies them itself; on the Envoy
route Envoy applies the same rules, and the core uses :func:`envoy_may_have_retried` only to charge
Envoy's retries to the retry budget.
"""

from __future__ import annotations

import email.utils
from typing import Any, Final

from . import clock as _clock
from . import envoy, haproxy
from .steps import Attempt, Broken, Failure, Responded

__all__ = [
    "BACKOFF_BASE_MS",
    "BACKOFF_CAP_MS",
    "MIN_ATTEMPT",
    "backoff_upper_bound",
    "envoy_may_have_retried",
    "failure_retryable",
    "parse_retry_after",
    "response_retryable",
]

#: Envoy's retry back-off (its router's ``JitteredExponentialBackOffStrategy`` with the default
#: ``retry_back_off``): the interval starts at the base and doubles each retry up to the cap (10 x the
#: base); each wait is drawn uniformly below the interval ("full jitter").
BACKOFF_BASE_MS: Final = 25
BACKOFF_CAP_MS: Final = 10 * BACKOFF_BASE_MS
#: Below this many seconds left, another attempt is not worth starting.
MIN_ATTEMPT: Final = 0.001

#: Envoy's own replies to requests it never sent upstream: no retry can have happened before them
_NOT_RETRIED_BY_ENVOY: Final = frozenset(
    {"no_route", "no_cluster", "no_healthy_upstream", "overloaded", "invalid_header"}
)


def backoff_upper_bound(retry_number: int) -> float:
    """Envoy's back-off ceiling before retry ``retry_number`` (1-based), in seconds:
    25 ms x 2^(n-1), at most 250 ms, that is 25, 50, 100, 200, then 250 ms (measured through
    Envoy 1.40: ``tests/integration/test_conformance.py::test_backoff_timing``)."""
    doublings = min(max(retry_number, 1) - 1, 16)  # (past the cap long before 16: no huge shift)
    return min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << doublings) / 1000


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


def envoy_may_have_retried(
    outcome: Responded[Any],
    envoy_error: str | None,
    tokens: tuple[str, ...],
    retriable_status_codes: tuple[int, ...],
    prefix: str,
) -> bool:
    """Whether Envoy could have retried before giving up with this answer: the call's retry-on
    tokens cover it, so Envoy stopped only when its retries (or the time) ran out. A success,
    an application's 4xx and Envoy's replies to requests it never sent upstream (no route, no
    cluster, no healthy upstream, overload, invalid header) say no."""
    if envoy_error is not None and f"{prefix}-upstream-service-time" not in outcome.headers:
        if envoy_error in _NOT_RETRIED_BY_ENVOY:
            return False
        if envoy_error == "connect_failure":
            return not envoy.CONNECT_FAILURE_RETRY_ON.isdisjoint(tokens)
        if envoy_error in ("upstream_reset", "timeout") and not envoy.RESET_RETRY_ON.isdisjoint(tokens):
            return True
    return envoy.retry_on_covers_status(outcome.status, outcome.headers, tokens, retriable_status_codes, prefix)


def response_retryable(
    outcome: Responded[Any],
    tokens: tuple[str, ...],
    retriable_status_codes: tuple[int, ...],
    prefix: str,
    *,
    replayable: bool,
    pause_fits: bool,
) -> bool:
    """Whether an answer may be retried (HAProxy route, Thrift): the proxy reached no instance or
    the connection was reset and the tokens say so, or the status is one the tokens retry.
    ``pause_fits``: the pause a ``Retry-After`` asks for fits in the time the call has left."""
    if not replayable:  # the body went to HAProxy already and cannot be sent again
        return False
    status = outcome.status
    proxy_said = outcome.proxy_error or haproxy.classify_reply(status, outcome.body)
    if proxy_said in ("connect_failure", "no_healthy_upstream"):  # the proxy reached no instance
        return bool(set(tokens) & envoy.CONNECT_FAILURE_RETRY_ON)
    if proxy_said == "upstream_reset" and set(tokens) & envoy.RESET_RETRY_ON:
        return True
    if proxy_said in ("no_route", "no_cluster", "overloaded"):  # retrying cannot help, or hurts
        return False
    if f"{prefix}-overloaded" in outcome.headers:  # shed load: retrying would add to it
        return False
    if (status == 429 or "retry-after" in outcome.headers) and not pause_fits:
        return False  # the server asked for a pause longer than the call has left
    return envoy.retry_on_covers_status(status, outcome.headers, tokens, retriable_status_codes, prefix)


def failure_retryable(outcome: Broken, attempt: Attempt, tokens: tuple[str, ...], replayable: bool) -> bool:
    """Whether an attempt that got no answer may be retried: a refused connection when the tokens
    retry connect failures; a reset, or a per-try timeout, when they retry resets and the request
    can be sent again."""
    tokens_set = set(tokens)
    if outcome.kind is Failure.CONNECT:
        return bool(tokens_set & envoy.CONNECT_FAILURE_RETRY_ON)
    if not replayable:
        return False
    if outcome.kind is Failure.TIMEOUT:
        # only a per-try timeout can be retried: the total one ends the call
        return attempt.per_try_limited and bool(tokens_set & envoy.RESET_RETRY_ON)
    return bool(tokens_set & envoy.RESET_RETRY_ON)
