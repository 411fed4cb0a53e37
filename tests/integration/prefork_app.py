"""The Flask app test_fork.py serves with ``gunicorn --preload``: its Mesh and clients are made
at import time, in the gunicorn master, which calls once through each client on each route, so
the pools the workers inherit hold connections, and then forks the workers. Nothing in it is
about forking: that is the point.

``MESH_FORK_REGISTRY`` names the registry (JSON). ``GET /call?token=T&client=requests|httpx``
calls the ``users`` service with header ``x-token: T`` and answers with the worker's pid, the
token the service echoed and the route of the call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flask import Flask, request

from mesh_client import Mesh, Route, call_info, call_options
from mesh_client.wsgi import MeshMiddleware

mesh = Mesh.from_dict(json.loads(Path(os.environ["MESH_FORK_REGISTRY"]).read_text()))
clients: dict[str, Any] = {"requests": mesh.requests_session(), "httpx": mesh.httpx_client()}
IMPORTED_IN = os.getpid()

for warm_up in clients.values():
    for route in Route:
        with call_options(route=route):
            warm_up.get("http://users/echo?key=warm-up").raise_for_status()

app = Flask(__name__)
app.wsgi_app = MeshMiddleware(app.wsgi_app, mesh)  # type: ignore[method-assign]


@app.get("/call")
def call() -> dict[str, Any]:
    response = clients[request.args.get("client", "requests")].get(
        "http://users/echo", headers={"x-token": request.args["token"]}
    )
    info = call_info(response)
    return {
        "pid": os.getpid(),
        "imported_in": IMPORTED_IN,
        "token": response.json()["headers"].get("x-token"),
        "route": info.route.value if info is not None else None,
    }
