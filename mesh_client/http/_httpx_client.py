"""The clients ``mesh.httpx_client()`` / ``mesh.httpx_async_client()`` return.

An ``httpx.Client`` (``AsyncClient``) with a :class:`~mesh_client.http.httpx.MeshTransport`
(:class:`~mesh_client.http.httpx.AsyncMeshTransport`) as its transport and the mounts of
:mod:`mesh_client.http._mounts`, whose ``send``:

- lets the transport know when the caller reads the whole body at once (``stream=False``), so it
  reads it within the call's time;
- shows, as ``response.request`` of a mesh call (and of each response in its ``history``), the
  request as it went out: the caller's URL, with the headers the answering attempt sent
  (``x-request-id``, trace context, the policy's ``x-envoy-*`` on the Envoy route; without the
  caller's headers that were dropped). httpx itself follows redirects from the caller's request,
  so nothing the mesh added reaches a redirect's target. Event hooks see the caller's request.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from .._compat import httpx as httpx_compat
from ..wrapping import CallStarter
from ._httpx_attempt import SENT_KEY
from ._httpx_body import WHOLE_BODY
from ._mounts import AsyncMeshFirst, MeshFirst, client_mounts
from .httpx import AsyncMeshTransport, MeshTransport

__all__ = ["build_async_client", "build_client", "client_kwargs"]

#: Client keyword arguments that configure the default transport rather than the client.
_TRANSPORT_KWARGS: Final = ("verify", "cert", "trust_env", "http1", "http2", "limits")


def _show_sent_earlier(response: httpx.Response) -> None:
    """Show the request as sent for each response in ``response.history`` (redirects), as ``send``
    shows it for ``response`` itself."""
    for each in response.history:
        sent = each.extensions.pop(SENT_KEY, None)
        if isinstance(sent, httpx.Request):
            each.request = httpx_compat.copy_request(each.request, sent.headers)


class _Client(httpx.Client):
    """The client of ``mesh.httpx_client()`` (see the module docs)."""

    def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        token = WHOLE_BODY.set(not stream)
        try:
            response = super().send(request, stream=stream, **kwargs)
        finally:
            WHOLE_BODY.reset(token)
        # the caller's request (URL, body, extensions) with the headers the answer's attempt sent
        sent = response.extensions.pop(SENT_KEY, None)
        if isinstance(sent, httpx.Request):
            response.request = httpx_compat.copy_request(response.request, sent.headers)
        if response.history:
            _show_sent_earlier(response)
        return response


class _AsyncClient(httpx.AsyncClient):
    """The asyncio twin of :class:`_Client`."""

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        token = WHOLE_BODY.set(not stream)
        try:
            response = await super().send(request, stream=stream, **kwargs)
        finally:
            WHOLE_BODY.reset(token)
        # the caller's request (URL, body, extensions) with the headers the answer's attempt sent
        sent = response.extensions.pop(SENT_KEY, None)
        if isinstance(sent, httpx.Request):
            response.request = httpx_compat.copy_request(response.request, sent.headers)
        if response.history:
            _show_sent_earlier(response)
        return response


def build_client(mesh: CallStarter, kwargs: dict[str, Any]) -> httpx.Client:
    """``httpx.Client(**kwargs)`` with a :class:`MeshTransport` as its transport (see
    :func:`client_kwargs`)."""
    return _Client(**client_kwargs(mesh, kwargs))


def build_async_client(mesh: CallStarter, kwargs: dict[str, Any]) -> httpx.AsyncClient:
    """The asyncio twin of :func:`build_client`."""
    return _AsyncClient(**client_kwargs(mesh, kwargs, asynchronous=True))


def client_kwargs(mesh: CallStarter, kwargs: dict[str, Any], *, asynchronous: bool = False) -> dict[str, Any]:
    """The arguments of an ``httpx.Client`` (``AsyncClient``) made with ``kwargs`` whose mesh
    calls go through the mesh: a (:class:`AsyncMeshTransport`) :class:`MeshTransport` wrapping the
    caller's ``transport`` or the default one, and the mounts of :mod:`mesh_client.http._mounts`
    (the environment's proxies as httpx would mount them, the caller's mounts, the services')."""
    kwargs = dict(kwargs)
    inner = kwargs.pop("transport", None)
    inner_cls: Any = httpx.AsyncHTTPTransport if asynchronous else httpx.HTTPTransport
    settings = {k: kwargs[k] for k in _TRANSPORT_KWARGS if k in kwargs}
    mesh_cls: Any = AsyncMeshTransport if asynchronous else MeshTransport
    transport = mesh_cls(mesh, inner) if inner is not None else mesh_cls(mesh, **settings)
    mounts = client_mounts(
        mesh,
        transport,
        kwargs,
        given_transport=inner is not None,
        proxy_transport=lambda url: inner_cls(proxy=url, **settings),
        first_cls=AsyncMeshFirst if asynchronous else MeshFirst,
    )
    return {**kwargs, "transport": transport, "mounts": mounts}
