"""Request context across the call graph, and the trust boundary around it.

Inbound (:mod:`mesh_client.wsgi`, :mod:`mesh_client.asgi`): :func:`read_inbound` turns the
headers of a request this service received into an :class:`Inbound`: the deadline (from
``x-envoy-expected-rq-timeout-ms``, ``grpc-timeout`` or mesh_client's own ``x-mesh-timeout-ms``;
the smallest wins), the request id (``x-request-id``, replaced by a fresh UUID4 when missing or
invalid) and the registry's allowlisted context headers. Nothing else inbound is kept.

Outbound: :func:`outbound_headers` builds, once per logical call, the context headers every
attempt carries: the OpenTelemetry propagation fields (``opentelemetry.propagate.inject``, so
``OTEL_PROPAGATORS`` applies), ``x-request-id`` (the inbound one, else a fresh UUID4) and the
allowlisted context headers. Every value is checked: CR, LF, NUL or a character outside latin-1
raises ``ValueError`` before anything is sent.

Never forwarded: ``x-envoy-*`` and anything else in :data:`NEVER_FORWARDED` (the registry may not
name them); ``authorization`` and ``cookie`` only when the registry names them.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.baggage import get_all as _get_all_baggage
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import INVALID_SPAN_CONTEXT as _INVALID_SPAN_CONTEXT
from opentelemetry.trace import get_current_span as _get_current_span

from ._compat.otel import current_context, propagators_of
from .overrides import Overrides, admit_inbound, enter_request, leave_request
from .shadow import SHADOW_HEADER
from .telemetry import trace_state
from .tracestate import format_tracestate, parse_tracestate
from .variants import OverridesConfig

__all__ = [
    "MESH_TIMEOUT_HEADER",
    "NEVER_FORWARDED",
    "Inbound",
    "begin_request",
    "check_header_value",
    "current_inbound",
    "current_request_id",
    "outbound_headers",
    "parse_grpc_timeout",
    "read_inbound",
]

#: The remaining time budget in ms, sent by mesh_client on the HAProxy route (where no Envoy adds
#: ``x-envoy-expected-rq-timeout-ms``) and read back by the middleware.
MESH_TIMEOUT_HEADER: Final = "x-mesh-timeout-ms"
REQUEST_ID_HEADER: Final = "x-request-id"
TRACESTATE_HEADER: Final = "tracestate"
#: The THeader header naming a Thrift call's destination service; the rendered Envoy Thrift
#: listener routes THeader calls on it.
MESH_SERVICE_HEADER: Final = "x-mesh-service"

#: Headers that are never copied from an inbound request to an outbound one, nor named in the
#: registry's ``context_headers``. (``x-envoy-*`` and ``x-forwarded-*`` are refused as prefixes.)
NEVER_FORWARDED: Final = frozenset(
    {
        "host",
        "forwarded",
        "content-length",
        "content-type",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "grpc-timeout",
        MESH_TIMEOUT_HEADER,
        MESH_SERVICE_HEADER,
        REQUEST_ID_HEADER,  # carried by mesh_client itself
        SHADOW_HEADER,  # (likewise)
    }
)
NEVER_FORWARDED_PREFIXES: Final = ("x-envoy-", "x-forwarded-", "proxy-", "x-mesh-")

#: Longest inbound deadline honoured (one day); larger values are treated as no deadline.
MAX_INBOUND_TIMEOUT_MS: Final = 86_400_000
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
_GRPC_UNITS: Final = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_BAD_VALUE = re.compile(r"[\r\n\x00]|^[ \t]|[ \t]$")
_SHADOW_ITEM: Final = (SHADOW_HEADER, "1")


def check_header_name(name: str, what: str = "context_headers") -> str:
    """A header name the registry may list in ``context_headers`` (lower-cased), else ValueError."""
    lower = name.lower()
    if not _HEADER_NAME.fullmatch(lower):
        raise ValueError(f"{what}: {name!r} is not a valid header name")
    if lower in NEVER_FORWARDED or lower.startswith(NEVER_FORWARDED_PREFIXES):
        raise ValueError(f"{what}: {name!r} must never be forwarded between services")
    return lower


def check_header_value(name: str, value: str) -> str:
    """Return ``value`` if it can go out as a header; raise ValueError (naming the header) if not."""
    if not isinstance(value, str):
        raise ValueError(f"header {name!r}: value must be a string, got {type(value).__name__}")
    if value.isascii() and value.isprintable() and (not value or (value[0] != " " and value[-1] != " ")):
        return value  # (the usual value: printable ASCII has no CR, LF, NUL or tab and is latin-1)
    if _BAD_VALUE.search(value):
        raise ValueError(f"header {name!r}: value contains CR, LF or NUL, or starts or ends with a blank: {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header {name!r}: value has characters outside latin-1: {value!r}") from None
    return value


@dataclass(frozen=True, slots=True)
class Inbound:
    """What this service keeps from the request it is handling."""

    request_id: str
    timeout: float | None = None
    context_headers: tuple[tuple[str, str], ...] = ()
    replaced_request_id: bool = False
    carrier: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: the request's routing overrides, when ``[overrides]`` accepts them (see mesh_client.overrides)
    overrides: Overrides | None = None
    #: the request arrived with ``x-mesh-shadow`` (it is a shadow copy): its calls make no copies
    #: and carry the header on
    shadow: bool = False


_inbound: contextvars.ContextVar[Inbound | None] = contextvars.ContextVar("mesh_client.inbound", default=None)


def current_inbound() -> Inbound | None:
    """The inbound request this code is handling (set by the middleware), or None."""
    return _inbound.get()


def current_request_id() -> str | None:
    """The inbound request's id, or None outside a request handled by the middleware."""
    inbound = _inbound.get()
    return inbound.request_id if inbound else None


def set_inbound(inbound: Inbound | None) -> contextvars.Token[Inbound | None]:
    return _inbound.set(inbound)


def reset_inbound(token: contextvars.Token[Inbound | None]) -> None:
    _inbound.reset(token)


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a ``grpc-timeout`` value (at most 8 digits and a unit), or None if invalid."""
    value = value.strip()
    if not 2 <= len(value) <= 9 or not value[:-1].isascii() or not value[:-1].isdigit():
        return None
    unit = _GRPC_UNITS.get(value[-1])
    if unit is None:
        return None
    seconds = int(value[:-1]) * unit
    return seconds if 0 < seconds <= MAX_INBOUND_TIMEOUT_MS / 1000 else None


def _parse_ms(value: str) -> float | None:
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    ms = int(value)
    return ms / 1000.0 if 0 < ms <= MAX_INBOUND_TIMEOUT_MS else None


def read_inbound(
    headers: Mapping[str, str],
    *,
    header_prefix: str,
    context_headers: Iterable[str],
    overrides: OverridesConfig | None = None,
) -> Inbound:
    """Keep what mesh_client trusts from an inbound request's headers (lower-case names).
    ``x-mesh-override`` is kept only as ``overrides`` (the registry's ``[overrides]``) allows.

    Never raises: a malformed value is ignored (the deadline) or replaced (the request id).
    """
    candidates = [
        _parse_ms(headers.get(f"{header_prefix}-expected-rq-timeout-ms", "")),
        _parse_ms(headers.get(MESH_TIMEOUT_HEADER, "")),
        parse_grpc_timeout(headers.get("grpc-timeout", "")),
    ]
    timeouts = [t for t in candidates if t is not None]
    request_id = headers.get(REQUEST_ID_HEADER, "")
    replaced = not _REQUEST_ID.fullmatch(request_id)
    if replaced:
        request_id = new_request_id()
    kept = []
    for name in context_headers:
        value = headers.get(name)
        if value is None:
            continue
        value = value.strip(" \t")
        if not value:
            continue  # nothing to carry on
        try:
            kept.append((name, check_header_value(name, value)))
        except ValueError:
            continue  # an unusable inbound value is dropped, never forwarded
    return Inbound(
        request_id=request_id,
        timeout=min(timeouts) if timeouts else None,
        context_headers=tuple(kept),
        replaced_request_id=replaced,
        carrier=headers,
        overrides=admit_inbound(headers, overrides),
        shadow=bool(headers.get(SHADOW_HEADER, "").strip()),
    )


# request ids come from a generator of mesh_client's own, seeded from os.urandom and reseeded in
# every forked child: the application seeding `random` must not make two processes' ids collide
_ids = random.Random()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_ids.seed)
#: a random hex digit -> the UUID variant digit (10xx in binary) it becomes, uniformly
_VARIANT_DIGIT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_request_id() -> str:
    """A fresh random UUID4, as text (without :func:`uuid.uuid4`'s system call per id: a request
    id must be unique, not secret). 32 random hex digits, of which the version digit becomes ``4``
    and the variant digit one of ``89ab``: 122 random bits, as in :func:`uuid.uuid4`."""
    h = _ids.getrandbits(128).to_bytes(16, "little").hex()  # (randbytes(16), without its frame)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:]}"


class _Setter(Setter[list[tuple[str, str]]]):
    """An OpenTelemetry ``Setter`` that collects (name, value) pairs."""

    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), value))


_SETTER: Final = _Setter()


#: (propagator, whether it is OpenTelemetry's default: W3C trace context and baggage only)
_default_textmap: tuple[object, bool] = (None, False)
_propagate_module: Any = None


def _propagate() -> Any:
    """``opentelemetry.propagate``, imported on first use (it reads ``OTEL_PROPAGATORS`` then)."""
    global _propagate_module
    if _propagate_module is None:
        from opentelemetry import propagate

        _propagate_module = propagate
    return _propagate_module


def _nothing_to_inject() -> bool:
    """Whether injecting the current OpenTelemetry context would add no header: the default
    propagators, no span context and no baggage (no SDK and no inbound trace). Saves the
    ``propagate.inject`` walk on every call of an application without OpenTelemetry."""
    global _default_textmap
    textmap = (_propagate_module or _propagate()).get_global_textmap()
    checked, is_default = _default_textmap
    if textmap is not checked:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        known = (TraceContextTextMapPropagator, W3CBaggagePropagator)
        parts = propagators_of(textmap)
        is_default = parts is not None and all(type(p) in known for p in parts)
        _default_textmap = (textmap, is_default)
    if not is_default:
        return False
    current = current_context()
    if not current:  # an empty context: no span, no baggage
        return True
    # the exact tests of TraceContextTextMapPropagator.inject and W3CBaggagePropagator.inject
    return _get_current_span(current).get_span_context() == _INVALID_SPAN_CONTEXT and not _get_all_baggage(current)


def outbound_headers(otel_context: Any | None = None) -> list[tuple[str, str]]:
    """The context headers for one logical call, validated.

    ``otel_context`` is the OpenTelemetry context to propagate (the client span's); by default the
    current one.
    """
    headers: list[tuple[str, str]] = []
    if otel_context is not None or not _nothing_to_inject():
        _propagate().inject(headers, context=otel_context, setter=_SETTER)
        for name, value in headers:
            check_header_value(name, value)
    inbound = _inbound.get()
    if inbound is None:
        headers.append((REQUEST_ID_HEADER, new_request_id()))  # well-formed by construction
        return headers
    carried = [(REQUEST_ID_HEADER, inbound.request_id), *inbound.context_headers]
    if inbound.shadow:
        carried.append(_SHADOW_ITEM)
    for name, value in carried:
        check_header_value(name, value)
    headers += carried
    return headers


def _extract(headers: Mapping[str, str], current: Any) -> Any:
    """``propagate.extract`` of the inbound headers, with ``tracestate`` read by the W3C rules of
    :mod:`mesh_client.tracestate` rather than OpenTelemetry's older ones: invalid headers dropped,
    repeated keys dropped, and keys the current grammar allows kept."""
    from opentelemetry import propagate, trace

    raw = headers.get(TRACESTATE_HEADER)
    if raw is None:
        return propagate.extract(headers, context=current)
    members = parse_tracestate(raw)
    carrier = {name: value for name, value in headers.items() if name != TRACESTATE_HEADER}
    if members:
        carrier[TRACESTATE_HEADER] = format_tracestate(members)
    extracted = propagate.extract(carrier, context=current)
    if not members:
        return extracted
    parent = trace.get_current_span(extracted).get_span_context()
    traceparent = headers.get("traceparent", "").strip(" \t")
    if not (parent.is_valid and parent.is_remote and traceparent[3:35] == f"{parent.trace_id:032x}"):
        return extracted  # no W3C parent (a tracestate without a valid traceparent is discarded)
    if list(parent.trace_state.items()) == members:
        return extracted
    parent = trace.SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=parent.trace_flags,
        trace_state=trace_state(members),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(parent), extracted)


def begin_request(
    headers: Mapping[str, str],
    *,
    header_prefix: str,
    context_headers: Iterable[str],
    overrides: OverridesConfig | None = None,
) -> Callable[[], None]:
    """Enter the context of an inbound request (lower-case header names): its deadline, request
    id, OpenTelemetry context and routing overrides (those ``overrides`` accepts; none else are
    in force inside the request). Returns the function that restores the previous state; call it
    in the same context (thread / task / ``contextvars.Context``) when the request ends.

    Never raises because of a header value.
    """
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    from .deadline import restore_deadline, shrink_deadline

    inbound = read_inbound(headers, header_prefix=header_prefix, context_headers=context_headers, overrides=overrides)
    inbound_token = _inbound.set(inbound)
    overrides_token = enter_request(inbound.overrides)
    deadline_token = shrink_deadline(inbound.timeout) if inbound.timeout is not None else None
    current = otel_context.get_current()
    if trace.get_current_span(current).get_span_context().is_valid:
        # an outer server instrumentation already extracted the caller's context and started
        # its span: keep it, so mesh calls become children of that span
        extracted = current
    else:
        try:
            extracted = _extract(headers, current)
        except Exception:  # a propagator choking on a hostile value must not fail the request
            extracted = current
    otel_token = otel_context.attach(extracted)

    def end() -> None:
        otel_context.detach(otel_token)
        if deadline_token is not None:
            restore_deadline(deadline_token)
        leave_request(overrides_token)
        _inbound.reset(inbound_token)

    return end
