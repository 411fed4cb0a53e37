"""Spans and metrics through ``opentelemetry-api`` only (a no-op when the app has no SDK).

One CLIENT span per logical call, whatever the retries and the failover inside it, with the
attributes ``mesh.service``, ``mesh.route``, ``mesh.attempts``, ``mesh.failed_over``,
``mesh.upstream_service_time`` (s), ``mesh.error_kind``, plus ``http.request.method``,
``http.response.status_code`` and ``peer.service``. Metrics: the counter ``mesh_client.calls``
and the histogram ``mesh_client.call.duration`` (s), both by service, route and outcome.

While a mesh call runs, HTTP instrumentation is suppressed (the context key OpenTelemetry's
``suppress_http_instrumentation()`` sets), so ``opentelemetry-instrumentation-requests`` or
``-httpx`` installed beside mesh_client does not add a second client span for the same call.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_api  # where the API keeps its global provider

if TYPE_CHECKING:
    from .info import CallInfo

__all__ = ["CallTelemetry", "call_telemetry", "no_http_instrumentation"]

_SUPPRESS_HTTP_KEY: str = getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", "suppress_http_instrumentation")
_INSTRUMENTATION = "mesh_client"


class _Instruments:
    """Tracer and meter instruments, created on first use (never at import time)."""

    _lock = threading.Lock()
    _ready = False
    tracer: trace.Tracer
    calls: metrics.Counter
    duration: metrics.Histogram

    @classmethod
    def get(cls) -> type[_Instruments]:
        if not cls._ready:
            with cls._lock:
                if not cls._ready:
                    cls.tracer = trace.get_tracer(_INSTRUMENTATION)
                    meter = metrics.get_meter(_INSTRUMENTATION)
                    cls.calls = meter.create_counter(
                        "mesh_client.calls", unit="{call}", description="Calls to mesh services"
                    )
                    cls.duration = meter.create_histogram(
                        "mesh_client.call.duration", unit="s", description="Duration of calls to mesh services"
                    )
                    cls._ready = True
        return cls


def tracing_is_noop() -> bool:
    """Whether no tracer provider (no SDK) is installed, so every span would be a no-op.

    The same test OpenTelemetry's proxy tracer makes on every span; if the API ever stops
    exposing it, tracing is assumed on (the general path, always correct)."""
    return getattr(trace, "_TRACER_PROVIDER", True) is None


def metrics_are_noop() -> bool:
    """Whether no meter provider (no SDK) is installed, so the API's proxy instruments drop every
    record (the test they make themselves: they have no real instrument until a provider is set;
    one named by OTEL_PYTHON_METER_PROVIDER is set when the instruments are made). If the API
    ever stops keeping its provider there, metrics are assumed on."""
    return getattr(_metrics_api, "_METER_PROVIDER", True) is None


_NOOP_TRACER: Final = trace.NoOpTracer()


class _NoHttpInstrumentation:
    """:func:`no_http_instrumentation`'s context manager (a class: cheaper than a generator)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_context.set_value(_SUPPRESS_HTTP_KEY, True))

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


_NOTHING_TO_SUPPRESS: Final = contextlib.nullcontext()
#: every OpenTelemetry instrumentation is a ``BaseInstrumentor`` of this package
_INSTRUMENTATION_PACKAGE: Final = "opentelemetry.instrumentation"


def no_http_instrumentation() -> contextlib.AbstractContextManager[None]:
    """Suppress OpenTelemetry HTTP instrumentations (requests, httpx...) inside the block.

    Nothing to do (and nothing done) while no OpenTelemetry instrumentation has been imported:
    an instrumentor is a ``BaseInstrumentor`` from ``opentelemetry.instrumentation``, so until
    that package is loaded no library is instrumented."""
    if _INSTRUMENTATION_PACKAGE not in sys.modules:
        return _NOTHING_TO_SUPPRESS
    return _NoHttpInstrumentation()


def call_telemetry(service: str, method: str) -> CallTelemetry | None:
    """The telemetry of a new call, or None when there is nothing to record: no tracer provider
    and no meter provider installed (no SDK), so the call's span would be a no-op and both metric
    records would be dropped. A provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` /
    ``OTEL_PYTHON_METER_PROVIDER`` is loaded first, as the instruments are made."""
    if not _Instruments._ready:
        _Instruments.get()
    if tracing_is_noop() and metrics_are_noop():
        return None
    return CallTelemetry(service, method)


class CallTelemetry:
    """The span and measurements of one logical call.

    Without an SDK (no tracer provider), no span is started: the no-op tracer's span would only
    carry the current span context, which :meth:`propagation_context` then leaves to the current
    context (the same headers), and :attr:`span` makes it on demand.
    """

    __slots__ = ("_finished", "_method", "_service", "_span")

    def __init__(self, service: str, method: str) -> None:
        # first: getting the tracer loads a provider named by OTEL_PYTHON_TRACER_PROVIDER
        instruments = _Instruments if _Instruments._ready else _Instruments.get()
        self._finished = False
        self._service = service
        self._method = method
        self._span: trace.Span | None = None
        if not tracing_is_noop():
            self._span = instruments.tracer.start_span(
                f"{method} {service}",
                kind=trace.SpanKind.CLIENT,
                attributes={"mesh.service": service, "http.request.method": method, "peer.service": service},
            )

    @property
    def span(self) -> trace.Span:
        """The call's CLIENT span (a non-recording one without an SDK)."""
        span = self._span
        if span is None:
            span = self._span = _NOOP_TRACER.start_span(f"{self._method} {self._service}", kind=trace.SpanKind.CLIENT)
        return span

    def propagation_context(self) -> otel_context.Context | None:
        """The context to inject: the current one with this call's span as parent (None: the
        current one as it is, when there is no SDK and so no span of this call's own)."""
        if self._span is None:
            return None
        return trace.set_span_in_context(self._span)

    def finish(self, info: CallInfo, *, status: int | None = None, error_kind: str | None = None) -> None:
        """Record the outcome and end the span (once; later calls do nothing)."""
        if self._finished:
            return
        self._finished = True
        instruments = _Instruments  # (ready: __init__ made sure)
        kind = error_kind or info.envoy_error
        route = info.route.value
        outcome = kind or (f"{status // 100}xx" if status is not None else "ok")
        span = self._span
        if span is not None:  # None: no SDK, nothing to record or end
            if span.is_recording():
                span.set_attribute("mesh.route", route)
                span.set_attribute("mesh.attempts", info.attempts)
                span.set_attribute("mesh.failed_over", info.failed_over)
                if info.upstream_service_time is not None:
                    span.set_attribute("mesh.upstream_service_time", info.upstream_service_time)
                if kind:
                    span.set_attribute("mesh.error_kind", kind)
                if status is not None:
                    span.set_attribute("http.response.status_code", status)
                if error_kind is not None or (status is not None and status >= 500):
                    span.set_status(trace.StatusCode.ERROR, kind or f"HTTP {status}")
            span.end()
        if metrics_are_noop():  # the proxy instruments would drop both records
            return
        labels = {"mesh.service": info.service, "mesh.route": route, "mesh.outcome": outcome}
        instruments.calls.add(1, labels)
        instruments.duration.record(info.elapsed, labels)
