"""Spans and metrics through ``opentelemetry-api`` only (nothing is made when the app has no SDK).

One CLIENT span per logical call, whatever the retries and the failover inside it, following
OpenTelemetry's semantic conventions: the stable HTTP client conventions for HTTP calls (the
attributes ``opentelemetry-instrumentation-requests`` / ``-httpx`` set with
``OTEL_SEMCONV_STABILITY_OPT_IN=http``, with the logical service URL as ``url.full`` and the proxy
actually connected to as ``network.peer.*``), the RPC conventions for Thrift calls, plus the
``mesh.*`` attributes. One histogram point per call: ``http.client.request.duration`` (HTTP) or
``rpc.client.call.duration`` (Thrift), in seconds, with the conventions' advisory buckets.
docs/context.md lists every attribute.

While a mesh call runs, HTTP instrumentation is suppressed (the context key OpenTelemetry's
``suppress_http_instrumentation()`` sets), so ``opentelemetry-instrumentation-requests`` or
``-httpx`` installed beside mesh_client does not add a second client span for the same call.

The private parts of ``opentelemetry-api`` read here (where it keeps its global providers, a
``TraceState``'s entries, the suppression key) are each probed once and have a public fallback;
they are kept together in the section "private OpenTelemetry internals" below.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace

from ._compat.otel import http_suppression, metrics_are_noop, no_sdk, trace_state, tracing_is_noop

if TYPE_CHECKING:
    from .info import CallInfo
    from .registry import Address

__all__ = [
    "DURATION_BUCKETS",
    "SCHEMA_URL",
    "CallTelemetry",
    "call_telemetry",
    "instrumentation_loaded",
    "no_http_instrumentation",
    "trace_state",
]

_INSTRUMENTATION: Final = "mesh_client"
#: The semantic conventions version the names follow: the stable HTTP conventions, and the RPC
#: ones as renamed in 1.39 (``rpc.system.name``, a fully-qualified ``rpc.method``, ``peer.service``
#: -> ``service.peer.name``); 1.44.0 is the newest the installed ``opentelemetry-semantic-conventions``
#: (0.66b2) knows, and nothing emitted here changed between 1.39 and 1.44.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.44.0"
#: The conventions' advisory bucket boundaries (s) for ``http.client.request.duration`` and
#: ``rpc.client.call.duration``.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Methods kept as they are in ``http.request.method`` (others become ``_OTHER``), as in
#: ``opentelemetry-util-http``'s ``sanitize_method``.
_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
#: query parameters whose values ``url.full`` redacts (the HTTP conventions' list)
_REDACTED_PARAMS: Final = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HTTP_VERSIONS: Final = {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 30: "3"}
_RPC_SYSTEM: Final = "thrift"


# -- instruments --------------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("mesh-client")
    except Exception:  # running from a source tree that is not installed
        return ""


def duration_histograms(meter: metrics.Meter) -> tuple[metrics.Histogram, metrics.Histogram]:
    """``http.client.request.duration`` and ``rpc.client.call.duration`` made by ``meter``."""
    http = meter.create_histogram(
        "http.client.request.duration",
        unit="s",
        description="Duration of HTTP client requests.",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    rpc = meter.create_histogram(
        "rpc.client.call.duration",
        unit="s",
        description="Measures the duration of an outgoing Remote Procedure Call (RPC).",
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )
    return http, rpc


class _Instruments:
    """Tracer and meter instruments, created on first use (never at import time)."""

    _lock = threading.Lock()
    _ready = False
    tracer: trace.Tracer
    http_duration: metrics.Histogram
    rpc_duration: metrics.Histogram

    @classmethod
    def get(cls) -> type[_Instruments]:
        if not cls._ready:
            with cls._lock:
                if not cls._ready:
                    version = _package_version()
                    cls.tracer = trace.get_tracer(_INSTRUMENTATION, version, schema_url=SCHEMA_URL)
                    meter = metrics.get_meter(_INSTRUMENTATION, version, schema_url=SCHEMA_URL)
                    cls.http_duration, cls.rpc_duration = duration_histograms(meter)
                    cls._ready = True
        return cls


_NOOP_TRACER: Final = trace.NoOpTracer()


_NOTHING_TO_SUPPRESS: Final = contextlib.nullcontext()
#: every OpenTelemetry instrumentation is a ``BaseInstrumentor`` of this package
_INSTRUMENTATION_PACKAGE: Final = "opentelemetry.instrumentation"


def instrumentation_loaded() -> bool:
    """Whether an OpenTelemetry instrumentation may be in use: its package is imported. While it
    is not, :func:`no_http_instrumentation` has nothing to suppress, and a wrapper can skip its
    ``with`` block (three Python calls fewer, on every call)."""
    return _INSTRUMENTATION_PACKAGE in sys.modules


def no_http_instrumentation() -> contextlib.AbstractContextManager[None]:
    """Suppress OpenTelemetry HTTP instrumentations (requests, httpx...) inside the block.

    Nothing to do (and nothing done) while no OpenTelemetry instrumentation has been imported:
    an instrumentor is a ``BaseInstrumentor`` from ``opentelemetry.instrumentation``, so until
    that package is loaded no library is instrumented."""
    if _INSTRUMENTATION_PACKAGE not in sys.modules:
        return _NOTHING_TO_SUPPRESS
    return http_suppression()


def call_telemetry(service: str, method: str, source: object = None, protocol: str = "http") -> CallTelemetry | None:
    """The telemetry of a new call, or None when there is nothing to record: no tracer provider
    and no meter provider installed (no SDK), so the call's span would be a no-op and its metric
    record dropped. A provider named by ``OTEL_PYTHON_TRACER_PROVIDER`` /
    ``OTEL_PYTHON_METER_PROVIDER`` is loaded first, as the instruments are made.

    ``source`` is what the call was made from, read only here: the ``requests`` or ``httpx``
    request (its URL and ``User-Agent``), or for Thrift the thriftpy2 service (its name)."""
    if not _Instruments._ready:
        _Instruments.get()
    if no_sdk():
        return None
    return CallTelemetry(service, method, source, protocol)


# -- what a call's attributes are made of -------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` as ``url.full`` shows it: credentials and the values of the conventions' sensitive
    query parameters replaced by ``REDACTED`` (the rest exactly as written)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, tail = rest.partition("/")
        if "@" in authority:
            url = f"{scheme}://REDACTED:REDACTED@{authority.rpartition('@')[2]}{slash}{tail}"
    head, sep, query = url.partition("?")
    if not sep:
        return url
    query, hash_sign, fragment = query.partition("#")
    params = query.split("&")
    changed = False
    for i, param in enumerate(params):
        name, eq, _ = param.partition("=")
        if eq and name in _REDACTED_PARAMS:
            params[i] = f"{name}=REDACTED"
            changed = True
    if not changed:
        return url
    return f"{head}?{'&'.join(params)}{hash_sign}{fragment}"


def _protocol_version(response: object) -> str | None:
    """``network.protocol.version`` of a response: httpx's ``http_version`` (``HTTP/1.1``) or
    urllib3's ``raw.version`` (11) under a ``requests`` response; None when unknown."""
    version = getattr(response, "http_version", None)
    if isinstance(version, str):
        return version.removeprefix("HTTP/") or None
    number = getattr(getattr(response, "raw", None), "version", None)
    return _HTTP_VERSIONS.get(number) if isinstance(number, int) else None


def _http_attributes(service: str, method: str, source: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the metric's attributes known at the start, the span's extra ones) for an HTTP call."""
    known = method in _KNOWN_METHODS
    base: dict[str, Any] = {"http.request.method": method if known else "_OTHER", "mesh.service": service}
    extra: dict[str, Any] = {} if known else {"http.request.method_original": method}
    url = getattr(source, "url", None)
    host, port = service, 80
    if url is not None:
        text = str(url)
        extra["url.full"] = redact_url(text)
        try:
            parts = urlsplit(text)
            host = parts.hostname or service
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:  # pragma: no cover - the URL was parsed already to find the service
            pass
    base["server.address"], base["server.port"] = host, port
    headers = getattr(source, "headers", None)
    agent = headers.get("user-agent") if headers is not None else None
    if isinstance(agent, str):
        extra["user_agent.original"] = agent
    return base, extra


class CallTelemetry:
    """The span and measurements of one logical call.

    Without a tracer provider, no span is started: the no-op tracer's span would only carry the
    current span context, which :meth:`propagation_context` then leaves to the current context
    (the same headers), and :attr:`span` makes it on demand.
    """

    __slots__ = ("_base", "_finished", "_method", "_name", "_rpc", "_service", "_span")

    def __init__(self, service: str, method: str, source: object = None, protocol: str = "http") -> None:
        # first: getting the tracer loads a provider named by OTEL_PYTHON_TRACER_PROVIDER
        instruments = _Instruments if _Instruments._ready else _Instruments.get()
        self._finished = False
        self._service = service
        self._method = method
        self._rpc = protocol == "thrift"
        if self._rpc:
            interface = getattr(source, "__name__", None) or service
            rpc_method = f"{interface}/{method}"
            self._name = rpc_method
            self._base: dict[str, Any] = {
                "rpc.system.name": _RPC_SYSTEM,
                "rpc.method": rpc_method,
                "server.address": service,
                "mesh.service": service,
            }
            extra: dict[str, Any] = {}
        else:
            self._base, extra = _http_attributes(service, method, source)
            self._name = method if method in _KNOWN_METHODS else "HTTP"
        self._span: trace.Span | None = None
        if not tracing_is_noop():
            self._span = instruments.tracer.start_span(
                self._name,
                kind=trace.SpanKind.CLIENT,
                attributes={**self._base, **extra, "service.peer.name": service, "peer.service": service},
            )

    @property
    def span(self) -> trace.Span:
        """The call's CLIENT span (a non-recording one without an SDK)."""
        span = self._span
        if span is None:
            span = self._span = _NOOP_TRACER.start_span(self._name, kind=trace.SpanKind.CLIENT)
        return span

    def propagation_context(self) -> otel_context.Context | None:
        """The context to inject: the current one with this call's span as parent (None: the
        current one as it is, when there is no SDK and so no span of this call's own)."""
        if self._span is None:
            return None
        return trace.set_span_in_context(self._span)

    def _error_type(
        self,
        info: CallInfo,
        *,
        status: int | None,
        response: object,
        error: type[BaseException] | None,
        cause: BaseException | None,
        escaped: BaseException | None,
        error_kind: str | None,
    ) -> str | None:
        """``error.type``: the attempt's exception class (the mesh error's when there is none), the
        status code of an HTTP error response (4xx, 5xx or uninterpretable), a Thrift error reply's
        Envoy kind or exception class; None for a success or a cancellation."""
        if error is not None:
            return type(cause).__qualname__ if cause is not None else error.__name__
        if escaped is not None:
            return None if error_kind == "cancelled" else type(escaped).__qualname__
        if status is None:
            return None
        if self._rpc:  # (the core's status for a reply that is an exception is not 200)
            return None if status == 200 else info.envoy_error or type(getattr(response, "error", None)).__qualname__
        return str(status) if status >= 400 or status < 100 else None

    def _outcome(
        self,
        info: CallInfo,
        *,
        status: int | None,
        kind: str | None,
        error_type: str | None,
        version: str | None,
        peer: Address | None,
    ) -> dict[str, Any]:
        """The span attributes known when the call ends."""
        attributes: dict[str, Any] = {
            "mesh.route": info.route.value,
            "mesh.attempts": info.attempts,
            "mesh.failed_over": info.failed_over,
        }
        if info.attempts > 1 and not self._rpc:
            attributes["http.request.resend_count"] = info.attempts - 1
        if peer is not None:
            attributes["network.peer.address"] = peer.host
            attributes["network.peer.port"] = peer.port
        if status is not None and not self._rpc:
            attributes["http.response.status_code"] = status
        if version is not None:
            attributes["network.protocol.version"] = version
        if info.upstream_service_time is not None:
            attributes["mesh.upstream_service_time"] = info.upstream_service_time
        if info.envoy_error:
            attributes["mesh.envoy_error"] = info.envoy_error
        if kind:
            attributes["mesh.error_kind"] = kind
        if info.variant is not None:  # the variant a routing override sent the call to
            attributes["mesh.variant"] = info.variant
        if info.stage is not None:  # the migration stage the route flag answered (shadow reads)
            attributes["mesh.stage"] = info.stage
        if error_type is not None:
            attributes["error.type"] = error_type
        return attributes

    def finish(
        self,
        info: CallInfo,
        *,
        status: int | None = None,
        error_kind: str | None = None,
        peer: Address | None = None,
        response: object = None,
        error: type[BaseException] | None = None,
        message: str = "",
        cause: BaseException | None = None,
        escaped: BaseException | None = None,
    ) -> None:
        """Record the outcome and end the span (once; later calls do nothing).

        ``status`` and ``response``: the final response; ``error``, ``message`` and ``cause``: the
        mesh error class the call fails with, its message and the attempt's own exception;
        ``escaped``: an exception that ended the call from outside the core (``error_kind``
        ``"cancelled"`` when it is a cancellation, which the conventions do not count as an error);
        ``peer``: the address the last attempt went to."""
        if self._finished:
            return
        self._finished = True
        kind = error_kind or info.envoy_error
        error_type = self._error_type(
            info, status=status, response=response, error=error, cause=cause, escaped=escaped, error_kind=error_kind
        )
        version = None if self._rpc or response is None else _protocol_version(response)
        route = info.route.value
        span = self._span
        if span is not None:  # None: no tracer provider, nothing to record or end
            if span.is_recording():
                outcome = self._outcome(
                    info, status=status, kind=kind, error_type=error_type, version=version, peer=peer
                )
                span.set_attributes(outcome)
                if error is not None:
                    raised = cause if cause is not None else error(message)
                    span.record_exception(raised, attributes={"exception.message": message})
                    span.set_status(trace.StatusCode.ERROR, f"{error_type}: {message}")
                elif escaped is not None and error_type is not None:
                    span.record_exception(escaped)
                    span.set_status(trace.StatusCode.ERROR, f"{error_type}: {escaped}")
                elif error_type is not None:  # (the status code says why: no description)
                    span.set_status(trace.StatusCode.ERROR)
            span.end()
        if metrics_are_noop():  # the proxy instrument would drop the record
            return
        point = {**self._base, "mesh.route": route}
        if status is not None and not self._rpc:
            point["http.response.status_code"] = status
        if version is not None:
            point["network.protocol.version"] = version
        if error_type is not None:
            point["error.type"] = error_type
        if kind:
            point["mesh.error_kind"] = kind
        histogram = _Instruments.rpc_duration if self._rpc else _Instruments.http_duration
        histogram.record(info.elapsed, point)
