"""mesh_client: a thin client for calling services through a service mesh.

Calls to registered services go through the local Envoy sidecar or the legacy SmartStack HAProxy
port, chosen per call by a LaunchDarkly flag, with the same timeout and retry behaviour on both
routes. See ``docs/`` for the guide; the names below are the public API.
"""

from __future__ import annotations

from . import asgi, wsgi
from .context import current_request_id
from .deadline import deadline, time_left
from .errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidServiceURL,
    MeshConnectError,
    MeshError,
    MeshTimeoutError,
    MeshTransportError,
    ThriftRoutingError,
)
from .flag_router import RouteDecision
from .info import CallInfo, call_info
from .mesh import Mesh
from .overrides import current_overrides, route_overrides
from .policy import CallOptions, CallPolicy, Route, call_options

__all__ = [
    "CallInfo",
    "CallOptions",
    "CallPolicy",
    "ConfigError",
    "DeadlineExceeded",
    "InvalidServiceURL",
    "Mesh",
    "MeshConnectError",
    "MeshError",
    "MeshTimeoutError",
    "MeshTransportError",
    "Route",
    "RouteDecision",
    "ThriftRoutingError",
    "__version__",
    "asgi",
    "call_info",
    "call_options",
    "current_overrides",
    "current_request_id",
    "deadline",
    "route_overrides",
    "time_left",
    "wsgi",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mesh-client")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            return "0+unknown"
    raise AttributeError(f"module 'mesh_client' has no attribute {name!r}")
