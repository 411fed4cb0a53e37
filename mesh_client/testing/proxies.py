"""How the fake's proxies answer, apart from the state they keep: Envoy's router rules read from
a request's ``x-envoy-*`` headers (:class:`RouterRules`), what Envoy sends back once it stops
trying (:func:`envoy_answer`, :func:`local_reply`), HAProxy's own error pages
(:func:`haproxy_page`), and the timeouts of the rendered sidecar configs that the fake copies.
:class:`~mesh_client.testing.fake.FakeMesh` drives them."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Final

from ..wire import WireReply
from .calls import Headers
from .envoy_model import Upset, retried

__all__ = [
    "ENVOY_ROUTE_TIMEOUT",
    "HAPROXY_CONNECT_PAUSE",
    "HAPROXY_PAGES",
    "HAPROXY_SERVER_TIMEOUT",
    "UPSETS",
    "Answer",
    "RouterRules",
    "envoy_answer",
    "envoy_headers",
    "forwarded_by_envoy",
    "haproxy_page",
    "local_reply",
    "status_text",
    "thrift_local_reply",
]

#: HAProxy's own error pages (the text after the status line)
HAPROXY_PAGES: Final = {
    502: "The server returned an invalid or incomplete response.",
    503: "No server is available to handle this request.",
    504: "The server didn't respond in time.",
}
#: HAProxy's ``timeout connect`` in the rendered config: what a refused connection costs there
HAPROXY_CONNECT_PAUSE: Final = 0.25
HAPROXY_SERVER_TIMEOUT: Final = 30.0
#: Envoy's default route timeout, when the client sends none and the fake knows no registry (the
#: rendered route uses the service's own timeout)
ENVOY_ROUTE_TIMEOUT: Final = 15.0
#: a fake instance's fault as Envoy's router sees it (a timeout that reaches the retry rules is a
#: per-try timeout: the total one ends the call first)
UPSETS: Final[dict[str, Upset]] = {"refuse": "connect", "reset": "reset", "timeout": "per_try_timeout"}


@dataclass(frozen=True)
class Answer:
    """What one upstream try produced, with the time it took."""

    elapsed: float
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    fault: str | None = None  # "refuse", "reset", "timeout"
    thrift: Any = None


@dataclass(frozen=True)
class RouterRules:
    """What Envoy's router takes from a request's ``x-envoy-*`` headers."""

    limit: float  # the total timeout (inf: none)
    per_try: float | None
    retries: int
    tokens: frozenset[str]
    codes: frozenset[int]

    @classmethod
    def read(cls, sent: Headers, p: str, route_timeout: float) -> RouterRules:
        total = _ms(sent.get(f"{p}-upstream-rq-timeout-ms"))
        total = route_timeout if total is None else total
        per_try = _ms(sent.get(f"{p}-upstream-rq-per-try-timeout-ms"))
        if per_try is not None and total and per_try >= total:
            per_try = None  # Envoy ignores a per-try timeout that is not below the total
        tokens = frozenset(t.strip() for t in sent.get(f"{p}-retry-on", "").split(",") if t.strip())
        max_retries = _int(sent.get(f"{p}-max-retries"))
        retries = (max_retries if max_retries is not None else 1) if tokens else 0
        listed = (_int(c) for c in sent.get(f"{p}-retriable-status-codes", "").split(","))
        codes = frozenset(c for c in listed if c is not None)
        return cls(total if total else math.inf, per_try, retries, tokens, codes)

    def retries_after(self, answer: Answer, p: str) -> bool:
        """Whether retry-on covers what this try produced (:func:`.envoy_model.retried`: the
        fake's own reading of Envoy's rules, not the client's)."""
        if answer.fault is not None:
            return retried(self.tokens, upset=UPSETS[answer.fault])
        return retried(self.tokens, status=answer.status, headers=Headers(answer.headers), codes=self.codes, prefix=p)


def forwarded_by_envoy(sent: Headers, p: str) -> list[tuple[str, str]]:
    """The headers Envoy's router sends upstream: the client's without its ``x-envoy-*`` ones, and
    those Envoy adds (``x-forwarded-*``, ``x-envoy-internal``, an ``x-request-id`` when none came)."""
    forwarded = [(k, v) for k, v in sent.pairs() if not k.lower().startswith(p + "-")]
    forwarded += [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"), (f"{p}-internal", "true")]
    if "x-request-id" not in sent:
        forwarded.append(("x-request-id", str(uuid.uuid4())))
    return forwarded


def envoy_answer(answer: Answer, attempts: int, p: str) -> WireReply:
    """What Envoy sends back once it stops trying: the upstream's response, or its local reply."""
    if answer.fault is None:
        headers = [(k, v) for k, v in answer.headers if k.lower() != "server"]
        headers = [
            ("server", "envoy"),
            *headers,
            (f"{p}-upstream-service-time", str(round(answer.elapsed * 1000))),
            (f"{p}-attempt-count", str(attempts)),
        ]
        return WireReply(answer.status, tuple(headers), answer.body)
    if answer.fault == "timeout":
        return local_reply(504, "upstream request timeout", attempts, p)
    latest = "retried and the latest " if attempts > 1 else ""
    reason = "remote connection failure" if answer.fault == "refuse" else "connection termination"
    text = f"upstream connect error or disconnect/reset before headers. {latest}reset reason: {reason}"
    return local_reply(503, text, attempts, p)


def status_text(reply: WireReply, prefix: str) -> str:
    if reply.thrift_reply is not None and type(reply.thrift_reply).__name__ == "TApplicationException":
        return f"TApplicationException {getattr(reply.thrift_reply, 'message', '')!r}"
    headers = Headers(reply.headers)
    local = f"{prefix}-upstream-service-time" not in headers and headers.get("server") == "envoy"
    if local and reply.body and len(reply.body) < 200:
        return f"{reply.status} {reply.body.decode('latin-1')}"
    return str(reply.status)


def _ms(value: str | None) -> float | None:
    number = _int(value)
    return None if number is None else number / 1000


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else None


def envoy_headers(attempts: int, prefix: str, length: int = 0) -> tuple[tuple[str, str], ...]:
    headers = [] if not attempts else [(f"{prefix}-attempt-count", str(attempts))]
    if length:
        headers.append(("content-type", "text/plain"))
    headers += [("content-length", str(length)), ("date", formatdate(usegmt=True)), ("server", "envoy")]
    return tuple(headers)


def local_reply(status: int, text: str, attempts: int, prefix: str) -> WireReply:
    body = text.encode()
    return WireReply(status, envoy_headers(attempts, prefix, len(body)), body)


def haproxy_page(status: int) -> WireReply:
    from http.client import responses

    title = f"{status} {responses[status]}"
    body = f"<html><body><h1>{title}</h1>\n{HAPROXY_PAGES[status]}\n</body></html>\n".encode()
    headers = (("content-length", str(len(body))), ("cache-control", "no-cache"), ("content-type", "text/html"))
    return WireReply(status, headers, body)


def thrift_local_reply(message: str, *, unknown_method: bool = False) -> WireReply:
    """Envoy's thrift_proxy answering by itself: a ``TApplicationException`` (``UNKNOWN_METHOD``
    when it has no route, else ``INTERNAL_ERROR``)."""
    from thriftpy2.thrift import TApplicationException

    kind = TApplicationException.UNKNOWN_METHOD if unknown_method else TApplicationException.INTERNAL_ERROR
    return WireReply(200, thrift_reply=TApplicationException(kind, message))
