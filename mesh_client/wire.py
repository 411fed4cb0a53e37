"""The seam between the wrappers and the network: one attempt out, one reply (or failure) back.

Every wrapper (requests adapter, httpx transports, Thrift client) sends each attempt the core
plans over real sockets, unless a :class:`Wire` is installed: then it hands the attempt, as the
proxy would receive it (address, final headers, body), to ``wire.exchange`` and turns the
:class:`WireReply` or :class:`WireFailure` back into its library's own response or exception.
Everything else (routing, policy, headers, retries, errors, ``call_info``) runs unchanged.

``mesh_client.testing``'s ``fake_mesh`` is such a wire: an in-process Envoy and HAProxy. A wire
may wait on :mod:`mesh_client.clock` to model time; it must not block for real.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .policy import Route
from .registry import Address
from .steps import Attempt, Failure

__all__ = ["ThriftCall", "Wire", "WireFailure", "WireReply", "WireRequest", "current_wire", "use_wire"]


@dataclass(frozen=True, slots=True)
class ThriftCall:
    """The Thrift call inside a :class:`WireRequest`: the thriftpy2 service, the method and its
    argument struct (as the server would decode them)."""

    service: Any
    method: str
    args: Any
    oneway: bool = False


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One attempt as it leaves the client for a local proxy."""

    #: the registered service called
    service: str
    #: the route of this attempt (and ``address``: the Envoy listener or the service's HAProxy port)
    route: Route
    address: Address
    #: the client's attempt number (1-based) and its own timeout for this attempt, in seconds
    attempt: int
    timeout: float
    #: HTTP method, or the Thrift method name
    method: str
    #: path and query (HTTP); the Thrift method name as sent (Thrift)
    target: str
    #: headers as sent, in order (THeader headers for Thrift; none for framed Thrift)
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    thrift: ThriftCall | None = None
    #: the call the attempt belongs to: every attempt of one call has the same number
    call: int = 0
    #: the registry's ``mesh.header_prefix`` (``x-envoy`` unless the sidecar is configured otherwise)
    header_prefix: str = "x-envoy"

    @classmethod
    def of(
        cls,
        attempt: Attempt,
        *,
        service: str,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes = b"",
        thrift: ThriftCall | None = None,
        header_prefix: str = "x-envoy",
    ) -> WireRequest:
        return cls(
            service=service,
            route=attempt.route,
            address=attempt.address,
            attempt=attempt.number,
            timeout=attempt.timeout,
            method=method,
            target=target,
            headers=headers,
            body=body,
            thrift=thrift,
            call=attempt.call,
            header_prefix=header_prefix,
        )


@dataclass(frozen=True, slots=True)
class WireReply:
    """What the proxy answered: an HTTP response, or for Thrift the decoded reply (the result
    struct, or a ``TApplicationException``) in ``thrift_reply``."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    reason: str = ""
    thrift_reply: Any = None


@dataclass(frozen=True, slots=True)
class WireFailure:
    """The attempt failed below HTTP: ``kind`` says whether anything can have been sent."""

    kind: Failure
    message: str


class Wire(Protocol):
    """Carries attempts instead of the network (see the module docs)."""

    def exchange(self, request: WireRequest) -> WireReply | WireFailure: ...


_installed: Wire | None = None


def current_wire() -> Wire | None:
    """The installed wire, or None: the wrappers use the network."""
    return _installed


@contextlib.contextmanager
def use_wire(wire: Wire) -> Iterator[Wire]:
    """Send every mesh call's attempts (of every :class:`~mesh_client.Mesh` in the process) to
    ``wire`` for the duration of the block. Calls to hosts outside the mesh are not affected."""
    global _installed
    previous, _installed = _installed, wire
    try:
        yield wire
    finally:
        _installed = previous
