"""The errors mesh_client raises, as one hierarchy.

::

    MeshError                      every error raised by mesh_client
    ├── ConfigError (ValueError)   the registry is invalid; names the key and the file
    ├── InvalidServiceURL (ValueError)
    │                              a registered service addressed in a way the mesh cannot route
    ├── InvalidOverride (ValueError)
    │                              a routing override (route_overrides) that cannot be sent
    ├── UnknownService (KeyError)  a service name the registry does not have
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

The combined classes the wrappers raise are defined statically, one per pair of a mesh class
and a library class a wrapper can raise: :mod:`mesh_client.http.requests_errors`,
:mod:`mesh_client.http.httpx_errors` and :mod:`mesh_client.thrift.errors` (named
``<mesh class>_<library class>``, e.g. ``MeshConnectError_ConnectTimeout``). A library class
without one (a subclass of your own raised through a custom transport) gets a class built at run
time, ``MeshConnectError[module.Class]``.

HTTP statuses are never turned into exceptions: a 503 from Envoy is a response, classified in
``call_info(response).envoy_error``; call ``raise_for_status()`` as usual.

Pickling: every ``MeshError`` survives ``pickle`` (a ``ProcessPoolExecutor`` worker raising it,
``multiprocessing``, a task queue) with its class (so ``isinstance`` of the mesh class and of the
library's class still hold), its message and its attributes, ``info`` (the
:class:`~mesh_client.CallInfo`) included. The library's ``request`` / ``response`` attributes
travel when they can be pickled; one that cannot (a request whose body is a generator or an open
file, a hook that is a lambda) arrives as None. As for any exception, the cause chain
(``__cause__``) and the traceback stay behind. No ``__init__`` runs when an error is unpickled.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from .info import CallInfo
    from .steps import Fail

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "InvalidOverride",
    "InvalidServiceURL",
    "MeshConnectError",
    "MeshError",
    "MeshTimeoutError",
    "MeshTransportError",
    "ThriftRoutingError",
]


class MeshError(Exception):
    """Base class of every error raised by mesh_client."""

    def __reduce__(self) -> tuple[Any, ...]:
        state = _portable_state(self)
        if type(self) in _built:  # (a class built at run time has no name to import it by)
            return (_restore_combined, (*_pairs[type(self)], self.args, state))
        return (_restore, (type(self), self.args, state))


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


class UnknownService(MeshError, KeyError):
    """A service name the registry does not have (``mesh.route_for("nobody")``,
    ``mesh.shadow_stats(...)``, ``mesh.thrift_client(..., "nobody")``). A ``KeyError`` as well, so
    code written against earlier versions keeps working; its message is the plain sentence."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidOverride(MeshError, ValueError):
    """A routing override that cannot be sent: a service or variant name outside the registry's
    name rules, or more overrides (or a longer ``x-mesh-override`` header) than a hop accepts.
    Raised by :func:`mesh_client.route_overrides` before anything is sent (see docs/overrides.md).
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


_E = TypeVar("_E", bound=type[BaseException])

#: (mesh class, library class) -> the class that is both
_combined: dict[tuple[type[MeshTransportError], type[BaseException]], type[BaseException]] = {}
#: each combined class -> (its mesh class, its library class)
_pairs: dict[type[BaseException], tuple[type[MeshTransportError], type[BaseException]]] = {}
#: the combined classes built at run time (rebuilt from their pair when unpickled)
_built: set[type[BaseException]] = set()
#: attributes of the libraries' exceptions that travel only when they can be pickled
_MAYBE_PICKLABLE = ("request", "response", "_request", "_response")


def combined(cls: _E) -> _E:
    """Register a statically defined combined class, ``class X(MeshClass, LibraryClass)``, as
    the one :func:`combined_class` returns for that pair."""
    mesh_cls, native = (*cls.__bases__, None)[:2]
    if not (
        isinstance(mesh_cls, type)
        and issubclass(mesh_cls, MeshTransportError)
        and isinstance(native, type)
        and issubclass(native, BaseException)
        and not issubclass(native, MeshError)
        and len(cls.__bases__) == 2
    ):
        raise TypeError(f"{cls.__qualname__} must derive from a MeshTransportError class, then a library's class")
    if _combined.setdefault((mesh_cls, native), cls) is not cls:
        raise TypeError(f"{mesh_cls.__name__} and {native.__qualname__} are combined already")
    _pairs[cls] = (mesh_cls, native)
    return cls


def combined_class(mesh_cls: type[MeshTransportError], native: type[BaseException]) -> type[BaseException]:
    """The class that is both ``mesh_cls`` and the wrapped library's ``native`` class: the static
    one registered with :func:`combined`, or one built (once) at run time."""
    key = (mesh_cls, native)
    cls = _combined.get(key)
    if cls is None:
        name = f"{mesh_cls.__name__}[{native.__module__}.{native.__qualname__}]"
        built = type(name, (mesh_cls, native), {"__module__": __name__})
        _pairs[built] = key
        _built.add(built)
        cls = _combined.setdefault(key, built)  # (atomic: a class another thread built first wins)
    return cls


def combination(cls: type[BaseException]) -> tuple[type[MeshTransportError], type[BaseException]] | None:
    """(the mesh class, the library's class) of a combined class; None for any other class."""
    return _pairs.get(cls)


def _portable_state(err: BaseException) -> dict[str, Any]:
    state = dict(getattr(err, "__dict__", {}))
    for name in _MAYBE_PICKLABLE:
        if state.get(name) is not None:
            try:
                pickle.dumps(state[name])
            except Exception:
                state[name] = None
    return state


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    """An unpickled error: its class, arguments and attributes, without calling ``__init__``
    (the libraries' exceptions take other arguments than the message they were given)."""
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


def _restore_combined(
    mesh_cls: type[MeshTransportError], native: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    return _restore(combined_class(mesh_cls, native), args, state)


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


def raise_failure(
    failure: Fail,
    native: Callable[[type[MeshTransportError], str], BaseException],
    *,
    keep_cause: bool = True,
) -> NoReturn:
    """Raise the failed call ``failure`` the way its wrapper's library would, combined with the
    mesh class (the one failure-to-exception step of every wrapper).

    The library's exception is the one the attempt caught (``failure.cause``) when there is one and
    ``keep_cause`` holds; otherwise ``native(mesh_class, message)`` makes it (a deadline that
    passed before anything was sent, a timeout the core decided, a wrapper whose library raises
    its own classes). The cause stays visible in tracebacks.
    """
    cause = failure.cause
    base = cause if keep_cause and cause is not None else native(failure.error, failure.message)
    raise as_mesh_error(failure.error, base, failure.message, failure.info) from cause
