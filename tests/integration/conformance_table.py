"""The conformance scenarios and what each must give, as data.

Every :class:`Scenario` states its expected outcome per route (:class:`Expect`): the status or
the error class, ``call_info`` (route, attempts, ``envoy_error``, ``failed_over``), how many
requests the upstream received, and a two-sided window for the elapsed time worked out from the
scenario's own timeouts and Envoy's back-off. ``test_conformance.py`` runs each one against real
Envoy and HAProxy and against ``fake_mesh``, with every client kind, and checks both worlds
against these expectations (and against each other).

The figures below are Envoy's and HAProxy's documented behaviour, written here independently of
mesh_client's code: the back-off intervals (Envoy 1.40's router: 25 ms doubling per retry, capped
at 250 ms), the rendered HAProxy's ``timeout connect 250ms`` with ``retries 1``, the registry's
1 s service timeout.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh_client.testing import Reply, UpstreamRequest, hang, refuse, reply, reset

#: Envoy's back-off interval before retry n (1-based), in seconds (the wait is drawn below it)
ENVOY_BACKOFF = (0.025, 0.050, 0.100, 0.200, 0.250)
#: the registry's timeout for every service of the conformance registry
SERVICE_TIMEOUT = 1.0
#: HAProxy's pause for a refused server connection: its ``timeout connect`` (250 ms) before its
#: one retry, then its 503 page
HAPROXY_REFUSED = 0.25
GATEWAY = ("gateway-error",)


def backoff(retries: int) -> float:
    """The longest total back-off Envoy can wait over ``retries`` retries."""
    return sum(ENVOY_BACKOFF[min(n, len(ENVOY_BACKOFF) - 1)] for n in range(retries))


@dataclass(frozen=True)
class Expect:
    """What one call must give on one route."""

    #: the status code, or the class name of the MeshError raised
    outcome: str
    attempts: int | None
    #: requests the upstream received
    upstream: int
    #: seconds, [low, high] (a real run may take up to the suite's scheduling slack longer)
    elapsed: tuple[float, float] = (0.0, 0.0)
    envoy_error: str | None = None
    failed_over: bool = False
    #: the route the call ended on (None: the one it was sent on)
    route: str | None = None


def both(expect: Expect) -> dict[str, Expect]:
    return {"envoy": expect, "haproxy": expect}


@dataclass(frozen=True)
class Scenario:
    name: str
    #: the upstream's replies in turn (the last repeats), or a factory of a handler callable
    replies: tuple[Reply, ...] | Callable[[], Callable[[UpstreamRequest], Reply]]
    expect: dict[str, Expect]
    options: dict[str, Any] = field(default_factory=dict)
    service: str = "svc"
    method: str = "GET"
    #: seconds of the caller's deadline around the call (None: none)
    deadline: float | None = None
    #: the Envoy sidecar refuses connections
    envoy_down: bool = False
    failover: bool = False

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(self.expect)

    def budget(self) -> float:
        """The call's total budget: its timeout, shortened by the deadline."""
        timeout = float(self.options.get("timeout", SERVICE_TIMEOUT))
        return min(timeout, self.deadline) if self.deadline is not None else timeout

    def per_try(self) -> float | None:
        per_try = self.options.get("per_try_timeout")
        return per_try if per_try is not None and per_try < self.budget() else None


SCENARIOS = [
    Scenario("plain 200", (reply(200, json={"ok": True}),), both(Expect("200", 1, 1))),
    Scenario(
        "slow upstream past the timeout",
        (reply(200, delay=0.6),),
        {
            "envoy": Expect("504", 1, 1, (0.3, 0.3), envoy_error="timeout"),
            "haproxy": Expect("MeshTimeoutError", 1, 1, (0.3, 0.3)),
        },
        {"timeout": 0.3, "retries": 0},
    ),
    Scenario(
        "hung upstream, retries do not outlive the timeout",
        (hang(),),
        {
            "envoy": Expect("504", 1, 1, (0.4, 0.4), envoy_error="timeout"),
            "haproxy": Expect("MeshTimeoutError", 1, 1, (0.4, 0.4)),
        },
        {"timeout": 0.4, "retries": 2},
    ),
    Scenario(
        "a deadline shorter than the timeout",
        (hang(),),
        {
            "envoy": Expect("504", 1, 1, (0.3, 0.3), envoy_error="timeout"),
            "haproxy": Expect("MeshTimeoutError", 1, 1, (0.3, 0.3)),
        },
        {"retries": 2, "retry_on": GATEWAY},
        deadline=0.3,
    ),
    Scenario(
        "per-try timeout, then a fast retry",
        (reply(200, delay=0.6), reply(200)),
        both(Expect("200", 2, 2, (0.2, 0.2 + backoff(1)))),
        {"timeout": 1.0, "per_try_timeout": 0.2, "retries": 2, "retry_on": ("reset",)},
    ),
    Scenario(
        "per-try timeout not covered by retry-on",
        (reply(200, delay=0.6),),
        {
            "envoy": Expect("504", 1, 1, (0.2, 0.2), envoy_error="timeout"),
            "haproxy": Expect("MeshTimeoutError", 1, 1, (0.2, 0.2)),
        },
        {"timeout": 1.0, "per_try_timeout": 0.2, "retries": 2, "retry_on": ("connect-failure",)},
    ),
    Scenario(
        "503, 503, 200 with gateway-error",
        (reply(503), reply(503), reply(200)),
        both(Expect("200", 3, 3, (0.0, backoff(2)))),
        {"retries": 2, "retry_on": GATEWAY},
    ),
    Scenario(
        "503 until retries run out",
        (reply(503),),
        both(Expect("503", 3, 3, (0.0, backoff(2)))),
        {"retries": 2, "retry_on": GATEWAY},
    ),
    Scenario(
        "500 is not a gateway error",
        (reply(500), reply(200)),
        both(Expect("500", 1, 1)),
        {"retries": 2, "retry_on": GATEWAY},
    ),
    Scenario(
        "500 with 5xx",
        (reply(500), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 2, "retry_on": ("5xx",)},
    ),
    Scenario(
        "503 with connect-failure only",
        (reply(503), reply(200)),
        both(Expect("503", 1, 1)),
        {"retries": 2, "retry_on": ("connect-failure",)},
    ),
    Scenario(
        "409 with retriable-4xx",
        (reply(409), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 1, "retry_on": ("retriable-4xx",)},
    ),
    Scenario(
        "418 with retriable-status-codes",
        (reply(418), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 1, "retry_on": ("retriable-status-codes",), "retriable_status_codes": (418,)},
    ),
    Scenario(
        # Envoy retries an upstream's 503 whatever its x-envoy-overloaded header says; the client
        # never retries shed load itself
        "an upstream's overloaded 503: Envoy retries it, the client does not",
        (reply(503, headers={"x-envoy-overloaded": "true"}), reply(200)),
        {"envoy": Expect("200", 2, 2, (0.0, backoff(1))), "haproxy": Expect("503", 1, 1)},
        {"retries": 2, "retry_on": GATEWAY},
    ),
    Scenario(
        "429 with Retry-After: Envoy retries at once, the client waits",
        (reply(429, headers={"retry-after": "1"}), reply(200)),
        {
            "envoy": Expect("200", 2, 2, (0.0, backoff(1))),
            "haproxy": Expect("200", 2, 2, (1.0, 1.0)),
        },
        {"timeout": 2.0, "retries": 1, "retry_on": ("retriable-status-codes",), "retriable_status_codes": (429,)},
    ),
    Scenario(
        "429 with a Retry-After longer than the time left",
        (reply(429, headers={"retry-after": "5"}), reply(200)),
        {"envoy": Expect("200", 2, 2, (0.0, backoff(1))), "haproxy": Expect("429", 1, 1)},
        {"retries": 1, "retry_on": ("retriable-status-codes",), "retriable_status_codes": (429,)},
    ),
    Scenario(
        "429 marked x-envoy-ratelimited with envoy-ratelimited",
        (reply(429, headers={"x-envoy-ratelimited": "true"}), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 1, "retry_on": ("envoy-ratelimited",)},
    ),
    Scenario(
        "POST 503 is not retried",
        (reply(503), reply(200)),
        both(Expect("503", 1, 1)),
        {"retries": 2, "retry_on": GATEWAY},
        method="POST",
    ),
    Scenario(
        "POST declared idempotent is retried",
        (reply(503), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 2, "retry_on": GATEWAY, "idempotent": True},
        method="POST",
    ),
    Scenario(
        "reset, retried with reset",
        (reset(), reply(200)),
        both(Expect("200", 2, 2, (0.0, backoff(1)))),
        {"retries": 2, "retry_on": ("reset",)},
    ),
    Scenario(
        "reset, connect-failure only",
        (reset(), reply(200)),
        {"envoy": Expect("503", 1, 1, envoy_error="upstream_reset"), "haproxy": Expect("502", 1, 1)},
        {"retries": 2, "retry_on": ("connect-failure",)},
    ),
    Scenario(
        "reset after the request, reset-before-request only",
        (reset(), reply(200)),
        {"envoy": Expect("503", 1, 1, envoy_error="upstream_reset"), "haproxy": Expect("502", 1, 1)},
        {"retries": 2, "retry_on": ("reset-before-request",)},
    ),
    Scenario(
        "reset, refused-stream only (an HTTP/1.1 upstream never refuses a stream)",
        (reset(), reply(200)),
        {"envoy": Expect("503", 1, 1, envoy_error="upstream_reset"), "haproxy": Expect("502", 1, 1)},
        {"retries": 2, "retry_on": ("refused-stream",)},
    ),
    Scenario(
        "connection refused",
        (refuse(),),
        {
            "envoy": Expect("503", 2, 0, (0.0, backoff(1)), envoy_error="connect_failure"),
            "haproxy": Expect("503", 2, 0, (2 * HAPROXY_REFUSED, 2 * HAPROXY_REFUSED + backoff(1))),
        },
        {"retries": 1, "retry_on": ("connect-failure",)},
        service="refused",
    ),
    Scenario(
        "connection refused, retried under reset-before-request",
        (refuse(),),
        {
            "envoy": Expect("503", 3, 0, (0.0, backoff(2)), envoy_error="connect_failure"),
            "haproxy": Expect("503", 3, 0, (3 * HAPROXY_REFUSED, 3 * HAPROXY_REFUSED + backoff(2))),
        },
        {"retries": 2, "retry_on": ("reset-before-request",)},
        service="refused",
    ),
    Scenario(
        "connection refused, refused-stream only",
        (refuse(),),
        {
            "envoy": Expect("503", 1, 0, envoy_error="connect_failure"),
            "haproxy": Expect("503", 1, 0, (HAPROXY_REFUSED, HAPROXY_REFUSED)),
        },
        {"retries": 2, "retry_on": ("refused-stream",)},
        service="refused",
    ),
    Scenario(
        "no handler: nothing to send to",
        (),
        {
            "envoy": Expect("503", 1, 0, envoy_error="no_healthy_upstream"),
            "haproxy": Expect("503", 2, 0, (0.0, backoff(1))),
        },
        {"retries": 1, "retry_on": GATEWAY},
        service="empty",
    ),
    Scenario(
        "unknown host at the sidecar",
        (),
        {"envoy": Expect("404", 1, 0, envoy_error="no_route")},
        {"retries": 1},
        service="ghost",
    ),
    Scenario(
        "Envoy down, failover on: via HAProxy",
        (reply(200),),
        {"envoy": Expect("200", 1, 1, failed_over=True, route="haproxy")},
        {"retries": 1, "retry_on": GATEWAY},
        envoy_down=True,
        failover=True,
    ),
    Scenario(
        "Envoy down, failover on: a POST too (nothing was sent)",
        (reply(503), reply(201)),
        {"envoy": Expect("503", 1, 1, failed_over=True, route="haproxy")},
        {"retries": 1, "retry_on": GATEWAY},
        method="POST",
        envoy_down=True,
        failover=True,
    ),
    Scenario(
        "Envoy down, failover off",
        (reply(200),),
        {"envoy": Expect("MeshConnectError", 1, 0)},
        {"retries": 1, "retry_on": GATEWAY},
        envoy_down=True,
    ),
]


class FirstTryFails:
    """A handler: the first request of each call (by its x-request-id) gets ``first``, the later
    ones ``then``, whichever proxy retries and whatever order concurrent calls arrive in."""

    def __init__(self, first: Reply, then: Reply) -> None:
        self.first, self.then = first, then
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: UpstreamRequest) -> Reply:
        with self._lock:
            key = request.headers.get("x-request-id", "")
            self._seen[key] += 1
            return self.first if self._seen[key] == 1 else self.then


@dataclass(frozen=True)
class Burst:
    """Many calls of one scenario, in a row or at once, judged together."""

    name: str
    replies: tuple[Reply, ...] | Callable[[], Callable[[UpstreamRequest], Reply]]
    calls: int
    concurrent: bool
    options: dict[str, Any]
    #: per route: Counter of (outcome, attempts) over the calls
    outcomes: dict[str, Counter[tuple[str, int]]]
    #: per route: requests the upstream received for all the calls
    upstream: dict[str, int]
    #: per outcome: the window of every call's elapsed time
    elapsed: dict[str, tuple[float, float]]
    #: per route: calls whose call_info says the retry budget was exhausted
    exhausted: dict[str, int] = field(default_factory=dict)
    service: str = "svc"


def _budget_run(calls: int, retries: int, percent: float, floor: float) -> tuple[Counter[tuple[str, int]], int, int]:
    """Outcomes, upstream requests and budget-refused calls for ``calls`` calls answered 503
    every time, under a Finagle-style budget: each call deposits ``percent`` % of a retry, a retry
    withdraws one, and ``floor`` retries are always allowed (all within one ttl). From the
    budget's documented definition, not the client's code."""
    balance, requests, refused = floor, 0, 0
    outcomes: Counter[tuple[str, int]] = Counter()
    for _ in range(calls):
        balance += percent / 100
        made = min(retries, int(balance))
        balance -= made
        requests += 1 + made
        refused += made < retries
        outcomes["503", 1 + made] += 1
    return outcomes, requests, refused


#: the ``budget`` service's retry budget: 25 % of calls, a floor of 1 retry per ttl (0.1 / s x 10 s)
BUDGET = {"percent": 25, "min_per_second": 0.1, "ttl": 10}
BUDGET_CALLS = 20
_BUDGET_OUTCOMES, _BUDGET_REQUESTS, _BUDGET_REFUSED = _budget_run(BUDGET_CALLS, 2, 25, 0.1 * 10)
#: Envoy's default circuit breaker lets 3 retries be in flight per cluster
BREAKER_CALLS = 8
BREAKER_RETRIED = 3

BURSTS = [
    Burst(
        "budget exhausted under a sustained failure",
        (reply(503),),
        BUDGET_CALLS,
        False,
        {"retries": 2, "retry_on": GATEWAY},
        outcomes={"envoy": _BUDGET_OUTCOMES, "haproxy": _BUDGET_OUTCOMES},
        upstream={"envoy": _BUDGET_REQUESTS, "haproxy": _BUDGET_REQUESTS},
        elapsed={"503": (0.0, backoff(1))},
        exhausted={"envoy": _BUDGET_REFUSED, "haproxy": _BUDGET_REFUSED},
        service="budget",
    ),
    Burst(
        "Envoy's default circuit breaker: 3 retries in flight",
        lambda: FirstTryFails(reply(503), reply(200, delay=0.4)),
        BREAKER_CALLS,
        True,
        {"retries": 1, "retry_on": GATEWAY},
        outcomes={
            "envoy": Counter({("200", 2): BREAKER_RETRIED, ("503", 1): BREAKER_CALLS - BREAKER_RETRIED}),
            # the client retries on its own on the HAProxy route: no breaker there
            "haproxy": Counter({("200", 2): BREAKER_CALLS}),
        },
        upstream={"envoy": BREAKER_CALLS + BREAKER_RETRIED, "haproxy": 2 * BREAKER_CALLS},
        # the retried calls waited for the slow second answer; the others got the 503 at once
        elapsed={"200": (0.4, 0.4 + backoff(1)), "503": (0.0, 0.0)},
    ),
]
