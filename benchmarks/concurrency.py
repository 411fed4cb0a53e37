"""Section 3: N concurrent calls through Envoy with httpx.AsyncClient, mesh vs plain.

Both clients get the same pinned pool, ``httpx.Limits(max_connections=K,
max_keepalive_connections=K, keepalive_expiry=600)`` (httpx's CPU per request grows with the open
connections, so the pool is a first-order factor), swept over K. One batch = N requests started together with
``asyncio.gather``; latency of a request = from its start to its response, queueing included.
The ``bulk`` service (30 s timeout) is used, and the plain client gets a 30 s timeout too, so a
long queue cannot time out on one side only.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from . import report
from .measure import percentile
from .world import World

SERVICE = "bulk"
#: Longer than the whole section: with httpx's default 5 s, a client idle while the other side ran
#: its batch finds its K connections expired, and a burst of 1,000 requests on a reconnecting pool
#: took about twice as long as on a warm pool (here: 10-12 s instead of 5-6 s at K=10).
KEEPALIVE_EXPIRY = 600.0


async def _batch(get: Callable[[], Awaitable[httpx.Response]], n: int) -> dict[str, Any]:
    clock = time.perf_counter_ns
    latencies = [0] * n

    async def one(i: int) -> None:
        t0 = clock()
        r = await get()
        latencies[i] = clock() - t0
        if r.status_code != 200:
            raise RuntimeError(f"benchmark call answered {r.status_code}")

    cpu0, t0 = time.process_time(), clock()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall_s = (clock() - t0) / 1e9
    return {"wall_s": wall_s, "cpu_s": time.process_time() - cpu0, "latencies_ms": [x / 1e6 for x in latencies]}


def run(
    world: World, loop: asyncio.AbstractEventLoop, *, n: int, pools: tuple[int, ...], rounds: int
) -> dict[str, Any]:
    headers = world.plain_headers(SERVICE)
    mesh_url = f"http://{SERVICE}/ok"
    plain_url = world.envoy_base + "/ok"
    rows = []
    targets = []
    for k in pools:
        limits = httpx.Limits(max_connections=k, max_keepalive_connections=k, keepalive_expiry=KEEPALIVE_EXPIRY)
        mesh_client = world.mesh.httpx_async_client(limits=limits)
        plain_client = httpx.AsyncClient(limits=limits, timeout=30.0)
        sides: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
            "mesh": lambda c=mesh_client: c.get(mesh_url),  # type: ignore[misc]
            "plain": lambda c=plain_client: c.get(plain_url, headers=headers),  # type: ignore[misc]
        }
        batches: dict[str, list[dict[str, Any]]] = {"mesh": [], "plain": []}
        try:
            for get in sides.values():  # warm-up: open the K connections
                loop.run_until_complete(_batch(get, min(n, 2 * k)))
            for r in range(rounds):
                order = ["mesh", "plain"] if r % 2 == 0 else ["plain", "mesh"]
                for side in order:
                    gc.collect()
                    batches[side].append(loop.run_until_complete(_batch(sides[side], n)))
        finally:
            loop.run_until_complete(mesh_client.aclose())
            loop.run_until_complete(plain_client.aclose())
        summary = {}
        for side, bs in batches.items():
            lat = [x for b in bs for x in b["latencies_ms"]]
            summary[side] = {
                "batches": len(bs),
                "batch_wall_median_ms": statistics.median(b["wall_s"] for b in bs) * 1000,
                "throughput_rps": statistics.median(n / b["wall_s"] for b in bs),
                "latency_p50_ms": statistics.median(lat),
                "latency_p99_ms": percentile(lat, 99),
                "cpu_per_request_us": statistics.median(b["cpu_s"] / n for b in bs) * 1e6,
            }
        m, p = summary["mesh"], summary["plain"]
        wall_ratio = statistics.median(
            a["wall_s"] / b["wall_s"] for a, b in zip(batches["mesh"], batches["plain"], strict=True)
        )
        row = {
            "pool": k,
            "concurrent": n,
            **summary,
            "throughput_ratio": m["throughput_rps"] / p["throughput_rps"],
            "batch_wall_ratio_paired": wall_ratio,
            "p99_ratio": m["latency_p99_ms"] / p["latency_p99_ms"],
            "cpu_added_us": statistics.median(
                (a["cpu_s"] - b["cpu_s"]) / n * 1e6 for a, b in zip(batches["mesh"], batches["plain"], strict=True)
            ),
        }
        rows.append(row)
        targets += [
            report.at_most(
                "3",
                f"batch wall ratio mesh/plain, {n} concurrent, pool {k}",
                wall_ratio,
                report.WALL_RATIO,
                "x",
                issue=8,
            ),
            report.at_least(
                "3",
                f"throughput ratio mesh/plain, {n} concurrent, pool {k}",
                row["throughput_ratio"],
                report.BURST_THROUGHPUT_RATIO,
                "x",
                issue=19,
            ),
        ]
    return {"rows": rows, "targets": targets}


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            r["pool"],
            r["plain"]["throughput_rps"],
            r["mesh"]["throughput_rps"],
            f"{r['throughput_ratio']:.3f}",
            f"{r['batch_wall_ratio_paired']:.3f}",
            r["plain"]["latency_p99_ms"],
            r["mesh"]["latency_p99_ms"],
            r["plain"]["cpu_per_request_us"],
            r["mesh"]["cpu_per_request_us"],
            r["cpu_added_us"],
        ]
        for r in result["rows"]
    ]
    first: dict[str, Any] = result["rows"][0] if result["rows"] else {"concurrent": 0, "mesh": {"batches": 0}}
    return report.table(
        f"3. Async scale: {first['concurrent']:,} concurrent GETs via Envoy, httpx.AsyncClient, pinned pool K "
        f"({first['mesh']['batches']} batches per side)",
        [
            "K",
            "plain req/s",
            "mesh req/s",
            "thru ratio",
            "wall ratio",
            "plain p99 ms",
            "mesh p99 ms",
            "plain CPU µs/req",
            "mesh CPU µs/req",
            "CPU added",
        ],
        rows,
    )
