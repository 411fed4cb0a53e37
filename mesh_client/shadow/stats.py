"""Counting shadow copies: :class:`ShadowStats` (what :meth:`Mesh.shadow_stats
<mesh_client.Mesh.shadow_stats>` returns) and the observers a test fake listens with."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from ..policy import Route
from .compare import Comparison

__all__ = ["ShadowEvent", "ShadowStats", "observe"]

Result = Literal["match", "mismatch", "error", "skipped"]


@dataclass(frozen=True, slots=True)
class ShadowStats:
    """Shadow copies of one service's calls through one mesh, since it was made (or since the
    fork that made this process).

    - ``compared``: copies whose answer was compared with the caller's (``matched`` +
      ``mismatched``).
    - ``errors``: copies not compared because one side failed below HTTP (a timeout, a refused
      connection, an Envoy Thrift reply...); ``envoy_errors`` / ``haproxy_errors`` count the
      failures by route (a copy where both failed counts once in ``errors``, once in each).
    - ``skipped``: calls picked for a copy that got none: ``max_in_flight`` copies were in flight
      already, the caller streams the response, the body cannot be sent twice, the call failed
      over or never went out, the mesh closed before the copy ran.
    - ``in_flight``: copies running now; ``peak_in_flight``: the most at once so far.
    """

    service: str
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    errors: int = 0
    skipped: int = 0
    envoy_errors: int = 0
    haproxy_errors: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class ShadowEvent:
    """One copy's outcome, as observers see it (``result`` ``"skipped"``: ``reason`` says why)."""

    service: str
    result: Result
    stage: str
    method: str = ""
    target: str = ""
    comparison: Comparison | None = None
    failed_routes: tuple[Route, ...] = ()
    reason: str = ""


@dataclass
class Counters:
    """The mutable counts behind :class:`ShadowStats` (guarded by their owner's lock)."""

    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    errors: int = 0
    skipped: int = 0
    failed: dict[Route, int] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0

    def count(self, event: ShadowEvent) -> None:
        if event.result == "skipped":
            self.skipped += 1
            return
        if event.result == "error":
            self.errors += 1
            for route in event.failed_routes:
                self.failed[route] = self.failed.get(route, 0) + 1
            return
        self.compared += 1
        if event.result == "match":
            self.matched += 1
        else:
            self.mismatched += 1

    def snapshot(self, service: str) -> ShadowStats:
        return ShadowStats(
            service,
            compared=self.compared,
            matched=self.matched,
            mismatched=self.mismatched,
            errors=self.errors,
            skipped=self.skipped,
            envoy_errors=self.failed.get(Route.ENVOY, 0),
            haproxy_errors=self.failed.get(Route.HAPROXY, 0),
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
        )


Observer = Callable[[ShadowEvent], None]
_observers: list[Observer] = []
_observers_lock: Final = threading.Lock()


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[Observer]:
    """Call ``observer`` with every copy's outcome, of every mesh, while the block lasts (before
    the copy stops counting as in flight, so a drained mesh has told its observers everything)."""
    with _observers_lock:
        _observers.append(observer)
    try:
        yield observer
    finally:
        with _observers_lock:
            _observers.remove(observer)


def notify(event: ShadowEvent) -> None:
    """Tell the observers (see :func:`observe`); a failing observer does not stop the others."""
    for observer in list(_observers):
        with contextlib.suppress(Exception):
            observer(event)
