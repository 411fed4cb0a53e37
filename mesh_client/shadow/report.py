"""Where shadow outcomes go besides :class:`~mesh_client.shadow.stats.ShadowStats`: the mismatch
log (sampled, size-capped), the OpenTelemetry counter ``mesh_client.shadow.comparisons`` and
LaunchDarkly's migration op events."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any, Final

from .._compat.otel import metrics_are_noop
from ..policy import Route
from ..telemetry import SCHEMA_URL
from .compare import Comparison

__all__ = ["MismatchLog", "count_comparison", "track_migration"]

log = logging.getLogger("mesh_client.shadow")

#: a mismatch log line is cut to this many characters
MAX_LOG_CHARS: Final = 2000
#: mismatches logged at once per service before the rate applies, and then one per this many seconds
LOG_BURST: Final = 5
LOG_INTERVAL: Final = 10.0

COUNTER_NAME: Final = "mesh_client.shadow.comparisons"


class MismatchLog:
    """Logs mismatches of one service: the first :data:`LOG_BURST`, then at most one per
    :data:`LOG_INTERVAL` seconds (a token bucket), each line naming how many were not logged
    since the last one."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._lock = threading.Lock()
        self._tokens = float(LOG_BURST)
        self._at = time.monotonic()
        self._suppressed = 0

    def _take(self) -> int | None:
        """The count of mismatches not logged since the last line, or None: do not log this one."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(LOG_BURST), self._tokens + (now - self._at) / LOG_INTERVAL)
            self._at = now
            if self._tokens < 1:
                self._suppressed += 1
                return None
            self._tokens -= 1
            suppressed, self._suppressed = self._suppressed, 0
            return suppressed

    def mismatch(
        self, comparison: Comparison, *, method: str, target: str, stage: str, primary: Route, request_id: str
    ) -> None:
        if not log.isEnabledFor(logging.WARNING):
            return
        suppressed = self._take()
        if suppressed is None:
            return
        other = Route.ENVOY if primary is Route.HAPROXY else Route.HAPROXY
        parts = "; ".join(
            f"{d.where}: {primary.value} {d.primary} / {other.value} {d.copy}" for d in comparison.differences
        )
        more = comparison.count - len(comparison.differences)
        if more:
            parts += f"; and {more} more"
        line = (
            f"mesh_client: shadow mismatch for {self._service} {method} {target} at stage {stage} "
            f"(x-request-id {request_id}; {primary.value} answered the caller, the copy went via {other.value}): "
            f"{comparison.count} difference(s): {parts}"
        )
        if suppressed:
            line += f" [{suppressed} mismatch(es) of {self._service} not logged since the last line]"
        if len(line) > MAX_LOG_CHARS:
            line = line[: MAX_LOG_CHARS - 14] + " ... (cut)"
        log.warning("%s", line)


class _Counter:
    """``mesh_client.shadow.comparisons``, made on first use (never at import time)."""

    _lock = threading.Lock()
    instrument: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.instrument is None:
            with cls._lock:
                if cls.instrument is None:
                    from opentelemetry import metrics

                    meter = metrics.get_meter("mesh_client", schema_url=SCHEMA_URL)
                    cls.instrument = meter.create_counter(
                        COUNTER_NAME,
                        unit="{comparison}",
                        description="Shadow copies of mesh calls by outcome: match, mismatch, error, skipped.",
                    )
        return cls.instrument


def count_comparison(service: str, result: str, stage: str) -> None:
    """One point of ``mesh_client.shadow.comparisons`` (attributes ``mesh.service``,
    ``mesh.shadow.result``, ``mesh.stage``); nothing while no meter provider is installed."""
    if metrics_are_noop():
        return
    _Counter.get().add(1, {"mesh.service": service, "mesh.shadow.result": result, "mesh.stage": stage})


def track_migration(
    router: Any,
    service: str,
    *,
    latencies: dict[Route, float],
    failed: tuple[Route, ...],
    consistent: bool | None,
) -> None:
    """Send LaunchDarkly a migration op event for one copied read: both origins invoked (old =
    HAProxy, new = Envoy), their latencies and errors, and the consistency check when both
    answered. The flag is evaluated anew (``migration_variation``) for the tracker; nothing is
    sent unless it still answers a stage that copies. Never raises."""
    variation = getattr(router, "migration_variation", None)
    if variation is None:
        return
    try:
        from ldclient.migrations import Operation, Origin, Stage

        pair = variation(service)
        if pair is None:
            return
        stage, tracker = pair
        if stage not in (Stage.SHADOW, Stage.LIVE):
            return  # the flag moved on since the copy was made
        origins = {Route.HAPROXY: Origin.OLD, Route.ENVOY: Origin.NEW}
        tracker.operation(Operation.READ)
        for route, origin in origins.items():
            tracker.invoked(origin)
            if route in latencies:
                tracker.latency(origin, timedelta(seconds=latencies[route]))
            if route in failed:
                tracker.error(origin)
        if consistent is not None:
            tracker.consistent(lambda: consistent)
        router.client.track_migration_op(tracker)
    except Exception:
        log.debug("mesh_client: the migration op event for %s could not be sent", service, exc_info=True)
