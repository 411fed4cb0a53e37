"""Section 6: Thrift per call, framed vs THeader vs a plain thriftpy2 client.

All three call the same thriftpy2 server (mesh_client's ``make_server``, which answers framed and
THeader, in its own process: :mod:`benchmarks.thrift_server`) directly on loopback, so the figures
isolate what the client side costs: mesh_client's planning, context headers and sequence-id checks,
and THeader framing, against thriftpy2's own framed client. Through Envoy or HAProxy each call also
pays the proxy hop (see docs/thrift.md). The route is the flag's (a flag file routing both services
to the "HAProxy" address, which is the server itself), as an application's calls are.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

from mesh_client import Mesh
from mesh_client.registry import Address
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import free_port

from . import report
from .backend import BackendProcess
from .measure import Variant, alternate, compare
from .thrift_server import load_users

SERVICES = ("th-framed", "th-header")


def thrift_mesh(server: Address, folder: Path) -> Mesh:
    """A mesh whose two Thrift services (framed, THeader) go to ``server`` by their flags."""
    flags = folder / "flags.json"
    write_flag_file(flags, [route_flag(f"mesh-route-{name}", "haproxy") for name in SERVICES])
    address = f"{server.host}:{server.port}"
    data = {
        "mesh": {
            "caller": "bench",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_thrift": f"127.0.0.1:{free_port()}",
        },
        "flags": {"source": "file", "path": str(flags), "poll_interval": 60},
        "services": {
            # the "HAProxy" address is the server itself: no proxy in the way
            "th-framed": {"protocol": "thrift", "transport": "framed", "haproxy": address},
            "th-header": {"protocol": "thrift", "transport": "header", "haproxy": address},
        },
    }
    mesh = Mesh.from_dict(data)
    for name in SERVICES:
        if mesh.route_for(name).route.value != "haproxy":
            mesh.close()
            raise RuntimeError(f"benchmarks.thrift: the flag file did not route {name} to the server")
    return mesh


def run(*, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    with ExitStack() as stack:
        users = load_users()
        server = stack.enter_context(BackendProcess("benchmarks.thrift_server")).address
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-thrift-")))
        mesh = stack.enter_context(thrift_mesh(server, folder))
        framed = stack.enter_context(mesh.thrift_client(users.Users, "th-framed"))
        header = stack.enter_context(mesh.thrift_client(users.Users, "th-header"))
        plain = make_client(
            users.Users, server.host, server.port, trans_factory=TFramedTransportFactory(), timeout=5000
        )
        stack.callback(plain.close)
        variants = [
            Variant("thriftpy2 framed", call=lambda: plain.get(1)),
            Variant("mesh framed", call=lambda: framed.get(1)),
            Variant("mesh THeader", call=lambda: header.get(1)),
        ]
        alternate(variants, rounds=rounds, calls=calls, warmup=warmup)
        base = variants[0]
        rows = []
        for v in variants:
            summary = v.summary()
            vs = compare(v, base) if v is not base else {"wall_ratio": 1.0, "cpu_added_us": 0.0}
            rows.append({"client": v.name, **summary, **vs})
        header_vs_framed = compare(variants[2], variants[1])
        framed_row, header_row = rows[1], rows[2]
        return {
            "rows": rows,
            "theader_vs_framed": header_vs_framed,
            "targets": [
                report.at_most(
                    "6",
                    "Thrift wall ratio, mesh framed / thriftpy2",
                    framed_row["wall_ratio"],
                    report.THRIFT_WALL_RATIO,
                    "x",
                ),
                report.at_most(
                    "6",
                    "Thrift client CPU added, mesh framed (µs)",
                    framed_row["cpu_added_us"],
                    report.THRIFT_CPU_ADDED_US,
                ),
                report.at_most(
                    "6",
                    "Thrift wall ratio, mesh THeader / thriftpy2",
                    header_row["wall_ratio"],
                    report.THEADER_WALL_RATIO,
                    "x",
                ),
            ],
        }


def render(result: dict[str, Any]) -> str:
    rows = [
        [r["client"], r["wall_median_us"], r["wall_p99_us"], r["wall_ratio"], r["cpu_per_call_us"], r["cpu_added_us"]]
        for r in result["rows"]
    ]
    text = report.table(
        "6. Thrift get() per call, direct to the server (its own process; client CPU, µs)",
        ["client", "wall median", "wall p99", "ratio", "CPU/call", "CPU added"],
        rows,
    )
    hv = result["theader_vs_framed"]
    return text + (
        f"\n  THeader vs framed (both mesh): wall ratio {hv['wall_ratio']:.3f}, "
        f"CPU added {hv['cpu_added_us']:.1f} µs per call"
    )
