"""A small threaded HTTP backend that records every request it receives.

Behaviour is chosen per request by query parameters, so one backend serves many scenarios:

- ``sleep=MS``: wait MS milliseconds before answering;
- ``fail=N&code=C&key=K``: the first N requests carrying key K are answered with status C
  (default 503), later ones with 200;
- ``status=C``: always answer with status C.

Every answer is JSON: the backend's name, the method, path, the request headers (lower-cased)
and, on retries, the attempt number seen by this backend for that key. It is a
:class:`~mesh_client.testing.loopback.LoopbackServer`: 127.0.0.1 on a free port, no Nagle delay.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from .loopback import LoopbackServer, LoopbackService, QuietHTTPHandler

__all__ = ["Backend", "Record"]


@dataclass(frozen=True)
class Record:
    """One request as the backend received it."""

    backend: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float = field(default=0.0)

    @property
    def key(self) -> str | None:
        return self.query.get("key")


class _Server(LoopbackServer):
    backend: Backend


class _Handler(QuietHTTPHandler):
    server: _Server

    def _handle(self) -> None:
        backend = self.server.backend
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        record = Record(
            backend=backend.name,
            method=self.command,
            path=split.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        count = backend._record(record)
        if "sleep" in query:
            time.sleep(int(query["sleep"]) / 1000.0)
        status = 200
        if "status" in query:
            status = int(query["status"])
        elif "fail" in query and count <= int(query["fail"]):
            status = int(query.get("code", "503"))
        payload = json.dumps(
            {
                "backend": backend.name,
                "method": self.command,
                "path": split.path,
                "attempt": count,
                "headers": record.headers,
            }
        ).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:  # the client gave up (timeout): nothing to answer
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Backend(LoopbackService):
    """A recording HTTP backend on 127.0.0.1. Use as a context manager or start()/stop()."""

    _server: _Server

    def __init__(self, name: str = "backend", host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self._server = _Server(_Handler, host=host, port=port, name=f"backend-{name}")
        self._server.backend = self
        self._records: list[Record] = []
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _record(self, record: Record) -> int:
        with self._lock:
            self._records.append(record)
            key = record.key or ""
            self._counts[key] += 1
            return self._counts[key]

    def records(self, key: str | None = None) -> list[Record]:
        """Requests received so far (only those whose ``key`` query parameter matches, if given)."""
        with self._lock:
            return [r for r in self._records if key is None or r.key == key]
