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
from typing import Any

import httpcore
import httpx
import requests.adapters

log = logging.getLogger("mesh_client.fork")

__all__ = ["forget_adapter_pools", "forget_transport_connections"]


def forget_adapter_pools(adapters: list[Any]) -> None:
    """Give each ``requests`` ``HTTPAdapter`` new, empty pools (its proxy pools too), as an
    unpickled adapter gets them: through the adapter's own ``__getstate__`` / ``__setstate__``,
    which keep its settings (pool sizes, ``max_retries``) and call its ``init_poolmanager``.
    Adapters of other kinds (mounted by the caller, a mocking library's) are left as they are."""
    for adapter in adapters:
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            # (requests defines both; its type stubs do not declare them)
            adapter.__setstate__(adapter.__getstate__())  # type: ignore[attr-defined]


def forget_transport_connections(transport: httpx.BaseTransport | httpx.AsyncBaseTransport) -> None:
    """Make an httpx ``HTTPTransport`` / ``AsyncHTTPTransport`` open new connections instead of
    the parent's. Other transports (mounted by the caller, ``MockTransport``...) are left as they
    are."""
    if not isinstance(transport, (httpx.HTTPTransport, httpx.AsyncHTTPTransport)):
        return
    pool = getattr(transport, "_pool", None)
    if _forget_pool_connections(pool):
        return
    if isinstance(transport, httpx.HTTPTransport):
        # an httpx/httpcore that keeps its pool otherwise: closing the pool (public) closes its
        # sockets (nothing is written on them) and leaves it usable for new connections
        transport.close()
        return
    log.warning(
        "mesh_client: cannot drop the connections this forked process inherited in %r (an httpcore "
        "whose pool is kept otherwise); make the async client after the fork",
        transport,
    )


def _forget_pool_connections(pool: Any) -> bool:
    """Empty an httpcore connection pool without its lock (which a thread of the parent may have
    held at the fork) and give it a new lock; False if it is not kept the way this expects (then
    nothing was changed).

    The one place that reads httpcore's private pool state (``_connections``, ``_requests``,
    ``_optional_thread_lock``), checked before it is changed."""
    if not isinstance(pool, (httpcore.ConnectionPool, httpcore.AsyncConnectionPool)):
        return False
    state = vars(pool)
    lock = state.get("_optional_thread_lock")
    if not (isinstance(state.get("_connections"), list) and isinstance(state.get("_requests"), list)) or lock is None:
        return False
    try:
        fresh_lock = type(lock)()
    except TypeError:
        return False
    pool._connections = []  # (collected with the pool's old list: their sockets closed, nothing sent)
    pool._requests = []
    pool._optional_thread_lock = fresh_lock
    return True
