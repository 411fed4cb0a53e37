"""The demo services: tiny HTTP servers in this process that tell each caller whether the
request came through Envoy (it arrived with :data:`ENVOY_MARK`, which only Envoy adds), and
answer one path otherwise through Envoy (the shadow step's planted difference)."""

from __future__ import annotations

import json
import threading
from typing import Any, Final

from ...envoy import DEFAULT_PREFIX, header_names
from ...testing.loopback import LoopbackServer, LoopbackService, QuietHTTPHandler
from .overrides_step import VIA, Forward
from .shadow_step import planted_answer

__all__ = ["ENVOY_MARK", "DemoService"]

#: Envoy adds this header to every request it forwards; the client never sends it via HAProxy.
ENVOY_MARK: Final = header_names(DEFAULT_PREFIX).expected_rq_timeout_ms


class _Server(LoopbackServer):
    service = ""
    deployment = "main"
    #: what a GET of /via/SERVICE does (the override step's second hop), if anything
    forward: Forward | None = None
    served = 0


class _Handler(QuietHTTPHandler):
    server: _Server

    def do_GET(self) -> None:
        via_envoy = ENVOY_MARK in self.headers
        server = self.server
        answer: dict[str, Any] = {
            "service": server.service,
            "deployment": server.deployment,
            "path": self.path,
            "via_envoy": via_envoy,
            ENVOY_MARK: self.headers.get(ENVOY_MARK),
            **planted_answer(self.path, self.headers.get(ENVOY_MARK)),  # (the shadow step's difference)
        }
        with _served_lock:
            server.served += 1
        if server.forward is not None and self.path.startswith(VIA):
            answer["next"] = server.forward(self.path[len(VIA) :], dict(self.headers.items()))
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-demo-service", self.server.service)
        self.send_header("x-demo-via-envoy", "yes" if via_envoy else "no")
        self.end_headers()
        self.wfile.write(body)


_served_lock: Final = threading.Lock()


class DemoService(LoopbackService):
    """A tiny HTTP service on 127.0.0.1 that tells each caller whether the request came via Envoy
    (and which deployment of the service answered)."""

    _server: _Server

    def __init__(self, name: str, deployment: str = "main") -> None:
        self.name = name
        self._server = _Server(_Handler, name=f"demo-{name}")
        self._server.service = name
        self._server.deployment = deployment

    @property
    def served(self) -> int:
        """Requests answered so far."""
        return self._server.served

    def forward_with(self, forward: Forward) -> None:
        """Answer ``GET /via/SERVICE`` by calling SERVICE with ``forward`` (the override step)."""
        self._server.forward = forward
