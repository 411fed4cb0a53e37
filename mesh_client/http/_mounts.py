"""The mounts of a client from ``mesh.httpx_client()`` / ``mesh.httpx_async_client()``: the
proxies httpx would take from the environment, the caller's own mounts, and, whenever there is any
mount, one for each registered HTTP service's host that takes its calls to the mesh transport.

httpx tries a client's mounts before its ``transport``, most specific pattern first; a pattern
with a host (``all://users``) comes before one with a scheme only (``http://``, ``all://``), so
neither a proxy from the environment, nor ``proxy=``, nor a caller's ``mounts={"http://": ...}``
takes a mesh call out of the mesh. A caller's mount whose own host pattern covers a service name
(``all://users``, ``all://*.internal``) is wrapped so that the service's calls still go to the mesh
and every other request to the caller's transport.
"""

from __future__ import annotations

from typing import Any

import httpx

from ..wrapping import CallStarter
from ._env_proxies import environment_proxies
from ._forwarding import ForwardsAsyncContext, ForwardsContext

__all__ = ["AsyncMeshFirst", "MeshFirst", "client_mounts"]


def _is_mesh(mesh: CallStarter, request: httpx.Request) -> bool:
    url = request.url
    return mesh.http_service(url.scheme, url.host, url.port, bool(url.userinfo)) is not None


class MeshFirst(ForwardsContext, httpx.BaseTransport):
    """A mount: mesh calls to the client's mesh transport, everything else to ``other`` (None: the
    mount of a service's host, which takes mesh calls only). The mesh transport is the client's
    own ``transport``, entered and closed by the client as such: only ``other`` is, here."""

    def __init__(
        self, mesh: CallStarter, mesh_transport: httpx.BaseTransport, other: httpx.BaseTransport | None
    ) -> None:
        self.mesh, self.mesh_transport, self.other = mesh, mesh_transport, other

    def _forward_to(self) -> httpx.BaseTransport | None:
        return self.other

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.other is None or _is_mesh(self.mesh, request):
            return self.mesh_transport.handle_request(request)
        return self.other.handle_request(request)


class AsyncMeshFirst(ForwardsAsyncContext, httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`MeshFirst`."""

    def __init__(
        self, mesh: CallStarter, mesh_transport: httpx.AsyncBaseTransport, other: httpx.AsyncBaseTransport | None
    ) -> None:
        self.mesh, self.mesh_transport, self.other = mesh, mesh_transport, other

    def _forward_to(self) -> httpx.AsyncBaseTransport | None:
        return self.other

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.other is None or _is_mesh(self.mesh, request):
            return await self.mesh_transport.handle_async_request(request)
        return await self.other.handle_async_request(request)


def client_mounts(
    mesh: CallStarter,
    mesh_transport: Any,
    kwargs: dict[str, Any],
    *,
    given_transport: bool,
    proxy_transport: Any,
    first_cls: Any,
) -> dict[str, Any]:
    """The ``mounts`` for a client made with ``kwargs`` (its ``mounts`` popped from them).

    ``proxy_transport(url)`` makes a transport through a proxy (with the client's transport
    settings), as httpx does for the environment's proxies: they are read, as httpx reads them,
    when ``trust_env`` is on and the caller gave no ``transport``."""
    mounts: dict[str, Any] = {}
    if kwargs.get("trust_env", True) and not given_transport:
        for pattern, url in environment_proxies().items():
            mounts[pattern] = None if url is None else proxy_transport(url)
    names = [name for name, svc in mesh.config.services.items() if svc.protocol == "http"]
    for pattern, own in (kwargs.pop("mounts", None) or {}).items():
        covers = own is not None and any(_covers(pattern, name) for name in names)
        mounts[pattern] = first_cls(mesh, mesh_transport, own) if covers else own
    if mounts or kwargs.get("proxy") is not None:  # (only then: every mount is tried on every request)
        service_mount = first_cls(mesh, mesh_transport, None)
        for name in names:
            mounts.setdefault(f"all://{name}", service_mount)
    return mounts


def _covers(pattern: str, name: str) -> bool:
    """Whether a mount pattern with a host part matches the host ``name`` (httpx's rules: ``*.d``
    subdomains of d, ``*d`` d and its subdomains); a pattern with a scheme only is left to the
    services' own mounts, which come before it."""
    host = pattern.partition("://")[2].partition("/")[0]
    if host.startswith("["):  # an IPv6 address: never a service's name
        return False
    host = host.rpartition(":")[0] if ":" in host else host
    host = host.lower()
    if not host:
        return False
    if host.startswith("*."):
        return name.endswith(host[1:])
    if host.startswith("*"):
        return name == host[1:] or name.endswith("." + host[1:])
    return name == host
