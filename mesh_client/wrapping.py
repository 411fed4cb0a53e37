"""What a wrapper needs from a mesh: the :class:`CallStarter` protocol.

A wrapper (the requests adapter, the httpx transports, the Thrift client) turns a library's
request into calls of the I/O-free core. From the mesh it needs four things: the registry, which
URL names a registered service, a :class:`~mesh_client.core.CallRun` for each call, and to be
closed with the mesh. :class:`~mesh_client.Mesh` provides them; wrappers are typed against this
protocol, not against ``Mesh``, so they do not import :mod:`mesh_client.mesh` (which imports
them to build its clients) and a test can drive a wrapper with any object that starts calls.

These methods are the wrappers' interface, not the application's: application code makes
clients with ``mesh.requests_session()``, ``mesh.httpx_client()`` and the rest, and reads
``mesh.route_for(...)``. They may change between releases without notice (the API reference
leaves them out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .core import CallRun
    from .policy import CallOptions
    from .registry import MeshConfig, ServiceConfig

__all__ = ["CallStarter"]

C = TypeVar("C")


class CallStarter(Protocol):
    """The part of a :class:`~mesh_client.Mesh` its wrappers use."""

    @property
    def config(self) -> MeshConfig:
        """The registry."""
        ...

    def http_service(self, scheme: str, host: str, port: int | None, has_userinfo: bool) -> ServiceConfig | None:
        """The registered HTTP service a URL addresses (None: another host); raises
        :class:`~mesh_client.InvalidServiceURL` for a registered name addressed wrongly."""
        ...

    def start_call(
        self,
        service: ServiceConfig,
        method: str,
        extra: CallOptions | None = None,
        replayable: bool = True,
        source: object = None,
    ) -> CallRun[Any]:
        """The run of one call to ``service`` (policy, route, context headers decided)."""
        ...

    def track_client(self, client: C) -> C:
        """Close ``client`` when the mesh closes; returns it."""
        ...
