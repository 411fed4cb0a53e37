"""Machine instructions, branch mispredictions and cache misses per call, mesh vs plain, without
network: ``python -m benchmarks.instructions [httpx|httpx-async|requests|decision|thrift|theader ...]
[--calls N]``.

Timings on a shared VM move by tens of µs between runs; valgrind's counts do not. For each client
this runs four processes under ``valgrind --tool=cachegrind`` (simulated caches and branch
predictor): mesh and plain, each with a warm-up only and with a warm-up plus N calls, on the same
canned responses as section 1's no-network table (the same headers on both sides, ``trust_env``
off for requests). The difference of the two runs of a side is what its N calls cost; the
difference of the sides, per call, is what mesh_client adds. Needs ``valgrind`` (``apt-get install
valgrind``); about 2 minutes per client on the 2-core machine of docs/performance.md.

Each process is one ``python -m benchmarks.instructions --child KIND SIDE N`` (no proxies, no
network: a flag file routes ``users`` to Envoy, whose address is never dialled). ``thrift`` and
``theader`` (mesh framed / THeader against thriftpy2's framed client) do go over loopback, to
section 6's server, which runs in a process of its own that valgrind does not follow.

With ``--no-gc`` every process runs with the cyclic garbage collector off. The counts then compare
the code alone: with it on, a full collection that falls inside one run and not the other (its
cost is the number of objects the process holds, not the calls) moves a side by thousands of
instructions per call, and a change that keeps objects alive for longer moves when the collections
come (seen: the same code counted 775k and 864k instructions per call at 200 and 800 calls).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mesh_client.registry import Address

#: column -> the line of valgrind's summary that holds it
EVENTS = {"Ir": r"I\s+refs", "I1mr": r"I1\s+misses", "D1mr": r"D1\s+misses", "Bcm": r"Mispredicts"}
KINDS = ("httpx", "httpx-async", "requests", "decision", "thrift", "theader")
WARMUP = 300
#: set in a child's environment by ``--no-gc``
_NO_GC = "MESH_BENCH_INSTRUCTIONS_NO_GC"


def _world() -> Any:
    """A mesh over a flag file, its World (for the plain side's headers), no processes."""
    from mesh_client import Mesh
    from mesh_client.registry import load_mapping
    from mesh_client.routing import write_flag_file

    from .world import POLICY, ROUTES, World, flag_data

    flags = Path(tempfile.mkdtemp(prefix="mesh-instr-")) / "flags.json"
    write_flag_file(flags, flag_data())
    services = {
        name: {"haproxy": f"127.0.0.1:{20000 + i}", "endpoints": ["127.0.0.1:1"], **POLICY}
        for i, name in enumerate(ROUTES)
    }
    data = {
        "mesh": {"caller": "bench", "envoy_http": "127.0.0.1:19999"},
        "flags": {"source": "file", "path": str(flags), "poll_interval": 60},
        "services": services,
    }
    config = load_mapping(data, source="benchmarks.instructions")
    mesh = Mesh(config)
    if mesh.route_for("users").route.value != "envoy":
        raise SystemExit("benchmarks.instructions: the flag file did not route users to Envoy")
    return World(config, mesh, flags, None, None, None)  # type: ignore[arg-type]


def _thrift_call(kind: str, mine: bool, server: Address) -> Callable[[], Any]:
    """One get() of section 6: mesh framed or THeader, or thriftpy2's framed client (the plain side)."""
    from thriftpy2.rpc import make_client
    from thriftpy2.transport import TFramedTransportFactory

    from .thrift import thrift_mesh
    from .thrift_server import load_users

    users = load_users()
    if not mine:
        plain = make_client(
            users.Users, server.host, server.port, trans_factory=TFramedTransportFactory(), timeout=60_000
        )
        return lambda: plain.get(1)
    mesh = thrift_mesh(server, Path(tempfile.mkdtemp(prefix="mesh-instr-")))
    client = mesh.thrift_client(users.Users, "th-framed" if kind == "thrift" else "th-header")
    return lambda: client.get(1)


def child(kind: str, side: str, calls: int) -> None:
    """Make WARMUP + ``calls`` calls of one kind on one side, then leave at once."""
    if os.environ.get(_NO_GC):
        gc.disable()
    if kind in ("thrift", "theader"):
        from .backend import BackendProcess

        server = BackendProcess("benchmarks.thrift_server").start(timeout=60)
        call = _thrift_call(kind, side == "mesh", server.address)
        for _ in range(WARMUP + calls):
            call()
        server.stop()  # (the same in both runs of a side: it cancels out)
        sys.stdout.flush()
        os._exit(0)
    import httpx
    import requests
    from requests.adapters import HTTPAdapter

    from .sequential import PATH, _canned, _canned_send

    world = _world()
    mesh = world.mesh
    headers, timeout = world.plain_call("users")
    mesh_url, plain_url = "http://users" + PATH, world.envoy_base + PATH
    mine = side == "mesh"
    call: Callable[[], Any] | None = None
    if kind == "decision":
        svc = world.config.services["users"]
        call = (lambda: mesh.start_call(svc, "GET").advance(None)) if mine else (lambda: None)
    elif kind == "httpx":
        client = (
            mesh.httpx_client(transport=httpx.MockTransport(_canned))
            if mine
            else httpx.Client(transport=httpx.MockTransport(_canned))
        )
        call = (lambda: client.get(mesh_url)) if mine else (lambda: client.get(plain_url, headers=headers))
    elif kind == "requests":
        HTTPAdapter.send = _canned_send  # type: ignore[assignment,method-assign]
        session = mesh.requests_session() if mine else requests.Session()
        session.trust_env = False
        call = (
            (lambda: session.get(mesh_url))
            if mine
            else (lambda: session.get(plain_url, headers=headers, timeout=timeout))
        )
    if call is not None:
        for _ in range(WARMUP + calls):
            call()
    else:  # httpx-async
        aclient = (
            mesh.httpx_async_client(transport=httpx.MockTransport(_canned))
            if mine
            else httpx.AsyncClient(transport=httpx.MockTransport(_canned))
        )

        async def many() -> None:
            for _ in range(WARMUP + calls):
                await (aclient.get(mesh_url) if mine else aclient.get(plain_url, headers=headers))

        asyncio.run(many())
    sys.stdout.flush()
    os._exit(0)  # (no teardown: it would be counted in one run and not the other)


def _counts(kind: str, side: str, calls: int, valgrind: str, no_gc: bool = False) -> dict[str, int]:
    argv = [valgrind, "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", "--cachegrind-out-file=/dev/null"]
    argv += [sys.executable, "-m", "benchmarks.instructions", "--child", kind, side, str(calls)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if no_gc:
        env[_NO_GC] = "1"
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stderr
    found = {}
    for event, label in EVENTS.items():
        match = re.search(rf"{label}:\s+([\d,]+)", out)
        if match is None:
            raise RuntimeError(f"no {event} ({label}) in valgrind's report:\n{out[-2000:]}")
        found[event] = int(match.group(1).replace(",", ""))
    return found


def measure(kind: str, calls: int, valgrind: str, no_gc: bool = False) -> dict[str, dict[str, float]]:
    runs = [(side, n) for side in ("mesh", "plain") for n in (0, calls)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(runs, pool.map(lambda r: _counts(kind, r[0], r[1], valgrind, no_gc), runs), strict=True))
    per_call = {
        side: {e: (results[(side, calls)][e] - results[(side, 0)][e]) / calls for e in EVENTS}
        for side in ("mesh", "plain")
    }
    per_call["added"] = {e: per_call["mesh"][e] - per_call["plain"][e] for e in EVENTS}
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"of {', '.join(KINDS)} (default: the first three)")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--no-gc", action="store_true", help="the cyclic garbage collector off in every run")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SIDE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    unknown = [kind for kind in args.kinds if kind not in KINDS]
    if unknown:
        parser.error(f"unknown client {unknown[0]!r}; choose from {', '.join(KINDS)}")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("benchmarks.instructions needs valgrind (apt-get install valgrind)")
    how = "valgrind cachegrind, simulated caches" + (", garbage collector off" if args.no_gc else "")
    print(f"per call, {args.calls:,} calls after {WARMUP} warm-up calls ({how})")
    print(f"{'client':12} {'side':6} " + " ".join(f"{e:>10}" for e in EVENTS))
    for kind in args.kinds or KINDS[:3]:
        per_call = measure(kind, args.calls, valgrind, args.no_gc)
        for side in ("mesh", "plain", "added"):
            if kind == "decision" and side == "plain":
                continue
            print(f"{kind:12} {side:6} " + " ".join(f"{per_call[side][e]:>10,.0f}" for e in EVENTS), flush=True)


if __name__ == "__main__":
    main()
