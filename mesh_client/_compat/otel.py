"""OpenTelemetry API internals: the global providers' "nothing installed" tests, the runtime
context's own ``ContextVar``, the context key that suppresses the official HTTP instrumentations,
a ``TraceState`` built with exactly the members the W3C grammar allows, and the propagators a
``CompositePropagator`` combines. Each probed at import, each with a public fallback (see
:mod:`mesh_client._compat`)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import forced_fallback

__all__ = [
    "current_context",
    "http_suppression",
    "metrics_are_noop",
    "no_sdk",
    "propagators_of",
    "trace_state",
    "tracing_is_noop",
]

_FORCED = forced_fallback()


def _probe_metrics_api() -> Any:
    """The module where the metrics API keeps its global provider (``_METER_PROVIDER``), or None
    when it is not there any more (then metrics are assumed on: every call records, which the
    API's proxy instruments drop while no provider is set: always correct, a little slower)."""
    if forced_fallback():
        return None
    try:
        from opentelemetry.metrics import _internal
    except ImportError:  # the API moved it
        return None
    return _internal if hasattr(_internal, "_METER_PROVIDER") else None


_METRICS_API: Any = _probe_metrics_api()


def tracing_is_noop() -> bool:
    """Whether no tracer provider (no SDK) is installed, so every span would be a no-op.

    The same test OpenTelemetry's proxy tracer makes on every span; if the API ever stops
    exposing it, tracing is assumed on (the general path, always correct)."""
    return not _FORCED and getattr(trace, "_TRACER_PROVIDER", True) is None


def metrics_are_noop() -> bool:
    """Whether no meter provider (no SDK) is installed, so the API's proxy instruments drop every
    record (the test they make themselves: they have no real instrument until a provider is set;
    one named by OTEL_PYTHON_METER_PROVIDER is set when the instruments are made). See
    :func:`_probe_metrics_api` for the fallback."""
    api = _METRICS_API
    return api is not None and getattr(api, "_METER_PROVIDER", True) is None


def no_sdk() -> bool:
    """``tracing_is_noop() and metrics_are_noop()`` in one call (asked on every call)."""
    if _FORCED or getattr(trace, "_TRACER_PROVIDER", True) is not None:
        return False
    api = _METRICS_API
    return api is not None and getattr(api, "_METER_PROVIDER", True) is None


def _probe_current_context() -> Callable[[], Any]:
    """The reader of the current OpenTelemetry context: the ``get`` of the runtime context's own
    ``ContextVar`` when the runtime is OpenTelemetry's contextvars one and the variable follows
    ``attach``/``detach`` (one C call instead of two Python calls, on every call); else, the
    fallback, the public ``opentelemetry.context.get_current``."""
    if forced_fallback():
        return otel_context.get_current
    try:
        var = getattr(getattr(otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
        if not isinstance(var, contextvars.ContextVar) or var.get() is not otel_context.get_current():
            return otel_context.get_current
        token = otel_context.attach(otel_context.set_value("mesh_client.probe", True))
        try:
            follows = var.get() is otel_context.get_current()
        finally:
            otel_context.detach(token)
        if follows and var.get() is otel_context.get_current():
            return var.get
    except Exception:  # a runtime context built otherwise
        pass
    return otel_context.get_current


#: the current OpenTelemetry context (what ``opentelemetry.context.get_current()`` returns)
current_context: Callable[[], Any] = _probe_current_context()


def _probe_suppress_http_key() -> str | None:
    """The context key the official HTTP instrumentations read to stay quiet
    (``opentelemetry.context._SUPPRESS_HTTP_INSTRUMENTATION_KEY``), or None. The key is made by
    ``create_key``, a name with a random suffix, so only that very string works: no fallback
    value can stand in for it. Where it is not there, :func:`http_suppression` gives the public
    ``suppress_http_instrumentation()`` of ``opentelemetry-instrumentation`` instead."""
    if forced_fallback():
        return None
    key = getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)
    return key if isinstance(key, str) else None


#: the context key ``suppress_http_instrumentation()`` sets (None: use that function)
_SUPPRESS_HTTP_KEY: str | None = _probe_suppress_http_key()


class _SuppressHttp:
    """``suppress_http_instrumentation()`` in one context attach (a class: cheaper than the
    generator behind the public one)."""

    __slots__ = ("_key", "_token")

    def __init__(self, key: str) -> None:
        self._key = key

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_context.set_value(self._key, True))

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


def http_suppression() -> AbstractContextManager[Any]:
    """A block in which the official OpenTelemetry HTTP instrumentations make no span (call it only
    once ``opentelemetry.instrumentation`` is imported: it is the fallback's home). Fallback when
    the probe fails: ``opentelemetry.instrumentation.utils.suppress_http_instrumentation()``."""
    key = _SUPPRESS_HTTP_KEY
    if key is not None:
        return _SuppressHttp(key)
    try:
        from opentelemetry.instrumentation.utils import suppress_http_instrumentation
    except ImportError:  # an instrumentation package without it: nothing this side can suppress
        return nullcontext()
    return suppress_http_instrumentation()


def _probe_trace_state_store() -> bool:
    """Whether a ``TraceState`` keeps its entries in the dict ``_dict`` that every method reads
    (then :func:`trace_state` can hold keys OpenTelemetry's older grammar rejects)."""
    if forced_fallback():
        return False
    try:
        state = trace.TraceState()
        if vars(state) != {"_dict": {}}:
            return False
        state._dict = {"a@@b": "1", "c": "2"}
        return state.to_header() == "a@@b=1,c=2" and len(state) == 2 and state["a@@b"] == "1" and "c" in state
    except Exception:  # an API whose TraceState works otherwise
        return False


_TRACE_STATE_STORE: bool = _probe_trace_state_store()


def trace_state(members: Sequence[tuple[str, str]]) -> trace.TraceState:
    """A ``TraceState`` with exactly ``members`` (already checked by
    :func:`mesh_client.tracestate.parse_tracestate`: valid under the current W3C grammar, no key
    twice, at most 32). Fallback when the probe fails: OpenTelemetry's own constructor, which keeps
    the members its older key grammar accepts."""
    if not _TRACE_STATE_STORE:
        return trace.TraceState(list(members))
    state = trace.TraceState()
    state._dict = dict(members)
    return state


def _probe_composite_parts() -> bool:
    """Whether a ``CompositePropagator`` keeps the propagators it was given, in order, in its
    ``_propagators`` list (then :func:`propagators_of` can tell OpenTelemetry's default set)."""
    if forced_fallback():
        return False
    try:
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        inner = TraceContextTextMapPropagator()
        return list(getattr(CompositePropagator([inner]), "_propagators", ())) == [inner]
    except Exception:  # an API that builds composites otherwise
        return False


_COMPOSITE_PARTS: bool = _probe_composite_parts()


def propagators_of(textmap: object) -> list[object] | None:
    """The propagators the global textmap ``textmap`` combines (``[textmap]`` when it is not a
    ``CompositePropagator``), or None when that cannot be known. Fallback when the probe fails:
    None, so :func:`mesh_client.context.outbound_headers` runs ``propagate.inject`` on every call
    (always correct, a few µs slower)."""
    from opentelemetry.propagators.composite import CompositePropagator

    if type(textmap) is not CompositePropagator:
        return [textmap]
    if not _COMPOSITE_PARTS:
        return None
    parts = getattr(textmap, "_propagators", None)
    return list(parts) if isinstance(parts, (list, tuple)) else None
