"""Run as a script by test_fork.py: a process that builds a Mesh and its clients, calls once, then
forks with ``multiprocessing`` (a fork-context Pool) and with ``os.fork()`` where the child ends
the way a program does (returning from the script: atexit handlers, thread shutdown).

Usage: ``python fork_exit.py REGISTRY_JSON``. Prints one JSON line: the replies that were not
the call's own (by source), and the forked child's exit status. The test bounds how long the
whole script may take, so a parent or a child that hangs at exit fails it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import uuid

from mesh_client import Mesh

mesh = Mesh.from_dict(json.loads(sys.argv[1]))
session = mesh.requests_session()
client = mesh.httpx_client()


def echo(token: str) -> str:
    """A mesh call with each client; '' when both replies were the call's own."""
    by_requests = session.get("http://users/echo", headers={"x-token": token}).json()["headers"].get("x-token")
    by_httpx = client.get("http://users/echo", headers={"x-token": token}).json()["headers"].get("x-token")
    return "" if by_requests == by_httpx == token else f"{token}: {by_requests}, {by_httpx}"


def main() -> None:
    assert echo("warm-up") == ""  # the parent's pools hold connections when it forks
    tokens = [uuid.uuid4().hex for _ in range(60)]
    with multiprocessing.get_context("fork").Pool(3) as pool:
        in_pool = [p for p in pool.map(echo, tokens) if p]
    in_parent = [p for p in map(echo, tokens) if p]
    pid = os.fork()
    if pid == 0:  # the child: call, then end like any program (no os._exit)
        problems = [p for p in map(echo, tokens[:10]) if p]
        sys.exit(0 if not problems else 1)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"pool": in_pool, "parent": in_parent, "child_status": os.waitstatus_to_exitcode(status)}))


if __name__ == "__main__":
    main()
