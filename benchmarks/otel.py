"""Section 5: with the OpenTelemetry SDK installed, what mesh_client adds vs the HTTP instrumentations.

The SDK is set up once, globally (so this section runs last): a ``TracerProvider`` whose only span
processor drops spans (it counts them), and a ``MeterProvider`` with an in-memory reader (no
export). Per client kind, four rows through the same Envoy listener, alternated:

- ``plain``: the plain client with the mesh's headers (SDK installed, nothing instrumented);
- ``plain + otel-instr``: the same with ``opentelemetry-instrumentation-requests`` / ``-httpx``
  (requests: ``RequestsInstrumentor().instrument()``; httpx: ``instrument_client`` on that client);
- ``mesh``: the mesh client (its span, metrics, flag, headers);
- ``mesh + otel-instr installed``: the mesh client while the instrumentation is installed
  globally (``instrument()``), as in an application that uses both; mesh_client suppresses it.

Spans per call are counted in an untimed probe, to show each row records what it claims.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import requests

from . import report
from .measure import Variant, alternate, compare, percentile
from .sequential import Clients, _check
from .world import World

KINDS = ("requests", "httpx", "httpx-async")
SERVICE = "users"


class _Sdk:
    """The global SDK providers (created once per process)."""

    def __init__(self) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

        counter = self

        class CountingDropProcessor(SpanProcessor):
            def on_end(self, span: ReadableSpan) -> None:
                counter.spans += 1

        self.spans = 0
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            raise RuntimeError("an SDK TracerProvider is already set; run this section in a fresh process")
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(CountingDropProcessor())
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def _variants(world: World, sdk: _Sdk, kind: str, clients: Clients) -> list[Variant]:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    mesh_url = f"http://{SERVICE}/ok"
    plain_url = world.envoy_base + "/ok"
    headers, timeout = world.plain_call(SERVICE)  # with the SDK the headers include a traceparent
    tracer_provider, meter_provider = sdk.tracer_provider, sdk.meter_provider
    if kind == "requests":
        instr = RequestsInstrumentor()

        def instrument() -> None:
            instr.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

        ms, ps, pis = world.mesh.requests_session(), requests.Session(), requests.Session()
        clients.sync += [ms, ps, pis]
        return [
            Variant("plain", lambda: _check(ps.get(plain_url, headers=headers, timeout=timeout).status_code)),
            Variant(
                "plain + otel-instr",
                lambda: _check(pis.get(plain_url, headers=headers, timeout=timeout).status_code),
                enter=instrument,
                leave=instr.uninstrument,
            ),
            Variant("mesh", lambda: _check(ms.get(mesh_url).status_code)),
            Variant(
                "mesh + otel-instr installed",
                lambda: _check(ms.get(mesh_url).status_code),
                enter=instrument,
                leave=instr.uninstrument,
            ),
        ]
    hx = HTTPXClientInstrumentor()

    def instrument_httpx() -> None:
        hx.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

    if kind == "httpx":
        mc, pc, pic = world.mesh.httpx_client(), httpx.Client(), httpx.Client()
        HTTPXClientInstrumentor.instrument_client(pic, tracer_provider=tracer_provider, meter_provider=meter_provider)
        clients.sync += [mc, pc, pic]
        return [
            Variant("plain", lambda: _check(pc.get(plain_url, headers=headers).status_code)),
            Variant("plain + otel-instr", lambda: _check(pic.get(plain_url, headers=headers).status_code)),
            Variant("mesh", lambda: _check(mc.get(mesh_url).status_code)),
            Variant(
                "mesh + otel-instr installed",
                lambda: _check(mc.get(mesh_url).status_code),
                enter=instrument_httpx,
                leave=hx.uninstrument,
            ),
        ]
    ma, pa, pia = world.mesh.httpx_async_client(), httpx.AsyncClient(), httpx.AsyncClient()
    HTTPXClientInstrumentor.instrument_client(pia, tracer_provider=tracer_provider, meter_provider=meter_provider)
    clients.async_ += [ma, pa, pia]

    async def plain() -> None:
        _check((await pa.get(plain_url, headers=headers)).status_code)

    async def plain_instr() -> None:
        _check((await pia.get(plain_url, headers=headers)).status_code)

    async def mesh() -> None:
        _check((await ma.get(mesh_url)).status_code)

    return [
        Variant("plain", acall=plain),
        Variant("plain + otel-instr", acall=plain_instr),
        Variant("mesh", acall=mesh),
        Variant(
            "mesh + otel-instr installed",
            acall=mesh,
            enter=instrument_httpx,
            leave=hx.uninstrument,
        ),
    ]


def _spans_per_call(sdk: _Sdk, variant: Variant, loop: asyncio.AbstractEventLoop, n: int = 5) -> float:
    if variant.enter is not None:
        variant.enter()
    try:
        before = sdk.spans
        for _ in range(n):
            if variant.call is not None:
                variant.call()
            else:
                assert variant.acall is not None
                loop.run_until_complete(variant.acall())
        return (sdk.spans - before) / n
    finally:
        if variant.leave is not None:
            variant.leave()


def _decision_path_with_sdk(world: World, n: int) -> dict[str, float]:
    mesh, svc = world.mesh, world.config.services[SERVICE]
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        run = mesh.start_call(svc, "GET")
        run.advance(None)
        samples.append((clock() - t0) / 1000)
        run.abort(RuntimeError("decision path only"))  # end the span outside the timing
    return {"median_us": statistics.median(samples), "p99_us": percentile(samples, 99)}


def run(world: World, loop: asyncio.AbstractEventLoop, *, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    sdk = _Sdk()
    clients = Clients([], [])
    rows: list[dict[str, Any]] = []
    targets = []
    try:
        for kind in KINDS:
            variants = _variants(world, sdk, kind, clients)
            alternate(variants, rounds=rounds, calls=calls, warmup=warmup, loop=loop)
            plain = variants[0]
            added: dict[str, float] = {}
            for v in variants:
                row: dict[str, Any] = {
                    "client": kind,
                    "variant": v.name,
                    **v.summary(),
                    "spans_per_call": _spans_per_call(sdk, v, loop),
                }
                if v is not plain:
                    row.update(compare(v, plain))
                    added[v.name] = row["cpu_added_us"]
                rows.append(row)
            targets.append(
                report.below(
                    "5",
                    f"{kind}: CPU the mesh adds with the SDK vs otel-instr alone (µs)",
                    added["mesh"],
                    added["plain + otel-instr"],
                    issue=(8, 19),
                )
            )
        decision = _decision_path_with_sdk(world, max(1000, calls))
    finally:
        clients.close(loop)
        sdk.shutdown()
    return {"rows": rows, "targets": targets, "decision_path_with_sdk": decision, "spans_ended": sdk.spans}


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            r["client"],
            r["variant"],
            r["wall_median_us"],
            f"{r['wall_ratio']:.3f}" if "wall_ratio" in r else "-",
            r["cpu_per_call_us"],
            r.get("cpu_added_us", float("nan")),
            f"{r['spans_per_call']:g}",
        ]
        for r in result["rows"]
    ]
    calls = result["rows"][0]["calls"] if result["rows"] else 0
    out = report.table(
        f"5. With the OpenTelemetry SDK (spans dropped, metrics in memory): sequential GETs via Envoy "
        f"({calls:,} calls per row, µs)",
        ["client", "row", "wall", "ratio vs plain", "CPU/call", "CPU added", "spans/call"],
        rows,
    )
    d = result["decision_path_with_sdk"]
    out += f"\n  decision path with the SDK (recording span, traceparent injected): median {d['median_us']:.1f} µs"
    out += f", p99 {d['p99_us']:.1f} µs"
    return out
