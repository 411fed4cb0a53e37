"""``fake_mesh.shadow_stats(service)``: the shadow copies made while a fake mesh is installed.

The fake answers a copy as it answers any call (the handler sees ``request.route`` and the
``x-mesh-shadow: 1`` header, so a test can plant a difference on one route), and records each
copy's outcome here, whichever :class:`~mesh_client.Mesh` made it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from ..shadow.runner import drain_all
from ..shadow.stats import Counters, ShadowEvent, ShadowStats, observe

__all__ = ["ShadowRecorder"]


class ShadowRecorder:
    """Counts the outcomes of every shadow copy made while :meth:`recording` lasts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, Counters] = {}
        self._events: list[ShadowEvent] = []

    def __call__(self, event: ShadowEvent) -> None:
        with self._lock:
            self._counters.setdefault(event.service, Counters()).count(event)
            self._events.append(event)

    @contextlib.contextmanager
    def recording(self) -> Iterator[ShadowRecorder]:
        with observe(self):
            yield self

    def _drained(self, timeout: float) -> None:
        __tracebackhide__ = True
        if not drain_all(timeout):
            raise AssertionError(f"fake_mesh: shadow copies were still in flight after {timeout} s")

    def stats(self, service: str, *, timeout: float = 5.0) -> ShadowStats:
        """The copies of ``service``'s calls, once every copy in flight has finished (waiting at
        most ``timeout`` real seconds). ``in_flight`` and ``peak_in_flight`` stay 0 here: read
        them from :meth:`Mesh.shadow_stats <mesh_client.Mesh.shadow_stats>`."""
        self._drained(timeout)
        with self._lock:
            counters = self._counters.get(service, Counters())
            return counters.snapshot(service)

    def events(self, service: str, *, timeout: float = 5.0) -> list[ShadowEvent]:
        """Every copy's outcome for ``service``, in the order they ended (mismatches carry their
        differences in ``event.comparison.differences``)."""
        self._drained(timeout)
        with self._lock:
            return [e for e in self._events if e.service == service]
