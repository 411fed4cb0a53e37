"""A lean HTTP/1.1 backend for the benchmarks, run in its own process.

Unlike :class:`mesh_client.testing.Backend` it records nothing: a minimal asyncio HTTP/1.1 server
(keep-alive, ``TCP_NODELAY``) answers every request with one fixed small body in a single write,
so the backend costs the same, and little, for every client, and none of its CPU lands in the
benchmark process. ``GET /echo`` answers the request's headers as JSON, for the header-parity
check.

    python -m benchmarks.backend [--port 0]     # prints "PORT <n>" once it listens
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import selectors
import signal
import subprocess
import sys
import time
from types import TracebackType

from mesh_client.registry import Address
from mesh_client.sidecar.process import stop_process

BODY = b"ok"


class _Protocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one fixed response per request (``/echo``: the request headers)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP sockets

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._close()
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
            if len(self.buffer) < end + 4 + length:
                return  # wait for the body
            self.buffer = self.buffer[end + 4 + length :]
            target = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
            assert self.transport is not None
            if target == "/echo":
                body = json.dumps([[k.lower(), v] for k, v in headers]).encode()
                self.transport.write(_head(body, "application/json") + body)
            else:
                self.transport.write(_RESPONSE)
            if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                self._close()
                return

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.buffer = b""


def _head(body: bytes, content_type: str) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        content_type.encode(),
        len(body),
    )


_MAX_HEAD = 65536
_RESPONSE = _head(BODY, "text/plain") + BODY


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(_serve(args.port))


class BackendProcess:
    """The lean backend (or another server ``module`` that prints "PORT <n>" once it listens) in
    a child process, stopped by its own handle."""

    def __init__(self, module: str = "benchmarks.backend") -> None:
        self.module = module
        self.process: subprocess.Popen[str] | None = None
        self.address = Address("127.0.0.1", 0)

    def start(self, timeout: float = 10.0) -> BackendProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", "0"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert self.process.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(self.process.stdout, selectors.EVENT_READ)
                until = time.monotonic() + timeout
                while time.monotonic() < until:
                    if sel.select(timeout=0.1):
                        line = self.process.stdout.readline()
                        if line.startswith("PORT "):
                            self.address = Address("127.0.0.1", int(line.split()[1]))
                            return self
                        if not line:
                            break
                    if self.process.poll() is not None:
                        break
            raise RuntimeError(f"the benchmark server {self.module} did not start")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process, timeout)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()
