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

_ORIGINALS: dict[tuple[Any, str], Any] = {}
#: mesh clients made in the library's place (a mesh run that made none proves nothing)
MADE: list[str] = []
_MESH: Any = None
#: every destination refused in this process ("host:port", or "lookup NAME"), for the summary
BLOCKED: list[str] = []


def is_loopback(host: object) -> bool:
    """Whether ``host`` (an address or a name) is this machine's loopback: ``localhost`` (and
    ``*.localhost``), 127.0.0.0/8, ``::1`` (also IPv4-mapped, in brackets or with a zone)."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0].rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _check(address: Any) -> None:
    if isinstance(address, tuple) and len(address) >= 2 and not is_loopback(address[0]):
        BLOCKED.append(f"{address[0]}:{address[1]}")
        raise OSError(errno.ENETUNREACH, f"{GUARD_MESSAGE} (refused {address[0]}:{address[1]})")


def _check_name(host: Any) -> None:
    """A name other than localhost is not looked up (no DNS query leaves the machine); an
    address literal needs no lookup and is checked when connected to."""
    text = host.decode("idna") if isinstance(host, bytes) else host
    if text is None or is_loopback(text):
        return
    try:
        ipaddress.ip_address(str(text).strip("[]").split("%", 1)[0])
    except ValueError:
        BLOCKED.append(f"lookup {text}")
        raise socket.gaierror(socket.EAI_NONAME, f"{GUARD_MESSAGE} (no lookup of {text!r})") from None


def _on_socket(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        _check(address)


def install_guard() -> None:
    """Refuse non-loopback destinations in this process (idempotent)."""
    if _ORIGINALS:
        return

    def wrap(owner: Any, name: str, make: Any) -> None:
        _ORIGINALS[(owner, name)] = original = getattr(owner, name)
        setattr(owner, name, make(original))

    def connect(original: Any) -> Any:
        def guarded_connect(self: socket.socket, address: Any) -> Any:
            _on_socket(self, address)
            return original(self, address)

        return guarded_connect

    def sendto(original: Any) -> Any:
        def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> Any:
            _on_socket(self, args[-1] if args else None)
            return original(self, data, *args)

        return guarded_sendto

    def create_connection(original: Any) -> Any:
        def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            _check(address)
            return original(address, *args, **kwargs)

        return guarded_create_connection

    def lookup(original: Any) -> Any:
        def guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            _check_name(host)
            return original(host, *args, **kwargs)

        return guarded_lookup

    wrap(socket.socket, "connect", connect)
    wrap(socket.socket, "connect_ex", connect)  # (refused the same way: raises, sends nothing)
    wrap(socket.socket, "sendto", sendto)
    wrap(socket, "create_connection", create_connection)
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        wrap(socket, name, lookup)


def remove_guard() -> None:
    while _ORIGINALS:
        (owner, name), original = _ORIGINALS.popitem()
        setattr(owner, name, original)


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


if not __package__:  # loaded by name into a suite (-p dropin_plugin): before its conftests and tests
    install_guard()


def pytest_configure(config: pytest.Config) -> None:
    install_guard()
    if config.getoption("--mesh-dropin"):
        _substitute()


def pytest_report_header(config: pytest.Config) -> str:
    run = "mesh clients substituted" if config.getoption("--mesh-dropin") else "plain"
    return f"dropin: {run}; connections leave loopback in no test"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kinds = sorted(set(BLOCKED))
    shown = ", ".join(kinds[:8]) + (", ..." if len(kinds) > 8 else "")
    terminalreporter.write_line(f"dropin guard: {len(BLOCKED)} refused off loopback ({shown or 'none'})")
    if config.getoption("--mesh-dropin"):
        counts = {kind: MADE.count(kind) for kind in ("requests", "httpx", "httpx async")}
        terminalreporter.write_line(f"dropin: mesh clients made in the library's place: {counts}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--mesh-dropin") and not MADE and session.testscollected > 1:
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR  # (the substitution did not take)
