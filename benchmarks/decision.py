"""Section 2: the decision path alone, no I/O.

One iteration is what every wrapper does before it sends: ``run = mesh.start_call(service, "GET")``
(call options and policy merge, the flag evaluation, the call's span, the context headers) then
``run.advance(None)`` (the first attempt: x-envoy-* policy headers, Host, timeout). A breakdown
times the parts on their own, and cProfile shows where the time goes.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from . import report
from .measure import percentile
from .world import World

#: the breakdown's row for one LaunchDarkly evaluation (issue 19's yardstick for the whole path)
LAUNCHDARKLY = "  of which LaunchDarkly variation_detail()"


def _per_call_us(fn: Callable[[], Any], n: int) -> list[float]:
    clock = time.perf_counter_ns
    out = [0.0] * n
    for i in range(n):
        t0 = clock()
        fn()
        out[i] = (clock() - t0) / 1000
    return out


def _loop_mean_us(fn: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n / 1000


def _parts(world: World) -> dict[str, Callable[[], Any]]:
    """The steps of the decision path, each callable on its own (internal APIs: a step whose
    API changed is reported as skipped, not failed)."""
    from mesh_client.context import outbound_headers
    from mesh_client.policy import current_options
    from mesh_client.telemetry import CallTelemetry

    mesh = world.mesh
    svc = world.config.services["users"]
    router = mesh.router
    run = mesh.start_call(svc, "GET")
    run.abort(RuntimeError("probe"))
    ctx_tel = CallTelemetry("users", "GET")
    ctx = ctx_tel.propagation_context()

    def call_run_and_advance() -> None:
        type(run)(
            run.plan, "GET", svc.policy, run.route, run.route_reason, context_headers=run.context_headers
        ).advance(None)

    parts: dict[str, Callable[[], Any]] = {
        "flag evaluation (router.decide)": lambda: router.decide("users"),
        "call options + policy merge": lambda: current_options().apply(svc.policy),
        "span start (CallTelemetry)": lambda: CallTelemetry("users", "GET"),
        "context headers (outbound_headers)": lambda: outbound_headers(ctx),
        "CallRun + advance(None)": call_run_and_advance,
    }
    client = mesh.flag_client
    if client is not None:
        ld_ctx = router._context("users")  # type: ignore[attr-defined]
        parts[LAUNCHDARKLY] = lambda: client.variation_detail("mesh-route-users", ld_ctx, None)
    return parts


def profile(world: World, n: int, top: int = 15) -> dict[str, Any]:
    mesh, svc = world.mesh, world.config.services["users"]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        mesh.start_call(svc, "GET").advance(None)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({func})",
                "calls_per_decision": ncalls / n,
                "tottime_us_per_decision": tottime / n * 1e6,
                "cumtime_us_per_decision": cumtime / n * 1e6,
            }
        )
    rows.sort(key=lambda r: r["tottime_us_per_decision"], reverse=True)
    total = sum(r["tottime_us_per_decision"] for r in rows)
    return {"decisions": n, "profiled_us_per_decision": total, "top": rows[:top]}


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/mesh_client/", "/lib/python"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("mesh_client/" + tail) if marker == "/mesh_client/" else tail
    return filename


def run(world: World, *, calls: int, profile_calls: int) -> dict[str, Any]:
    mesh, svc = world.mesh, world.config.services["users"]

    def decide() -> None:
        mesh.start_call(svc, "GET").advance(None)

    _per_call_us(decide, min(calls, 2000))  # warm-up
    result: dict[str, Any] = {"calls": calls, "parts": []}
    try:
        parts = _parts(world)
    except Exception as exc:  # an internal API moved: report, do not fail the suite
        result["parts_skipped"] = repr(exc)
        parts = {}
    # the whole and its parts run interleaved in rounds (order rotated): drift hits all alike
    whole = "start_call + advance(None)"
    working: dict[str, Callable[[], Any]] = {whole: decide}
    for name, fn in parts.items():
        try:
            _per_call_us(fn, 500)  # warm-up, and a check that the internal API still works
        except Exception as exc:
            result["parts"].append({"part": name, "skipped": repr(exc)})
            continue
        working[name] = fn
    samples_by_part: dict[str, list[float]] = {name: [] for name in working}
    rounds = 10
    names = list(working)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)] if names else []:
            n = calls if name == whole else min(calls, 10_000)
            samples_by_part[name] += _per_call_us(working[name], max(1, n // rounds))
    samples = samples_by_part.pop(whole)
    result.update(median_us=statistics.median(samples), p99_us=percentile(samples, 99))
    result["loop_mean_us"] = _loop_mean_us(decide, calls)
    for name, part in samples_by_part.items():
        result["parts"].append({"part": name, "median_us": statistics.median(part), "p99_us": percentile(part, 99)})
    result["profile"] = profile(world, profile_calls)
    ld = next((p["median_us"] for p in result["parts"] if p["part"] == LAUNCHDARKLY and "median_us" in p), None)
    result["launchdarkly_median_us"] = ld
    # NaN (reported as "not measured") when the mesh has no LaunchDarkly client to time
    result["vs_launchdarkly"] = result["median_us"] / ld if ld else float("nan")
    result["targets"] = [
        report.below("2", "decision path median (µs)", result["median_us"], report.DECISION_PATH_US, issue=8),
        report.at_most(
            "2",
            "decision path / one LaunchDarkly variation_detail() (medians)",
            result["vs_launchdarkly"],
            report.DECISION_VS_LAUNCHDARKLY,
            "x",
            issue=19,
        ),
    ]
    return result


def render(result: dict[str, Any], *, show_profile: bool) -> str:
    rows: list[list[object]] = [
        ["start_call + advance(None)", result["median_us"], result["p99_us"], result["loop_mean_us"]]
    ]
    for p in result["parts"]:
        if "skipped" in p:
            rows.append([p["part"], "skipped", p["skipped"][:60], ""])
        else:
            rows.append([p["part"], p["median_us"], p["p99_us"], ""])
    ratio = result.get("vs_launchdarkly", float("nan"))
    out = report.table(
        f"2. Decision path, no I/O ({result['calls']:,} calls, µs per call)",
        ["step", "median", "p99", "loop mean"],
        rows,
        2,
    )
    out += f"\n  the whole path / one LaunchDarkly variation_detail(), medians: {report.fmt(ratio, 3)}x"
    if show_profile:
        prof = result["profile"]
        prof_rows = [
            [
                r["function"],
                f"{r['calls_per_decision']:g}",
                r["tottime_us_per_decision"],
                r["cumtime_us_per_decision"],
            ]
            for r in prof["top"]
        ]
        out += "\n\n" + report.table(
            f"   cProfile, top {len(prof_rows)} by own time ({prof['decisions']:,} decisions; "
            f"µs per decision under the profiler, total {prof['profiled_us_per_decision']:.1f})",
            ["function", "calls", "own", "cumulative"],
            prof_rows,
            2,
        )
    return out
