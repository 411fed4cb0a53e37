"""Section 1: per-call overhead, sequential keep-alive GETs, mesh client vs plain client.

Each pair runs against the same backend and proxy: the mesh client addresses the service by name
(``http://users/ok``, routed by the flag), the plain client addresses the proxy directly with the
headers the mesh would set, precomputed once, and for requests the same socket timeout as the
mesh's attempt (requests has none by default; httpx always has one). Both keep the libraries'
defaults otherwise (``trust_env`` on, default pools). A second table repeats the pairs with
canned responses instead of the network, to show the client-side CPU alone.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse

from mesh_client import call_info

from . import report
from .measure import Variant, alternate, compare
from .world import World

PATH = "/ok"
BODY = b"ok"
#: what Envoy answers for the backend's /ok (no local reply: the body is never inspected)
CANNED_HEADERS = {"content-type": "text/plain", "content-length": "2", "x-envoy-upstream-service-time": "1"}
#: (route, service): the Envoy route and the HAProxy route
ROUTES = (("envoy", "users"), ("haproxy", "legacy"))
KINDS = ("requests", "httpx", "httpx-async")
#: the no-network rows issue 19 sets a target for (requests with trust_env on reads the proxy
#: environment on the plain side only: its row shows the mesh saving CPU, not mesh_client's cost)
NO_IO_TARGETED = ("requests, trust_env off", "httpx", "httpx-async")


@dataclass
class Clients:
    """The clients a section made, closed at the end."""

    sync: list[Any]
    async_: list[httpx.AsyncClient]

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        for c in self.sync:
            c.close()
        for a in self.async_:
            loop.run_until_complete(a.aclose())


def _check(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"benchmark call answered {status}")


def make_pair(
    world: World, kind: str, route: str, service: str, clients: Clients, *, path: str = PATH
) -> tuple[Variant, Variant]:
    """The (mesh, plain) variants for one client kind and route."""
    mesh_url = f"http://{service}{path}"
    base = world.envoy_base if route == "envoy" else world.haproxy_base(service)
    plain_url = base + path
    headers, timeout = world.plain_call(service)
    mesh_call: Callable[[], Any]
    plain_call: Callable[[], Any]
    if kind == "requests":
        ms, ps = world.mesh.requests_session(), requests.Session()
        clients.sync += [ms, ps]

        def mesh_call() -> None:
            _check(ms.get(mesh_url).status_code)

        def plain_call() -> None:
            _check(ps.get(plain_url, headers=headers, timeout=timeout).status_code)

        return Variant(f"{kind} {route} mesh", mesh_call), Variant(f"{kind} {route} plain", plain_call)
    if kind == "httpx":
        mc, pc = world.mesh.httpx_client(), httpx.Client()
        clients.sync += [mc, pc]

        def mesh_call() -> None:
            _check(mc.get(mesh_url).status_code)

        def plain_call() -> None:
            _check(pc.get(plain_url, headers=headers).status_code)

        return Variant(f"{kind} {route} mesh", mesh_call), Variant(f"{kind} {route} plain", plain_call)
    ma, pa = world.mesh.httpx_async_client(), httpx.AsyncClient()
    clients.async_ += [ma, pa]

    async def mesh_acall() -> None:
        _check((await ma.get(mesh_url)).status_code)

    async def plain_acall() -> None:
        _check((await pa.get(plain_url, headers=headers)).status_code)

    return (
        Variant(f"{kind} {route} mesh", acall=mesh_acall),
        Variant(f"{kind} {route} plain", acall=plain_acall),
    )


def header_parity(world: World, loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """One mesh and one plain call per client and route to ``/echo``: the header names the
    backend received must be the same (values may differ: request id, remaining timeout)."""
    results = []
    clients = Clients([], [])
    try:
        for route, service in ROUTES:
            headers = world.plain_headers(service)
            base = world.envoy_base if route == "envoy" else world.haproxy_base(service)
            for kind in KINDS:
                mr: Any
                pr: Any
                if kind == "requests":
                    ms, ps = world.mesh.requests_session(), requests.Session()
                    clients.sync += [ms, ps]
                    mr, pr = ms.get(f"http://{service}/echo"), ps.get(base + "/echo", headers=headers)
                elif kind == "httpx":
                    mc, pc = world.mesh.httpx_client(), httpx.Client()
                    clients.sync += [mc, pc]
                    mr, pr = mc.get(f"http://{service}/echo"), pc.get(base + "/echo", headers=headers)
                else:
                    ma, pa = world.mesh.httpx_async_client(), httpx.AsyncClient()
                    clients.async_ += [ma, pa]
                    mr = loop.run_until_complete(ma.get(f"http://{service}/echo"))
                    pr = loop.run_until_complete(pa.get(base + "/echo", headers=headers))
                info = call_info(mr)
                mesh_names = sorted(name for name, _ in mr.json())
                plain_names = sorted(name for name, _ in pr.json())
                results.append(
                    {
                        "client": kind,
                        "route": route,
                        "mesh_route_taken": info.route.value if info else None,
                        "same_header_names": mesh_names == plain_names,
                        "only_mesh": sorted(set(mesh_names) - set(plain_names)),
                        "only_plain": sorted(set(plain_names) - set(mesh_names)),
                    }
                )
    finally:
        clients.close(loop)
    return results


def _canned_send(adapter: HTTPAdapter, request: requests.PreparedRequest, **_: Any) -> requests.Response:
    raw = HTTPResponse(body=io.BytesIO(BODY), headers=CANNED_HEADERS, status=200, preload_content=False)
    response: requests.Response = adapter.build_response(request, raw)
    return response


def _canned(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=BODY, headers=CANNED_HEADERS)


def no_io(
    world: World, loop: asyncio.AbstractEventLoop, *, rounds: int, calls: int, warmup: int
) -> list[dict[str, Any]]:
    """The same mesh vs plain pairs (Envoy route) with canned responses instead of the network:
    requests' ``HTTPAdapter.send`` (which the mesh adapter calls too) and httpx's transport
    return a prebuilt 200, so what is left is the client libraries' own CPU, and the difference is
    mesh_client's, without network and proxy noise."""
    headers, timeout = world.plain_call("users")
    plain_url = world.envoy_base + PATH
    mesh_url = "http://users" + PATH
    clients = Clients([], [])
    real_send = HTTPAdapter.send
    rows = []
    try:
        HTTPAdapter.send = _canned_send  # type: ignore[assignment,method-assign]
        ms, ps = world.mesh.requests_session(), requests.Session()
        mc, pc = (
            world.mesh.httpx_client(transport=httpx.MockTransport(_canned)),
            httpx.Client(transport=httpx.MockTransport(_canned)),
        )
        ma = world.mesh.httpx_async_client(transport=httpx.MockTransport(_canned))
        pa = httpx.AsyncClient(transport=httpx.MockTransport(_canned))
        # the mesh session skips requests' reading of the proxy environment for mesh URLs (they
        # never use a proxy); with trust_env off on both sides, what is left is mesh_client's own cost
        ms_quiet, ps_quiet = world.mesh.requests_session(), requests.Session()
        ms_quiet.trust_env = ps_quiet.trust_env = False
        clients.sync += [ms, ps, mc, pc, ms_quiet, ps_quiet]
        clients.async_ += [ma, pa]

        async def mesh_async() -> None:
            _check((await ma.get(mesh_url)).status_code)

        async def plain_async() -> None:
            _check((await pa.get(plain_url, headers=headers)).status_code)

        pairs = {
            "requests": (
                Variant("mesh", lambda: _check(ms.get(mesh_url).status_code)),
                Variant("plain", lambda: _check(ps.get(plain_url, headers=headers, timeout=timeout).status_code)),
            ),
            "httpx": (
                Variant("mesh", lambda: _check(mc.get(mesh_url).status_code)),
                Variant("plain", lambda: _check(pc.get(plain_url, headers=headers).status_code)),
            ),
            "httpx-async": (Variant("mesh", acall=mesh_async), Variant("plain", acall=plain_async)),
            "requests, trust_env off": (
                Variant("mesh", lambda: _check(ms_quiet.get(mesh_url).status_code)),
                Variant("plain", lambda: _check(ps_quiet.get(plain_url, headers=headers, timeout=timeout).status_code)),
            ),
        }
        for kind, (mesh_v, plain_v) in pairs.items():
            alternate([mesh_v, plain_v], rounds=rounds, calls=calls, warmup=warmup, loop=loop)
            rows.append(
                {
                    "client": kind,
                    "calls_per_side": mesh_v.summary()["calls"],
                    "plain_cpu_per_call_us": plain_v.summary()["cpu_per_call_us"],
                    "mesh_cpu_per_call_us": mesh_v.summary()["cpu_per_call_us"],
                    "cpu_added_us": compare(mesh_v, plain_v)["cpu_added_us"],
                }
            )
    finally:
        HTTPAdapter.send = real_send  # type: ignore[method-assign]
        clients.close(loop)
    return rows


def run(world: World, loop: asyncio.AbstractEventLoop, *, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    parity = header_parity(world, loop)
    clients = Clients([], [])
    rows = []
    targets = []
    try:
        for route, service in ROUTES:
            for kind in KINDS:
                mesh_v, plain_v = make_pair(world, kind, route, service, clients)
                alternate([mesh_v, plain_v], rounds=rounds, calls=calls, warmup=warmup, loop=loop)
                m, p, c = mesh_v.summary(), plain_v.summary(), compare(mesh_v, plain_v)
                rows.append(
                    {
                        "client": kind,
                        "route": route,
                        "calls_per_side": m["calls"],
                        "plain": p,
                        "mesh": m,
                        **c,
                    }
                )
                label = f"{kind} via {route}"
                wall = f"wall ratio mesh/plain, {label}"
                targets += [
                    report.at_most("1", wall, c["wall_ratio"], report.WALL_RATIO, "x", issue=8),
                    report.at_most("1", wall, c["wall_ratio"], report.WALL_RATIO_19, "x", issue=19),
                    report.below(
                        "1", f"client CPU added, {label} (µs)", c["cpu_added_us"], report.CPU_ADDED_US, issue=8
                    ),
                ]
    finally:
        clients.close(loop)
    without_io = no_io(world, loop, rounds=rounds, calls=2 * calls, warmup=warmup)
    targets += [
        report.at_most(
            "1",
            f"client CPU added without network, {r['client']} (µs)",
            r["cpu_added_us"],
            report.NO_IO_CPU_ADDED_US,
            issue=19,
        )
        for r in without_io
        if r["client"] in NO_IO_TARGETED
    ]
    return {"rows": rows, "no_io": without_io, "header_parity": parity, "targets": targets}


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            r["client"],
            r["route"],
            r["plain"]["wall_median_us"],
            r["mesh"]["wall_median_us"],
            f"{r['wall_ratio']:.3f}",
            r["plain"]["wall_p99_us"],
            r["mesh"]["wall_p99_us"],
            r["plain"]["cpu_per_call_us"],
            r["mesh"]["cpu_per_call_us"],
            r["cpu_added_us"],
        ]
        for r in result["rows"]
    ]
    calls = result["rows"][0]["calls_per_side"] if result["rows"] else 0
    out = report.table(
        f"1. Per-call overhead, sequential keep-alive GETs ({calls:,} calls per side, µs)",
        [
            "client",
            "route",
            "plain wall",
            "mesh wall",
            "ratio",
            "plain p99",
            "mesh p99",
            "plain CPU",
            "mesh CPU",
            "CPU added",
        ],
        rows,
    )
    no_io_rows = [
        [r["client"], r["plain_cpu_per_call_us"], r["mesh_cpu_per_call_us"], r["cpu_added_us"]]
        for r in result.get("no_io", [])
    ]
    if no_io_rows:
        out += "\n\n" + report.table(
            f"   the same without network: canned 200 responses under both clients "
            f"({result['no_io'][0]['calls_per_side']:,} calls per side, client CPU µs per call)",
            ["client", "plain CPU", "mesh CPU", "CPU added"],
            no_io_rows,
        )
    bad = [p for p in result["header_parity"] if not p["same_header_names"] or p["mesh_route_taken"] != p["route"]]
    if bad:
        out += "\n  WARNING header parity: " + "; ".join(
            f"{p['client']} {p['route']}: mesh-only {p['only_mesh']}, plain-only {p['only_plain']}, "
            f"route taken {p['mesh_route_taken']}"
            for p in bad
        )
    else:
        out += "\n  header parity: the backend saw the same header names from mesh and plain on every row"
    return out
