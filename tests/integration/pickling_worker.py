"""Failed calls and session calls that test_pickling.py makes in its own process and in a spawned
``ProcessPoolExecutor`` worker (which imports this module by name, nothing else of the test)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests
import thriftpy2

from mesh_client import Mesh, Route, call_info, call_options, deadline, time_left

IDL = "service Echo { string echo(1: string token), void sleep(1: i32 ms) }"

#: case -> (HTTP service, Thrift service) of the pickling world's registry
SERVICES = {
    "connect": ("refused", "echo-refused"),  # nothing listens on their port
    "timeout": ("users", "echo"),  # the call sleeps past the service's timeout
    "transport": ("hangup", "echo-hangup"),  # the peer reads the request and hangs up
    "deadline": ("users", "echo"),  # the caller's deadline passed before the call
    "routing": (None, "echo-dead"),  # via Envoy to an upstream that is not there
}


def fail(registry: dict[str, Any], kind: str, case: str, idl_path: str) -> None:
    """Make the failing call ``case`` with client ``kind`` (``requests``, ``httpx``,
    ``httpx-async``, ``thrift``); it raises what the client raised."""
    http_service, thrift_service = SERVICES[case]
    with Mesh.from_dict(registry) as mesh:
        if case == "deadline":
            with deadline(0.001):
                while (time_left() or 0) > 0:
                    time.sleep(0.001)
                _call(mesh, kind, http_service, thrift_service, idl_path, sleep=False)
        elif case == "routing":
            with call_options(route=Route.ENVOY):
                _call(mesh, kind, http_service, thrift_service, idl_path, sleep=False)
        else:
            _call(mesh, kind, http_service, thrift_service, idl_path, sleep=case == "timeout")


def _call(mesh: Mesh, kind: str, http_service: str | None, thrift_service: str, idl_path: str, sleep: bool) -> None:
    if kind == "thrift":
        echo = thriftpy2.load(idl_path, module_name="pickling_echo_thrift")
        with mesh.thrift_client(echo.Echo, thrift_service) as client:
            if sleep:
                client.sleep(1000)
            else:
                client.echo("hello")
        return
    url = f"http://{http_service}/echo" + ("?sleep=1000" if sleep else "")
    if kind == "requests":
        mesh.requests_session().get(url)
    elif kind == "httpx":
        mesh.httpx_client().get(url)
    else:

        async def call() -> None:
            async with mesh.httpx_async_client() as client:
                await client.get(url)

        asyncio.run(call())


def call_with(session: requests.Session, token: str) -> dict[str, Any]:
    """A mesh call with an unpickled session: what the service received and the route."""
    r = session.get("http://users/echo", headers={"x-token": token})
    info = call_info(r)
    return {"headers": r.json()["headers"], "route": info.route.value if info is not None else None}


def bound_mesh(session: Any) -> tuple[int, bool, str]:
    """The mesh a session unpickled in this process is bound to: (its id, open, its registry's
    source)."""
    mesh = session.mesh
    return id(mesh), not mesh.closed, mesh.config.source
