"""What a forked child does to the connection pools of the HTTP clients it inherits (see
:mod:`mesh_client.fork`): it never uses a connection the parent made.

A pooled keep-alive connection is one socket; after a fork, parent and child both hold it, and
two processes writing requests on one socket read each other's responses. So the child drops
the pools it inherited. The sockets in them are closed in the child only when the dropped pools
are collected: that closes a file descriptor, writes nothing (no TLS ``close_notify``, no HTTP/2
``GOAWAY``, no ``shutdown()``), and leaves the parent's copy of each connection open and usable.
Nothing is awaited: an asyncio connection belongs to the parent's event loop, which the child
must not touch (its epoll set is shared with the parent's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import requests.adapters

from .._compat import httpx as httpx_compat

log = logging.getLogger("mesh_client.fork")

__all__ = ["forget_adapter_pools", "forget_transport_connections"]

_T = TypeVar("_T", httpx.BaseTransport, httpx.AsyncBaseTransport)


def forget_adapter_pools(adapters: list[Any]) -> None:
    """Give each ``requests`` ``HTTPAdapter`` new, empty pools (its proxy pools too), as an
    unpickled adapter gets them: through the adapter's own ``__getstate__`` / ``__setstate__``,
    which keep its settings (pool sizes, ``max_retries``) and call its ``init_poolmanager``.
    Adapters of other kinds (mounted by the caller, a mocking library's) are left as they are."""
    for adapter in adapters:
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            # (requests defines both; its type stubs do not declare them)
            adapter.__setstate__(adapter.__getstate__())  # type: ignore[attr-defined]


def forget_transport_connections(transport: _T, remake: Callable[[], _T] | None = None) -> _T:
    """Make an httpx ``HTTPTransport`` / ``AsyncHTTPTransport`` open new connections instead of
    the parent's; return the transport to use from now on. Other transports (mounted by the
    caller, ``MockTransport``...) are left as they are.

    Its pool is emptied in place (:func:`mesh_client._compat.httpx.forget_pool_connections`).
    When that cannot be done, the public ways: a new transport from ``remake`` (which makes one
    like it: a mesh transport has it when it made its transport itself), the old one left to be
    collected, which closes its sockets and writes nothing; else a sync transport's ``close()``
    (which closes them too, but takes the pool's lock: a thread of the parent that held it at the
    fork would leave the child waiting), and for an async one a warning (closing it would await on
    the parent's event loop)."""
    if not isinstance(transport, (httpx.HTTPTransport, httpx.AsyncHTTPTransport)):
        return transport
    if httpx_compat.forget_pool_connections(transport):
        return transport
    if remake is not None:
        return remake()
    if isinstance(transport, httpx.HTTPTransport):
        transport.close()
        return transport
    log.warning(
        "mesh_client: cannot drop the connections this forked process inherited in %r (an httpcore "
        "whose pool is kept otherwise); make the async client after the fork",
        transport,
    )
    return transport
