"""Section 6: Thrift per call, framed vs THeader vs a plain thriftpy2 client, direct and through each proxy.

Every client calls the same thriftpy2 server (mesh_client's ``make_server``, which answers framed
and THeader, in its own process: :mod:`benchmarks.thrift_server`), on three routes:

- **direct**: on loopback to the server, so the figures isolate what the client side costs
  (mesh_client's planning, context headers and sequence-id checks, and THeader framing) against
  thriftpy2's own framed client. The mesh's route is the flag's (a flag file routing both services
  to the "HAProxy" address, which is the server itself), as an application's calls are.
- **envoy**: through a real Envoy's Thrift listener (``thrift_proxy``, started here from the
  section's own registry, as the integration tests do). The plain thriftpy2 client names the
  service the way Envoy routes framed calls, with thriftpy2's ``TMultiplexedProtocol``
  (``th-framed:get``, the prefix Envoy strips), as the mesh's framed client does.
- **haproxy**: through a real HAProxy (``mode tcp``, one port per service); the plain client
  connects to the framed service's port.

On each proxied route the mesh clients come from a mesh whose flags route both services there;
each route's three clients alternate in rounds (ABBA), and its ratios are against the plain client
on the same route. Envoy and HAProxy are stopped by their handles at the end of the section.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from thriftpy2.protocol import TBinaryProtocolFactory, TMultiplexedProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

from mesh_client import Mesh
from mesh_client.registry import Address, MeshConfig, load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import free_port, start_envoy, start_haproxy

from . import report
from .backend import BackendProcess
from .measure import Variant, alternate, compare
from .thrift_server import load_users

SERVICES = ("th-framed", "th-header")
TRANSPORTS = {"th-framed": "framed", "th-header": "header"}
ROUTES = ("direct", "envoy", "haproxy")
PLAIN_TIMEOUT_MS = 5000


def _flagged_mesh(data: dict[str, Any], folder: Path, route: str) -> Mesh:
    """A mesh from ``data`` whose flag file routes both services to ``route``."""
    flags = folder / f"flags-{route}.json"
    write_flag_file(flags, [route_flag(f"mesh-route-{name}", route) for name in SERVICES])
    mesh = Mesh.from_dict({**data, "flags": {"source": "file", "path": str(flags), "poll_interval": 60}})
    for name in SERVICES:
        if mesh.route_for(name).route.value != route:
            mesh.close()
            raise RuntimeError(f"benchmarks.thrift: the flag file did not route {name} to {route}")
    return mesh


def thrift_mesh(server: Address, folder: Path) -> Mesh:
    """A mesh whose two Thrift services (framed, THeader) go to ``server`` by their flags."""
    address = f"{server.host}:{server.port}"
    data = {
        "mesh": {
            "caller": "bench",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
        },
        # the "HAProxy" address is the server itself: no proxy in the way
        "services": {
            name: {"protocol": "thrift", "transport": TRANSPORTS[name], "haproxy": address} for name in SERVICES
        },
    }
    return _flagged_mesh(data, folder, "haproxy")


def proxied_registry(server: Address) -> dict[str, Any]:
    """The registry of the proxied routes: both services have ``server`` as their one instance,
    an HAProxy port each, and Envoy's Thrift listener (the section starts both proxies from it)."""
    return {
        "mesh": {
            "caller": "bench",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
        },
        "services": {
            name: {
                "protocol": "thrift",
                "transport": TRANSPORTS[name],
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(server)],
            }
            for name in SERVICES
        },
    }


def _plain(users: Any, address: Address, *, envoy: bool) -> Any:
    """thriftpy2's own framed client to ``address`` (through Envoy: with the service prefix)."""
    kwargs: dict[str, Any] = {"trans_factory": TFramedTransportFactory(), "timeout": PLAIN_TIMEOUT_MS}
    if envoy:
        kwargs["proto_factory"] = TMultiplexedProtocolFactory(TBinaryProtocolFactory(), "th-framed")  # type: ignore[no-untyped-call]
    return make_client(users.Users, address.host, address.port, **kwargs)


def _route(
    stack: ExitStack,
    users: Any,
    mesh: Mesh,
    plain_address: Address,
    route: str,
    *,
    rounds: int,
    calls: int,
    warmup: int,
) -> dict[str, Any]:
    """One route's three clients, alternated; rows and the targets of that route."""
    framed = stack.enter_context(mesh.thrift_client(users.Users, "th-framed"))
    header = stack.enter_context(mesh.thrift_client(users.Users, "th-header"))
    plain = _plain(users, plain_address, envoy=route == "envoy")
    stack.callback(plain.close)
    for client in (plain, framed, header):  # a wrong route fails here, before any timing
        if client.get(1).id != 1:
            raise RuntimeError(f"benchmarks.thrift: a wrong answer on the {route} route")
    variants = [
        Variant("thriftpy2 framed", call=lambda: plain.get(1)),
        Variant("mesh framed", call=lambda: framed.get(1)),
        Variant("mesh THeader", call=lambda: header.get(1)),
    ]
    alternate(variants, rounds=rounds, calls=calls, warmup=warmup)
    base = variants[0]
    rows: list[dict[str, Any]] = []
    for v in variants:
        vs = compare(v, base) if v is not base else {"wall_ratio": 1.0, "cpu_added_us": 0.0}
        rows.append({"route": route, "client": v.name, **v.summary(), **vs})
    framed_row, header_row = rows[1], rows[2]
    targets = [
        report.at_most(
            "6",
            f"Thrift wall ratio, mesh framed / thriftpy2, {route}",
            framed_row["wall_ratio"],
            report.THRIFT_WALL_RATIO,
            "x",
            issue=19,
        ),
        report.at_most(
            "6",
            f"Thrift client CPU added, mesh framed, {route} (µs)",
            framed_row["cpu_added_us"],
            report.THRIFT_CPU_ADDED_US,
            issue=19,
        ),
        report.at_most(
            "6",
            f"Thrift wall ratio, mesh THeader / thriftpy2, {route}",
            header_row["wall_ratio"],
            report.THEADER_WALL_RATIO,
            "x",
            issue=19,
        ),
    ]
    return {"rows": rows, "theader_vs_framed": compare(variants[2], variants[1]), "targets": targets}


def run(*, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    with ExitStack() as stack:
        users = load_users()
        server = stack.enter_context(BackendProcess("benchmarks.thrift_server")).address
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-thrift-")))
        data = proxied_registry(server)
        config: MeshConfig = load_mapping(data, source="thrift benchmark registry")
        envoy = start_envoy(config, folder / "envoy")
        stack.callback(envoy.stop)
        haproxy = start_haproxy(config, folder / "haproxy")
        stack.callback(haproxy.stop)
        assert config.envoy_thrift is not None
        meshes = {
            "direct": (stack.enter_context(thrift_mesh(server, folder)), server),
            "envoy": (stack.enter_context(_flagged_mesh(data, folder, "envoy")), config.envoy_thrift),
            "haproxy": (
                stack.enter_context(_flagged_mesh(data, folder, "haproxy")),
                config.services["th-framed"].haproxy,
            ),
        }
        result: dict[str, Any] = {"rows": [], "theader_vs_framed": {}, "targets": []}
        for route in ROUTES:
            mesh, plain_address = meshes[route]
            one = _route(stack, users, mesh, plain_address, route, rounds=rounds, calls=calls, warmup=warmup)
            result["rows"] += one["rows"]
            result["theader_vs_framed"][route] = one["theader_vs_framed"]
            result["targets"] += one["targets"]
        return result


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            r["route"],
            r["client"],
            r["wall_median_us"],
            r["wall_p99_us"],
            f"{r['wall_ratio']:.3f}",
            r["cpu_per_call_us"],
            r["cpu_added_us"],
        ]
        for r in result["rows"]
    ]
    calls = result["rows"][0]["calls"] if result["rows"] else 0
    text = report.table(
        f"6. Thrift get() per call, direct to the server (its own process) and through Envoy and HAProxy "
        f"({calls:,} calls per row; ratios against thriftpy2 on the same route; client CPU, µs)",
        ["route", "client", "wall median", "wall p99", "ratio", "CPU/call", "CPU added"],
        rows,
        left=2,
    )
    for route, hv in result["theader_vs_framed"].items():
        text += (
            f"\n  THeader vs framed (both mesh), {route}: wall ratio {hv['wall_ratio']:.3f}, "
            f"CPU added {hv['cpu_added_us']:.1f} µs per call"
        )
    return text
