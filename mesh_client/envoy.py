"""What mesh_client says to Envoy and how it reads Envoy's answers. Pure functions, no I/O.

- :func:`policy_headers` compiles a call's policy into ``x-envoy-*`` request headers.
- :func:`classify_reply` tells an Envoy-generated reply (504 ``upstream request timeout``, 503
  ``no healthy upstream``...) from the application's own, for ``call_info(r).envoy_error``.

Facts behind the rules (see ``docs/routes.md``): Envoy reads these headers only from requests it
treats as internal; ``x-envoy-upstream-rq-timeout-ms: 0`` means *no* timeout, so 1 ms is the floor;
``x-envoy-max-retries`` without a retry-on condition does nothing, and ``0`` is the only way to
switch off a retry policy configured on the route; retry-on tokens are comma-separated, no spaces.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Mapping
from typing import Final

__all__ = [
    "CONNECT_FAILURE_RETRY_ON",
    "DEFAULT_PREFIX",
    "ENVOY_ERROR_KINDS",
    "RESET_RETRY_ON",
    "HeaderNames",
    "attempt_count",
    "classify_reply",
    "control_header_names",
    "header_names",
    "may_be_local_reply",
    "policy_header_template",
    "policy_headers",
    "read_answer",
    "retry_on_covers_status",
    "timeout_ms",
    "upstream_service_time",
]

#: Envoy's ``header_prefix`` unless its bootstrap sets another (``mesh.header_prefix`` follows it).
DEFAULT_PREFIX: Final = "x-envoy"


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderNames:
    """Envoy's header names under one ``header_prefix``, made by :func:`header_names`: each is the
    prefix, a dash and the field's name with dashes (``x-envoy-upstream-rq-timeout-ms``)."""

    upstream_rq_timeout_ms: str
    upstream_rq_per_try_timeout_ms: str
    upstream_rq_timeout_alt_response: str
    retry_on: str
    max_retries: str
    retriable_status_codes: str
    #: added by Envoy to requests it forwards (the time the service has); the client never sends it
    expected_rq_timeout_ms: str
    upstream_service_time: str
    attempt_count: str
    overloaded: str
    drop_overload: str
    ratelimited: str


@functools.lru_cache(maxsize=64)
def header_names(prefix: str) -> HeaderNames:
    """Envoy's header names under ``prefix`` (``x-envoy``, or the bootstrap's ``header_prefix``)."""
    return HeaderNames(*(f"{prefix}-{field.name.replace('_', '-')}" for field in dataclasses.fields(HeaderNames)))


#: The values ``call_info(r).envoy_error`` can take.
ENVOY_ERROR_KINDS: Final = frozenset(
    {
        "timeout",  # 504 upstream request timeout (global or per-try)
        "no_healthy_upstream",  # 503 no healthy upstream
        "connect_failure",  # 503 upstream connect error ... (connection failure / timeout): not delivered
        "upstream_reset",  # 503 upstream connect error ... (reset / termination): may have been processed
        "overloaded",  # x-envoy-overloaded, maintenance mode, drop overload, envoy overloaded
        "rate_limited",  # x-envoy-ratelimited
        "no_route",  # 404 with an empty body: no virtual host / route for the Host
        "no_cluster",  # 503 with an empty body: the route's cluster does not exist
        "buffer_limit",  # 507: request body too large to buffer for a retry
        "invalid_header",  # 400 invalid header (strict_check_headers)
        "stream_duration",  # upstream max stream duration reached
    }
)

#: retry-on tokens under which Envoy retries a connection that could not be made (nothing was sent)
CONNECT_FAILURE_RETRY_ON: Final = frozenset(
    {"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure"}
)
#: retry-on tokens under which Envoy retries a reset, a dropped connection or a per-try timeout
RESET_RETRY_ON: Final = frozenset({"5xx", "gateway-error", "reset"})


def retry_on_covers_status(
    status: int,
    headers: Mapping[str, str],
    tokens: Collection[str],
    retriable_status_codes: Collection[int],
    prefix: str,
) -> bool:
    """Whether Envoy's retry-on ``tokens`` retry a response with ``status`` and ``headers``
    (``x-envoy-retriable-status-codes`` = ``retriable_status_codes``). The one definition both the
    client's own retries on the HAProxy route and ``fake_mesh``'s Envoy use."""
    return (
        ("5xx" in tokens and status >= 500)
        or ("gateway-error" in tokens and status in (502, 503, 504))
        or ("retriable-4xx" in tokens and status == 409)
        or ("retriable-status-codes" in tokens and status in retriable_status_codes)
        or ("envoy-ratelimited" in tokens and header_names(prefix).ratelimited in headers)
    )


_LOCAL_REPLY_STATUSES: Final = frozenset({400, 404, 408, 502, 503, 504, 507})
_MAX_LOCAL_REPLY_BODY: Final = 1024
_CONNECT_FAILURE_REASONS: Final = ("connection failure", "connection timeout", "connect_failure")


def timeout_ms(seconds: float) -> int:
    """Seconds as Envoy milliseconds: rounded down, never below 1 (0 would mean "no timeout")."""
    return max(1, int(seconds * 1000 + 1e-6))  # + 1e-6: 2.01 s is 2010 ms, not 2009


def policy_headers(
    prefix: str,
    *,
    timeout: float,
    per_try_timeout: float | None,
    retries: int,
    retry_on: tuple[str, ...],
    retriable_status_codes: tuple[int, ...],
) -> list[tuple[str, str]]:
    """The ``x-envoy-*`` headers that make Envoy enforce one call's policy.

    ``timeout`` is the call's effective total (already shrunk to the caller's deadline) and
    ``retry_on`` the tokens that apply to this call (already filtered for idempotency). When no
    retry applies, ``max-retries: 0`` is sent so a retry policy on the route cannot retry either.
    """
    per_try = per_try_timeout if per_try_timeout is not None and per_try_timeout < timeout else None
    name, rest = policy_header_template(prefix, per_try, retries, tuple(retry_on), tuple(retriable_status_codes))
    return [(name, str(timeout_ms(timeout))), *rest]


@functools.lru_cache(maxsize=512)
def policy_header_template(
    prefix: str, per_try_timeout: float | None, retries: int, retry_on: tuple[str, ...], codes: tuple[int, ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """:func:`policy_headers` in two parts: the name of the timeout header (whose value is the
    only per-call part) and the headers that follow it, made once per policy and cached.
    ``per_try_timeout`` is None when it is not below the call's timeout (no per-try header)."""
    names = header_names(prefix)
    headers = []
    if per_try_timeout is not None:
        headers.append((names.upstream_rq_per_try_timeout_ms, str(timeout_ms(per_try_timeout))))
    if retries > 0 and retry_on:
        headers.append((names.retry_on, ",".join(retry_on)))
        headers.append((names.max_retries, str(retries)))
        if "retriable-status-codes" in retry_on and codes:
            headers.append((names.retriable_status_codes, ",".join(str(c) for c in codes)))
    else:
        headers.append((names.max_retries, "0"))
    return names.upstream_rq_timeout_ms, tuple(headers)


def control_header_names(prefix: str, names: list[str] | tuple[str, ...] | set[str]) -> list[str]:
    """The request header names (as given) that belong to Envoy's prefix and so are never passed on."""
    start = prefix + "-"
    return [name for name in names if name.lower().startswith(start)]


def upstream_service_time(headers: Mapping[str, str], prefix: str) -> float | None:
    """Seconds Envoy measured upstream (``x-envoy-upstream-service-time``), or None."""
    value = headers.get(header_names(prefix).upstream_service_time)
    return None if value is None else _seconds(value)


def _seconds(value: str) -> float | None:
    try:
        ms = int(value.strip())
        return ms / 1000.0 if ms >= 0 else None
    except (ValueError, OverflowError):  # OverflowError: more digits than a float holds
        return None


def attempt_count(headers: Mapping[str, str], prefix: str) -> int | None:
    """Upstream attempts Envoy reports (``x-envoy-attempt-count``, if the route adds it)."""
    value = headers.get(header_names(prefix).attempt_count)
    return None if value is None else _count(value)


def _count(value: str) -> int | None:
    try:
        count = int(value.strip())
    except ValueError:
        return None
    return count if count >= 1 else None


def read_answer(
    status: int, headers: Mapping[str, str], body: bytes | None, prefix: str
) -> tuple[int | None, float | None, str | None]:
    """:func:`attempt_count`, :func:`upstream_service_time` and :func:`classify_reply` of one
    answer, in one pass (the core asks all three of every answer on the Envoy route)."""
    names = header_names(prefix)
    count = headers.get(names.attempt_count)
    service_time = headers.get(names.upstream_service_time)
    if (
        status >= 400
        or headers.get(names.overloaded) is not None
        or headers.get(names.drop_overload) is not None
        or headers.get(names.ratelimited) is not None
    ):
        error = classify_reply(status, headers, body, prefix)
    else:  # (what classify_reply answers below 400 without those headers)
        error = None
    return (
        None if count is None else _count(count),
        None if service_time is None else _seconds(service_time),
        error,
    )


def may_be_local_reply(status: int, headers: Mapping[str, str], prefix: str) -> bool:
    """Whether a response could be an Envoy local reply, so its (small) body is worth reading.

    Local replies never carry ``x-envoy-upstream-service-time`` and have tiny bodies.
    """
    if status not in _LOCAL_REPLY_STATUSES or header_names(prefix).upstream_service_time in headers:
        return False
    length = headers.get("content-length")
    if length is None:
        return False
    try:
        return int(length) <= _MAX_LOCAL_REPLY_BODY
    except ValueError:
        return False


def classify_reply(status: int, headers: Mapping[str, str], body: bytes | None, prefix: str) -> str | None:
    """The kind of Envoy-generated failure a response is, or None for the application's own.

    ``body`` is None when it was not read: wrappers read it only for possible *local* replies
    (:func:`may_be_local_reply`), so a remote Envoy's reply is recognised only by its headers
    (overloaded, rate limited).
    """
    names = header_names(prefix)
    if headers.get(names.overloaded) is not None or headers.get(names.drop_overload) is not None:
        return "overloaded"
    if headers.get(names.ratelimited) is not None:
        return "rate_limited"
    if status < 400 or body is None:
        return None
    text = body[:_MAX_LOCAL_REPLY_BODY].decode("latin-1").strip()
    local = names.upstream_service_time not in headers
    if text == "upstream request timeout" and status in (504, 204):
        return "timeout"
    if text == "no healthy upstream":
        return "no_healthy_upstream"
    if text.startswith("upstream connect error or disconnect/reset before headers"):
        reason = text.rsplit("reset reason:", 1)[-1]
        if "overflow" in reason:  # a circuit breaker refused it: never sent
            return "overloaded"
        return "connect_failure" if any(r in reason for r in _CONNECT_FAILURE_REASONS) else "upstream_reset"
    if text in ("maintenance mode", "drop overload", "envoy overloaded"):
        return "overloaded"
    if text == "exceeded request buffer limit while retrying upstream":
        return "buffer_limit"
    if text.startswith("invalid header '"):
        return "invalid_header"
    if text == "upstream max stream duration reached":
        return "stream_duration"
    if local and not text:
        if status == 404:
            return "no_route"
        if status == 503:
            return "no_cluster"
    return None
