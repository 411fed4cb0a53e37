"""Doctor's network steps, each bounded by a timeout: resolve, connect, one ``GET``, and a short
phrase for what went wrong."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from ... import envoy, haproxy
from ...registry import Address

__all__ = ["Deadline", "Reply", "connect", "get", "haproxy_error_page", "local_reply_body", "resolve", "why"]

_USER_AGENT: Final = "mesh-client-doctor"


class Deadline:
    """Seconds left of a step; :meth:`left` raises :class:`TimeoutError` once none are."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"gave no answer within {self.seconds:g} s")
        return left


def resolve(address: Address, timeout: float) -> str:
    """The IP to connect to for ``address``; name resolution is bounded too (in a helper thread)."""
    if address.is_ip:
        return address.host
    found: list[str] = []
    failed: list[OSError] = []

    def work() -> None:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            found.append(str(infos[0][4][0]))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=work, name="mesh-doctor-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"could not be resolved within {timeout:g} s")
    return found[0]


def why(exc: BaseException, timeout: float) -> str:
    """A short phrase for a failed network step."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused the connection (nothing listens there)"
    if isinstance(exc, TimeoutError):
        text = str(exc)
        mine = text.startswith(("gave no answer", "could not be resolved"))
        return text if mine else f"gave no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror or exc})"
    if isinstance(exc, ConnectionError):
        return f"the connection broke ({type(exc).__name__})"
    if isinstance(exc, http.client.HTTPException):
        return f"answered something that is not HTTP ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def connect(address: Address, timeout: float) -> tuple[str, str]:
    """Open and close a TCP connection; return the local IP it came from and the IP it went to."""
    deadline = Deadline(timeout)
    ip = resolve(address, deadline.left())
    with socket.create_connection((ip, address.port), timeout=deadline.left()) as sock:
        return str(sock.getsockname()[0]), ip


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: header names lower-cased (repeats joined), the body as far as it was read."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes | None
    elapsed: float


def get(
    address: Address,
    path: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    *,
    body_limit: int | Callable[[int, Mapping[str, str]], int] = 0,
) -> Reply:
    """One ``GET``; the body is read only up to ``body_limit`` bytes (a number, or a function of
    the status and headers), and all of it within ``timeout``."""
    deadline = Deadline(timeout)
    started = time.monotonic()
    ip = resolve(address, deadline.left())
    conn = http.client.HTTPConnection(ip, address.port, timeout=deadline.left())
    try:
        sent = {"Host": str(address), "User-Agent": _USER_AGENT, "Connection": "close", **(headers or {})}
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        received: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            received[key] = f"{received[key]}, {value}" if key in received else value
        limit = body_limit(response.status, received) if callable(body_limit) else body_limit
        body: bytes | None = None
        if limit > 0:
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                if conn.sock is not None:
                    conn.sock.settimeout(deadline.left())
                chunk = response.read(min(65536, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
        return Reply(response.status, response.reason, received, body, time.monotonic() - started)
    finally:
        conn.close()


def local_reply_body(prefix: str) -> Callable[[int, Mapping[str, str]], int]:
    """A ``body_limit`` for answers through Envoy: read the body only when it may be Envoy's own."""
    return lambda status, headers: 1024 if envoy.may_be_local_reply(status, headers, prefix) else 0


def haproxy_error_page(status: int, headers: Mapping[str, str]) -> int:
    """A ``body_limit`` for answers through HAProxy: read the body only when it may be HAProxy's."""
    return 1024 if haproxy.may_be_local_reply(status, headers) else 0
