"""``LoopbackServer``: the one threaded test server the project builds its servers on.

It binds 127.0.0.1 when created (a free port unless one is given), so its :attr:`address` is
known before it serves. :meth:`~LoopbackServer.start` serves in a daemon thread, one more daemon
thread per connection; :meth:`~LoopbackServer.stop` (or leaving the ``with`` block) sets
:attr:`~LoopbackServer.stopping`, stops accepting, joins the serving thread and closes the port,
within one :attr:`~LoopbackServer.poll_interval`. A server starts once; stopping it again does
nothing. An error while handling a connection (mostly a client that hung up: a timeout, a reset)
is an expected event in a test and is not reported.

A server's own state goes on a subclass; a handler reaches it as ``self.server``. A handler that
waits (a hung upstream, a slow body) waits on ``self.server.stopping``, so that it ends when the
server stops. :class:`QuietHTTPHandler` is the base for HTTP handlers: keep-alive HTTP/1.1, no
Nagle delay (otherwise each keep-alive answer costs ~40 ms) and nothing logged to stderr.
:class:`LoopbackService` gives a test service that owns such a server its address, start, stop
and ``with`` block.
"""

from __future__ import annotations

import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, TypeVar

from ..registry import Address

__all__ = ["LoopbackServer", "LoopbackService", "QuietHTTPHandler"]

_Server = TypeVar("_Server", bound="LoopbackServer")
_Service = TypeVar("_Service", bound="LoopbackService")
_Started = TypeVar("_Started", bound="_StartStop")


class _StartStop:
    """A ``with`` block is ``start()``, then ``stop()`` when it ends."""

    def start(self: _Started) -> _Started:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Started) -> _Started:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LoopbackServer(_StartStop, socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threaded TCP server on 127.0.0.1 serving ``handler`` (see the module docs)."""

    daemon_threads = True
    allow_reuse_address = True
    #: concurrent calls must not find the listen backlog full
    request_queue_size = 128
    #: how often the serving thread looks for a stop: the longest :meth:`stop` waits for it
    poll_interval = 0.05

    def __init__(
        self,
        handler: type[socketserver.BaseRequestHandler],
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        name: str = "loopback",
    ) -> None:
        super().__init__((host, port), handler)
        #: the serving thread's name
        self.name = name
        #: set when the server stops: what a waiting handler waits on
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lifecycle = threading.Lock()

    @property
    def address(self) -> Address:
        """Where the server listens (its port is known from creation on)."""
        host, port = self.server_address[:2]
        return Address(str(host), int(port))

    def start(self: _Server) -> _Server:
        """Serve in a daemon thread; a second start (or one after :meth:`stop`) is an error."""
        with self._lifecycle:
            if self._thread is not None or self._closed:
                raise RuntimeError(f"{self.name}: a loopback server is started once")
            self._thread = threading.Thread(
                target=self.serve_forever, args=(self.poll_interval,), name=self.name, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, join the serving thread and close the port (again: nothing happens).
        Connections already accepted are not cut; their handlers see :attr:`stopping`."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self.stopping.set()
        if thread is not None:
            self.shutdown()
            thread.join()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up (timeout, reset) is an expected event here, not an error


class QuietHTTPHandler(BaseHTTPRequestHandler):
    """An HTTP/1.1 handler that answers without Nagle's delay and logs nothing."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackService(_StartStop):
    """The base of a test service that serves through the :class:`LoopbackServer` it holds as
    ``_server`` (its handlers find the service there): the server's address, and its start and
    stop, also as a ``with`` block."""

    _server: LoopbackServer

    @property
    def address(self) -> Address:
        """Where the service listens (known from creation on)."""
        return self._server.address

    def start(self: _Service) -> _Service:
        """Serve (once: a second start is an error)."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving (handlers waiting on ``stopping`` end) and close the port; again: nothing
        happens."""
        self._server.stop()
