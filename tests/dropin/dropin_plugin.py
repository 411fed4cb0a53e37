"""pytest plugin for running requests' and httpx's own test suites (see run.py).

Always: a connect guard. Some of the suites' tests aim at unroutable or public addresses; in this
process every connection to a destination other than loopback is refused before anything is sent
(``socket.socket.connect`` / ``connect_ex``, ``socket.create_connection``), and names other than
``localhost`` are not looked up (``socket.getaddrinfo``). A refused test fails alike in both runs.

With ``--mesh-dropin``: ``requests.Session``, ``httpx.Client`` and ``httpx.AsyncClient`` (and the
names requests' and httpx's module-level functions use for them) are replaced by the mesh clients
of a registry whose services are hosts the suites never call, so every request the suites make is
an ordinary (non-mesh) request through a mesh client.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import pytest

GUARD_MESSAGE = "dropin guard: connections leave loopback in no test run here"
REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "dropin", "envoy_http": "127.0.0.1:9", "default_route": "envoy"},
    "flags": {"source": "none"},
    "services": {"mesh-dropin-users": {"haproxy": "127.0.0.1:9"}, "mesh-dropin-orders": {"haproxy": "127.0.0.1:9"}},
}

_ORIGINALS: dict[str, Any] = {}
_MESH: Any = None
#: mesh clients made in the library's place (a mesh run that made none proves nothing)
MADE: list[str] = []


def is_loopback(host: object) -> bool:
    """Whether ``host`` (an address or a name) stays on this machine."""
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].rstrip(".").lower()
    if name in ("localhost", "") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _check(address: Any) -> None:
    if isinstance(address, tuple) and len(address) >= 2 and not is_loopback(address[0]):
        raise OSError(errno.ENETUNREACH, f"{GUARD_MESSAGE} (refused {address[0]}:{address[1]})")


def install_guard() -> None:
    """Refuse non-loopback destinations in this process (idempotent)."""
    if _ORIGINALS:
        return
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo
    _ORIGINALS.update(
        connect=connect, connect_ex=connect_ex, create_connection=create_connection, getaddrinfo=getaddrinfo
    )

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return connect_ex(self, address)

    def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        _check(address)
        return create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode("idna") if isinstance(host, bytes) else host
        if text is not None and not is_loopback(text):
            try:
                ipaddress.ip_address(str(text).strip("[]").split("%", 1)[0])
            except ValueError:  # a name: not looked up (an address literal needs no lookup)
                raise socket.gaierror(socket.EAI_NONAME, f"{GUARD_MESSAGE} (no lookup of {text!r})") from None
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.create_connection = guarded_create_connection  # type: ignore[assignment]
    socket.getaddrinfo = guarded_getaddrinfo


def remove_guard() -> None:
    if not _ORIGINALS:
        return
    socket.socket.connect = _ORIGINALS.pop("connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = _ORIGINALS.pop("connect_ex")  # type: ignore[method-assign]
    socket.create_connection = _ORIGINALS.pop("create_connection")
    socket.getaddrinfo = _ORIGINALS.pop("getaddrinfo")


# -- the mesh clients in the libraries' place -----------------------------------------------------

try:
    from mesh_client.http._httpx_client import _AsyncClient, _Client, client_kwargs
    from mesh_client.http.requests import MeshSession
except ImportError:  # pragma: no cover - (only in a run without mesh_client installed)
    MeshSession = None  # type: ignore[assignment, misc]


if MeshSession is not None:

    class DropinSession(MeshSession):
        """``requests.Session()`` as a mesh session (module level: sessions pickle by class name)."""

        def __init__(self) -> None:
            super().__init__(_mesh())
            MADE.append("requests")

    class DropinClient(_Client):
        """``httpx.Client(...)`` as ``mesh.httpx_client(...)``."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**client_kwargs(_mesh(), kwargs))
            MADE.append("httpx")

    class DropinAsyncClient(_AsyncClient):
        """``httpx.AsyncClient(...)`` as ``mesh.httpx_async_client(...)``."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**client_kwargs(_mesh(), kwargs, asynchronous=True))
            MADE.append("httpx async")

    # under the names they stand for: tests parametrized with the class (``test_proxies_environ``)
    # take their ids from its name, and the two runs' ids must match
    DropinClient.__name__ = DropinClient.__qualname__ = "Client"
    DropinAsyncClient.__name__ = DropinAsyncClient.__qualname__ = "AsyncClient"


def _mesh() -> Any:
    global _MESH
    if _MESH is None:
        from mesh_client import Mesh

        _MESH = Mesh.from_dict(REGISTRY)
    return _MESH


def _substitute() -> None:
    import httpx
    import httpx._api
    import requests
    import requests.sessions

    requests.Session = requests.sessions.Session = DropinSession  # type: ignore[misc]
    httpx.Client = httpx._api.Client = DropinClient  # type: ignore[misc]
    httpx.AsyncClient = DropinAsyncClient  # type: ignore[misc]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--mesh-dropin", action="store_true", help="replace the library's clients by mesh clients")


def pytest_configure(config: pytest.Config) -> None:
    install_guard()
    if config.getoption("--mesh-dropin"):
        _substitute()


def pytest_report_header(config: pytest.Config) -> str:
    run = "mesh clients substituted" if config.getoption("--mesh-dropin") else "plain"
    return f"dropin: {run}; connections leave loopback in no test"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.getoption("--mesh-dropin"):
        counts = {kind: MADE.count(kind) for kind in ("requests", "httpx", "httpx async")}
        terminalreporter.write_line(f"dropin: mesh clients made in the library's place: {counts}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--mesh-dropin") and not MADE and session.testscollected > 1:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # (the substitution did not take)
