"""The errors mesh_client raises, as one hierarchy.

::

    MeshError                      every error raised by mesh_client
    ├── ConfigError (ValueError)   the registry is invalid; names the key and the file
    ├── InvalidServiceURL (ValueError)
    │                              a registered service addressed in a way the mesh cannot route
    └── MeshTransportError         a call to a registered service failed below HTTP
        ├── MeshConnectError       no connection could be made (nothing was sent)
        ├── MeshTimeoutError       no answer in time (the request may have been processed)
        │   └── DeadlineExceeded   the caller's deadline had passed; nothing was sent
        └── ThriftRoutingError     Envoy's thrift_proxy answered a call itself (no healthy
                                   upstream, no route...); says whether it reached the server

Drop-in promise: a transport error raised by a wrapper is an instance of *both* the mesh class
and the wrapped library's own exception class (the exact class the library raised, e.g.
``requests.ReadTimeout`` or ``httpx.ConnectError``). Existing ``except requests.Timeout`` or
``except httpx.TimeoutException`` code keeps working, and new code can catch ``MeshError``.

HTTP statuses are never turned into exceptions: a 503 from Envoy is a response, classified in
``call_info(response).envoy_error``; call ``raise_for_status()`` as usual.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .info import CallInfo

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "InvalidServiceURL",
    "MeshConnectError",
    "MeshError",
    "MeshTimeoutError",
    "MeshTransportError",
    "ThriftRoutingError",
]


class MeshError(Exception):
    """Base class of every error raised by mesh_client."""


class ConfigError(MeshError, ValueError):
    """The mesh registry is invalid.

    ``key`` is the dotted key at fault (``services.users.timeout``) and ``source`` the file it
    came from (or ``"<dict>"``); both are part of the message.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        self.key = key
        self.source = source
        where = ""
        if key is not None:
            where = f"{key}: "
        origin = f" (in {source})" if source else ""
        super().__init__(f"{where}{message}{origin}")


class InvalidServiceURL(MeshError, ValueError):
    """A registered service was addressed with a URL the mesh cannot route.

    Registered services are called as ``http://<service>/path``: no port, no user info, no
    ``https`` (the sidecar and HAProxy take care of transport security between hosts).
    """


class MeshTransportError(MeshError):
    """A call to a registered service failed below HTTP (connect, timeout, reset).

    ``info`` is the :class:`~mesh_client.CallInfo` of the call (service, route, attempts, ...).
    """

    info: CallInfo | None = None


class MeshConnectError(MeshTransportError):
    """No connection could be made to the route's proxy; nothing was sent."""


class MeshTimeoutError(MeshTransportError):
    """The call's timeout passed without an answer; the upstream may have processed it."""


class DeadlineExceeded(MeshTimeoutError):
    """The caller's deadline had already passed, so nothing was sent."""


class ThriftRoutingError(MeshTransportError):
    """Envoy's thrift_proxy answered a Thrift call with its own ``TApplicationException``.

    Raised as an instance of both this class and thriftpy2's ``TApplicationException``.
    ``kind`` is ``"no_healthy_upstream"``, ``"upstream_reset"`` (connection failure),
    ``"no_route"``, ``"no_cluster"`` or ``"overloaded"``; ``may_have_reached_server`` tells whether
    the server could have run the call (only ``upstream_reset`` leaves that open: Envoy gives the
    same answer when the server read the call and then closed the connection).
    """

    kind: str = ""
    may_have_reached_server: bool = True


_combined: dict[tuple[type[MeshTransportError], type[BaseException]], type[BaseException]] = {}
_combined_lock = threading.Lock()


def combined_class(mesh_cls: type[MeshTransportError], native: type[BaseException]) -> type[BaseException]:
    """The class that is both ``mesh_cls`` and the wrapped library's ``native`` class (cached)."""
    key = (mesh_cls, native)
    cls = _combined.get(key)
    if cls is None:
        with _combined_lock:
            cls = _combined.get(key)
            if cls is None:
                name = f"{mesh_cls.__name__}[{native.__module__}.{native.__qualname__}]"
                cls = type(name, (mesh_cls, native), {"__module__": __name__})
                _combined[key] = cls
    return cls


def as_mesh_error(
    mesh_cls: type[MeshTransportError], native: BaseException, message: str, info: CallInfo
) -> BaseException:
    """Turn the wrapped library's exception ``native`` into one that is also ``mesh_cls``.

    The new exception keeps every attribute of the original (``request``, ``response``...), so
    handlers that read them keep working; its message says what mesh_client knows. Raise it
    ``from native`` so the original stays visible in tracebacks.
    """
    cls = combined_class(mesh_cls, type(native))
    err = cls.__new__(cls)
    err.__dict__.update(getattr(native, "__dict__", {}))
    err.args = (message,)
    assert isinstance(err, MeshTransportError)
    err.info = info
    return err
