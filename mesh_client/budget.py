"""Retry budgets: retries as a bounded share of recent calls, per service.

In the spirit of Finagle's ``RetryBudget``: every call deposits ``percent`` % of a token, every
retry withdraws one, deposits expire after ``ttl`` seconds, and a floor of ``min_per_second``
retries per second is always allowed so a quiet service can still retry. When the budget is
empty, the client retries nothing more (HAProxy route, Thrift, failover) and asks Envoy for
``x-envoy-max-retries: 0``; Envoy's own retries are withdrawn afterwards, so both layers draw on
the same budget: the count Envoy reports in ``x-envoy-attempt-count`` when the route adds it, else
the whole ``x-envoy-max-retries`` the call sent when the answer is one its retry-on conditions
cover (Envoy gave up on it only when its retries ran out), and nothing for any other answer (see
``CallRun._envoy_may_have_retried`` in :mod:`mesh_client.core`).

So retries can add at most ``percent`` % to a service's load, plus the floor: a failing
dependency sees about ``1 + percent/100`` requests per call instead of ``1 + retries``, and
stacked layers multiply by ``1 + percent/100`` each, not by ``1 + retries``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import clock as _clock

__all__ = ["DEFAULT_BUDGET", "RetryBudget", "RetryBudgetConfig"]

_BUCKETS: Final = 10


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """``percent`` of recent calls may be retried, plus ``min_per_second`` retries per second;
    "recent" is the last ``ttl`` seconds."""

    percent: float = 20.0
    min_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        for name in ("percent", "min_per_second"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                # (infinity would pass "value >= 0" and make every call's budget arithmetic overflow)
                raise ValueError(f"retry_budget.{name} must be a finite number >= 0, got {value!r}")
        if self.percent > 1000:
            raise ValueError(f"retry_budget.percent must be at most 1000, got {self.percent!r}")
        if isinstance(self.ttl, bool) or not isinstance(self.ttl, (int, float)) or not 1 <= self.ttl <= 60:
            raise ValueError(f"retry_budget.ttl must be between 1 and 60 seconds, got {self.ttl!r}")


DEFAULT_BUDGET: Final = RetryBudgetConfig()


class RetryBudget:
    """A thread-safe retry budget for one service (shared by every call, thread and task)."""

    def __init__(self, config: RetryBudgetConfig = DEFAULT_BUDGET, clock: Callable[[], float] = _clock.monotonic):
        self.config = config
        #: the clock the budget's buckets are read on
        self.clock = clock
        self._clock = clock
        self._width = config.ttl / _BUCKETS
        self._calls = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        # running sums of the buckets, so the balance is read without summing them
        self._calls_total = 0
        self._retries_total = 0
        # the balance is floor + calls x share - retries
        self._floor = config.min_per_second * config.ttl
        self._share = config.percent / 100
        self._epoch = int(clock() / self._width)
        #: the clock reading at which the current bucket ends (a roll is due)
        self._roll_at = (self._epoch + 1) * self._width
        self._era = _clock.era()
        self._lock = threading.Lock()

    def _restart(self) -> None:
        """Forget everything: the clock was switched (to or from a virtual one), so the buckets'
        times mean nothing now (call with the lock held)."""
        self._calls = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._calls_total = self._retries_total = 0
        self._epoch = int(self._clock() / self._width)
        self._roll_at = (self._epoch + 1) * self._width
        self._era = _clock.era()

    def _roll(self) -> None:
        """Expire the buckets older than ``ttl`` (call with the lock held)."""
        if self._era != _clock.era():
            self._restart()
        epoch = int(self._clock() / self._width)
        if epoch <= self._epoch:
            return
        steps = min(epoch - self._epoch, _BUCKETS)
        calls, retries = self._calls_total, self._retries_total
        for i in range(1, steps + 1):
            slot = (self._epoch + i) % _BUCKETS
            calls -= self._calls[slot]
            retries -= self._retries[slot]
            self._calls[slot] = 0
            self._retries[slot] = 0
        self._calls_total, self._retries_total = calls, retries
        self._epoch = epoch
        self._roll_at = (epoch + 1) * self._width

    def _balance(self) -> float:
        return self._floor + self._calls_total * self._share - self._retries_total

    def deposit(self, now: float | None = None) -> int:
        """Count one call; return the whole retries the budget allows now (what
        :meth:`available` would say right after). ``now``: a reading of :attr:`clock` the caller
        has just made (one clock read fewer per call)."""
        if now is None:
            now = self._clock()
        with self._lock:
            # (_clock._era is what _clock.era() returns: read here without the call, on every call)
            if now >= self._roll_at or self._era != _clock._era:
                self._roll()
            self._calls[self._epoch % _BUCKETS] += 1
            calls = self._calls_total = self._calls_total + 1
            balance = int(self._floor + calls * self._share - self._retries_total)
        return balance if balance > 0 else 0

    def try_withdraw(self) -> bool:
        """Take one retry if the budget allows it."""
        with self._lock:
            self._roll()
            if self._balance() < 1:
                return False
            self._retries[self._epoch % _BUCKETS] += 1
            self._retries_total += 1
            return True

    def spend(self, retries: int) -> None:
        """Count retries that happened anyway (Envoy's), even past the budget."""
        if retries <= 0:
            return
        with self._lock:
            self._roll()
            self._retries[self._epoch % _BUCKETS] += retries
            self._retries_total += retries

    def available(self) -> int:
        """Whole retries left now."""
        if self._clock() < self._roll_at and self._era == _clock.era():
            # no bucket to expire: a read of two counters needs no lock (every call asks this)
            balance = int(self._balance())
            return balance if balance > 0 else 0
        with self._lock:
            self._roll()
            return max(0, int(self._balance()))
