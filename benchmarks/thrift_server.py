"""The Thrift server of the benchmarks, run in its own process so none of its CPU is counted.

mesh_client's ``make_server`` (which answers framed and THeader) for a one-method service:
``get(id)`` returns ``User(id=id, name="bench")``.

    python -m benchmarks.thrift_server [--port 0]     # prints "PORT <n>" once it listens
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import thriftpy2

IDL = "struct User {1: i64 id, 2: string name}\nservice Users { User get(1: i64 id) }\n"


def load_users() -> Any:
    """The benchmark's thriftpy2 module (the same IDL in the server and the clients)."""
    with tempfile.TemporaryDirectory(prefix="mesh-bench-thrift-") as folder:
        path = Path(folder) / "bench_users.thrift"
        path.write_text(IDL)
        return thriftpy2.load(str(path), module_name="bench_users_thrift")


class Handler:
    def __init__(self, users: Any) -> None:
        self.users = users

    def get(self, id: int) -> Any:
        return self.users.User(id=id, name="bench")


def main(argv: list[str] | None = None) -> None:
    from mesh_client import Mesh
    from mesh_client.thrift.server import make_server

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    users = load_users()
    mesh = Mesh.from_dict({"mesh": {"caller": "bench-server", "envoy_http": "127.0.0.1:1"}, "services": {}})
    server = make_server(users.Users, Handler(users), "127.0.0.1", args.port, mesh=mesh, transport="header")
    server.listen()
    print(f"PORT {server.address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        server.serve()


if __name__ == "__main__":
    main()
