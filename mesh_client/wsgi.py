"""Inbound WSGI middleware: the request's deadline, request id and trace context for the app.

::

    app.wsgi_app = mesh_client.wsgi.MeshMiddleware(app.wsgi_app, mesh)   # Flask

Inside the request (streaming responses included) ``mesh_client.time_left()`` is the time the
caller gave (``x-envoy-expected-rq-timeout-ms``, ``grpc-timeout`` or ``x-mesh-timeout-ms``), mesh
calls carry the inbound ``x-request-id`` and continue the inbound trace, and the request's routing
overrides are in force when the registry's ``[overrides]`` accepts them (see
:mod:`mesh_client.overrides`). Everything is set in a
private ``contextvars.Context`` that the app and its response iterator run in, so nothing leaks
into the server's thread, whatever the app does.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .context import begin_request
from .mesh import Mesh

__all__ = ["MeshMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def environ_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The request headers of a WSGI environ, lower-case names."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].lower().replace("_", "-")] = value
    return headers


class MeshMiddleware:
    """Wrap a WSGI app so each request runs with its inbound mesh context."""

    def __init__(self, app: WSGIApp, mesh: Mesh) -> None:
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        config = self.mesh.config
        ctx = contextvars.copy_context()
        end = ctx.run(
            begin_request,
            environ_headers(environ),
            header_prefix=config.header_prefix,
            context_headers=config.context_headers,
            overrides=config.overrides,
        )
        try:
            result = ctx.run(self.app, environ, start_response)
        except BaseException:
            ctx.run(end)
            raise
        return _InContext(result, ctx, end)


class _InContext:
    """The app's response iterable, iterated and closed inside the request's context."""

    def __init__(self, result: Iterable[bytes], ctx: contextvars.Context, end: Callable[[], None]) -> None:
        self._result = result
        self._ctx = ctx
        self._end: Callable[[], None] | None = end
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __len__(self) -> int:
        # lets a server see a one-chunk response (and set Content-Length) as with the bare app
        return len(self._result)  # type: ignore[arg-type]  # TypeError when it has no len, as PEP 3333 expects

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._ctx.run(iter, self._result)
        return self._ctx.run(next, self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                self._ctx.run(close)
        finally:
            end, self._end = self._end, None
            if end is not None:
                self._ctx.run(end)
