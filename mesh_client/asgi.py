"""Inbound ASGI middleware: the request's deadline, request id and trace context for the app.

::

    app = mesh_client.asgi.MeshMiddleware(app, mesh)

For HTTP and WebSocket scopes, the app (streaming responses included) runs with the inbound
deadline (``mesh_client.time_left()``), request id, OpenTelemetry context and (as the registry's
``[overrides]`` allows) routing overrides, restored when the app returns or raises. Lifespan and
other scopes pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from .context import begin_request
from .mesh import Mesh

__all__ = ["MeshMiddleware"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: headers whose repeated fields are joined into one value
JOINED: Final = frozenset({"traceparent", "tracestate", "baggage"})


def scope_headers(scope: Scope) -> dict[str, str]:
    """The request headers of an ASGI scope, lower-case names (latin-1 decoded, as HTTP says).

    The W3C trace context fields received several times (:data:`JOINED`) are one value, joined
    with ``,`` in order (RFC 9110 section 5.3), as WSGI servers join them: several ``tracestate``
    or ``baggage`` fields are one list, and two ``traceparent`` fields make an invalid one. Of any
    other header received several times the last one is kept."""
    headers: dict[str, str] = {}
    for pair in scope.get("headers") or ():
        try:
            name, value = pair
        except (TypeError, ValueError):
            continue  # a malformed entry from a misbehaving server is ignored
        if isinstance(name, (bytes, bytearray)) and isinstance(value, (bytes, bytearray)):
            key, text = bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers and key in JOINED else text
    return headers


class MeshMiddleware:
    """Wrap an ASGI app so each request runs with its inbound mesh context."""

    def __init__(self, app: ASGIApp, mesh: Mesh) -> None:
        self.app = app
        self.mesh = mesh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        config = self.mesh.config
        end = begin_request(
            scope_headers(scope),
            header_prefix=config.header_prefix,
            context_headers=config.context_headers,
            overrides=config.overrides,
        )
        try:
            await self.app(scope, receive, send)
        finally:
            end()
