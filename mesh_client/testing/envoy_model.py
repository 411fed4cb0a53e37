"""The fake Envoy's model of Envoy's router: retry conditions, back-off and the retry circuit
breaker, written from Envoy's documentation and source (router filter docs, ``retry_state_impl.cc``,
``backoff_strategy.cc``, the cluster circuit-breaker defaults) and kept apart from the client's own
rules in :mod:`mesh_client.envoy` and :mod:`mesh_client.core`.

The two are written separately on purpose: the client *predicts* what Envoy does (to charge the
retry budget, and to retry alike on the HAProxy route) while ``fake_mesh`` *plays* Envoy. Had the
fake used the client's functions, its tests would check the client against itself. A unit test
compares both over every token, status and failure (``tests/unit/test_envoy_model.py``); the
conformance suite (``tests/integration/test_conformance.py``) checks this model against a real
Envoy.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DEFAULT_MAX_RETRIES_IN_FLIGHT",
    "BackOff",
    "RetryCircuit",
    "Upset",
    "retried",
]

#: What went wrong with one upstream try, below HTTP:
#: ``connect``: no connection was made (nothing was sent upstream);
#: ``reset``: the connection closed after the request went upstream, before a response;
#: ``per_try_timeout``: the per-try timer fired (Envoy resets the stream itself);
#: ``refused_stream``: an HTTP/2 upstream refused the stream (never on an HTTP/1.1 cluster).
Upset = Literal["connect", "reset", "per_try_timeout", "refused_stream"]

_ANY_RESET: Final = frozenset({"connect", "reset", "per_try_timeout", "refused_stream"})

#: For each ``x-envoy-retry-on`` token, the failures below HTTP it retries. From the router docs
#: ("5xx ... includes connect-failure and refused-stream"; "gateway-error ... includes ...";
#: "reset: ... disconnect/reset/read timeout"; "reset-before-request: ... reset before any part of
#: the request was sent", which a connection that was never made is) and ``wouldRetryFromReset``.
_UPSETS_RETRIED: Final[Mapping[str, frozenset[str]]] = {
    "5xx": _ANY_RESET,
    "gateway-error": _ANY_RESET,
    "reset": _ANY_RESET,
    "connect-failure": frozenset({"connect"}),
    "reset-before-request": frozenset({"connect"}),
    "refused-stream": frozenset({"refused_stream"}),
}

#: Envoy's cluster circuit breaker default: "the maximum number of parallel retries ... default 3"
#: (``circuit_breaker.proto``); the rendered sidecar sets no ``circuit_breakers``.
DEFAULT_MAX_RETRIES_IN_FLIGHT: Final = 3


def retried(
    token_list: Collection[str],
    *,
    upset: Upset | None = None,
    status: int = 0,
    headers: Mapping[str, str] | None = None,
    codes: Collection[int] = (),
    prefix: str = "x-envoy",
) -> bool:
    """Whether Envoy retries one try's outcome under the ``x-envoy-retry-on`` tokens: a failure
    below HTTP (``upset``), or a response (``status`` and its ``headers``; ``codes`` is
    ``x-envoy-retriable-status-codes``).

    An upstream's ``x-envoy-overloaded`` header does not stop Envoy retrying (measured through
    Envoy 1.40; only its own overflow resets are never retried, and the fake has none)."""
    if upset is not None:
        return any(upset in _UPSETS_RETRIED.get(token, ()) for token in token_list)
    found = headers or {}
    for token in token_list:
        if token == "5xx" and 500 <= status <= 599:
            return True
        if token == "gateway-error" and status in (502, 503, 504):
            return True
        if token == "retriable-4xx" and status == 409:
            return True
        if token == "retriable-status-codes" and status in codes:
            return True
        if token == "envoy-ratelimited" and any(name.lower() == f"{prefix}-ratelimited" for name in found):
            return True
    return False


class BackOff:
    """Envoy's ``JitteredExponentialBackOffStrategy`` with the default ``retry_back_off``: the
    interval starts at 25 ms and doubles per retry up to 250 ms (10 x the base); each wait is a
    whole number of milliseconds drawn uniformly from [0, interval)."""

    BASE_MS: Final = 25
    MAX_MS: Final = 250

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._interval = self.BASE_MS

    def next_wait(self) -> float:
        """Seconds to wait before the next retry."""
        interval = self._interval
        self._interval = interval * 2 if interval * 2 <= self.MAX_MS else self.MAX_MS
        return self._rng.randrange(interval) / 1000


@dataclass
class RetryCircuit:
    """One cluster's retry circuit breaker: at most ``limit`` retries in flight at a time.

    Envoy takes a retry from the breaker when it schedules it (before the back-off) and gives it
    back when the retried try's outcome comes in; a retry that finds the breaker full is not made
    (``upstream_rq_retry_overflow``) and the caller gets the outcome that asked for it. On the
    fake's virtual clock concurrent calls overlap in time without running at once, so the breaker
    keeps each retry's interval of virtual time and counts those that cover the moment asked
    about."""

    limit: int = DEFAULT_MAX_RETRIES_IN_FLIGHT
    _held: list[list[float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, at: float) -> list[float] | None:
        """A retry scheduled at virtual time ``at``: its slot (pass it to :meth:`give_back`), or
        None when ``limit`` retries are in flight then."""
        with self._lock:
            if len(self._held) > 4096:  # keep the newest (timelines of concurrent calls interleave)
                del self._held[:2048]
            if sum(1 for start, end in self._held if start <= at < end) >= self.limit:
                return None
            slot = [at, float("inf")]
            self._held.append(slot)
            return slot

    def give_back(self, slot: list[float], at: float) -> None:
        """The retry of ``slot`` ended at virtual time ``at``."""
        with self._lock:
            slot[1] = at
