"""Section 6: Thrift per call, framed vs THeader vs a plain thriftpy2 client.

All three call the same thriftpy2 server (mesh_client's ``make_server``, which answers framed and
THeader) directly on loopback, so the figures isolate what the client side costs: mesh_client's
planning, context headers and sequence-id checks, and THeader framing, against thriftpy2's own
framed client. Through Envoy or HAProxy each call also pays the proxy hop (see docs/thrift.md).
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import thriftpy2
from thriftpy2.rpc import make_client
from thriftpy2.transport import TFramedTransportFactory

from mesh_client import Mesh, call_options
from mesh_client.sidecar import free_port
from mesh_client.thrift.server import make_server

from . import report
from .measure import Variant, alternate, compare

IDL = "struct User {1: i64 id, 2: string name}\nservice Users { User get(1: i64 id) }\n"


class Handler:
    def __init__(self, users: Any) -> None:
        self.users = users

    def get(self, id: int) -> Any:
        return self.users.User(id=id, name="bench")


def run(*, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-thrift-")))
        (folder / "bench_users.thrift").write_text(IDL)
        users = thriftpy2.load(str(folder / "bench_users.thrift"), module_name="bench_users_thrift")
        port = free_port()
        data = {
            "mesh": {
                "caller": "bench",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_thrift": f"127.0.0.1:{free_port()}",
            },
            "services": {
                # the "HAProxy" address is the server itself: no proxy in the way
                "th-framed": {"protocol": "thrift", "transport": "framed", "haproxy": f"127.0.0.1:{port}"},
                "th-header": {"protocol": "thrift", "transport": "header", "haproxy": f"127.0.0.1:{port}"},
            },
        }
        mesh = stack.enter_context(Mesh.from_dict(data))
        server = make_server(users.Users, Handler(users), "127.0.0.1", port, mesh=mesh, transport="header")
        thread = server.start()  # listening before it returns: the first call cannot be refused
        stack.callback(thread.join, 5)
        stack.callback(server.close)
        stack.enter_context(call_options(route="haproxy"))
        framed = stack.enter_context(mesh.thrift_client(users.Users, "th-framed"))
        header = stack.enter_context(mesh.thrift_client(users.Users, "th-header"))
        plain = make_client(users.Users, "127.0.0.1", port, trans_factory=TFramedTransportFactory(), timeout=5000)
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
        return {
            "rows": rows,
            "theader_vs_framed": header_vs_framed,
            "targets": [],
        }


def render(result: dict[str, Any]) -> str:
    rows = [
        [r["client"], r["wall_median_us"], r["wall_p99_us"], r["wall_ratio"], r["cpu_per_call_us"], r["cpu_added_us"]]
        for r in result["rows"]
    ]
    text = report.table(
        "6. Thrift get() per call, direct to the server (µs)",
        ["client", "wall median", "wall p99", "ratio", "CPU/call", "CPU added"],
        rows,
    )
    hv = result["theader_vs_framed"]
    return text + (
        f"\n  THeader vs framed (both mesh): wall ratio {hv['wall_ratio']:.3f}, "
        f"CPU added {hv['cpu_added_us']:.1f} µs per call"
    )
