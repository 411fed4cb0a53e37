"""Section 9: what a call costs with and without routing overrides in force (issue 15).

- **decision path** (no I/O): ``mesh.start_call(users, "GET")`` then ``run.advance(None)``, as in
  section 2, per call, medians of interleaved rounds, for: no override in force; an override for
  another service (carried on only); an override sending ``users`` to its variant on the Envoy
  route (``x-mesh-variant``) and on the HAProxy route (the variant's port). The figures added are
  the median, over rounds, of each case minus the no-override block of the same round. Target
  (the issue's): at most 3 µs added with an override in force.
- **the hook without an override**: what every call pays for the feature when none is in force
  (one context-variable read), in ns. Targets: no measurable cost, as issue 15 put it (below
  0.1 µs) and as issue 19 does (no more than this run's noise on the decision path: the median
  difference between two identical blocks of the no-override case, plain vs plain).
- **end to end**: the same keep-alive GET through the real Envoy with requests, without and with
  an override in force (for another service: the header travels, the route is unchanged);
  reported, not a target (the network's noise is far larger than the difference).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from mesh_client import Mesh, Route, route_overrides
from mesh_client.overrides import in_force
from mesh_client.routing import RouteDecision
from mesh_client.variants import VariantConfig, Variants

from . import report
from .measure import noise_band_us
from .world import World

TARGET_ADDED_US = 3.0
TARGET_HOOK_US = 0.1
CASES: dict[str, dict[str, str] | None] = {
    "no override": None,
    "override for another service": {"search": "pr-12"},
    "users -> canary, Envoy route": {"users": "canary"},
    "users -> canary, HAProxy route": {"users": "canary"},
}


class _FixedRouter:
    """Answers one route for every service (the flag's evaluation is section 2's)."""

    def __init__(self) -> None:
        self.route = Route.ENVOY

    def decide(self, service: str) -> RouteDecision:
        return RouteDecision(self.route, f"benchmark route {self.route.value}")

    def close(self) -> None:
        pass


def _per_call_us(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls / 1000


def _in(overrides: dict[str, str] | None, fn: Callable[[], float]) -> float:
    if overrides is None:
        return fn()
    with route_overrides(overrides):
        return fn()


def run(world: World, *, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    users = world.config.services["users"]
    canary = VariantConfig("canary", haproxy=world.config.services["legacy"].haproxy)
    services = {**world.config.services, "users": dataclasses.replace(users, variants=Variants([canary]))}
    config = dataclasses.replace(world.config, services=services)
    router = _FixedRouter()
    per_case: dict[str, list[float]] = {name: [] for name in CASES}
    with Mesh(config, router=router) as mesh:
        svc = mesh.config.services["users"]

        def decide() -> None:
            mesh.start_call(svc, "GET").advance(None)

        for _ in range(rounds * 3 + 1):  # (the first round warms up)
            for name, overrides in CASES.items():
                router.route = Route.HAPROXY if "HAProxy" in name else Route.ENVOY
                per_case[name].append(_in(overrides, lambda: _per_call_us(decide, calls * 3)))
        hook = [_per_call_us(in_force, calls * 100) for _ in range(rounds)]
        router.route = Route.ENVOY
        noise = noise_band_us(decide, rounds=max(6, rounds * 3), calls=calls * 3)
    medians = {name: statistics.median(values[1:]) for name, values in per_case.items()}
    # each case against the no-override block of the same round (the machine's drift cancels out)
    base = per_case["no override"]
    added = {
        name: statistics.median(v - b for v, b in zip(values[1:], base[1:], strict=True))
        for name, values in per_case.items()
        if name != "no override"
    }
    end_to_end = _end_to_end(world, rounds=rounds, calls=calls, warmup=warmup)
    targets = [
        report.at_most(
            "9", "override in force: decision path added per call", max(added.values()), TARGET_ADDED_US, "µs", issue=15
        ),
        report.below("9", "override hook with none in force", statistics.median(hook), TARGET_HOOK_US, "µs", issue=15),
        report.at_most(
            "9",
            "overrides unused: hook per call vs this run's noise (decision path, plain vs plain)",
            statistics.median(hook) * 1000,
            noise * 1000,
            "ns",
            issue=19,
        ),
    ]
    return {
        "decision_us": medians,
        "added_us": added,
        "hook_without_override_us": statistics.median(hook),
        "decision_noise_band_us": noise,
        "end_to_end_us": end_to_end,
        "targets": targets,
    }


def _end_to_end(world: World, *, rounds: int, calls: int, warmup: int) -> dict[str, float]:
    """Median wall time per keep-alive GET via the real Envoy, without and with an override."""
    session = world.mesh.requests_session()

    def call() -> None:
        if session.get("http://users/ok").status_code != 200:
            raise RuntimeError("benchmark call failed")

    try:
        _per_call_us(call, warmup)
        walls: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(rounds):
            walls["without"].append(_per_call_us(call, calls))
            walls["with"].append(_in({"search": "pr-12"}, lambda: _per_call_us(call, calls)))
    finally:
        session.close()
    return {name: statistics.median(values) for name, values in walls.items()}


def render(result: dict[str, Any]) -> str:
    rows = [[name, value, result["added_us"].get(name, 0.0)] for name, value in result["decision_us"].items()]
    text = report.table(
        "9. Routing overrides: decision path per call (µs), start_call + advance(None)",
        ["case", "per call", "added"],
        rows,
    )
    e2e = result["end_to_end_us"]
    return (
        text
        + f"\n  the hook with no override in force: {result['hook_without_override_us'] * 1000:.0f} ns per call; "
        + f"this run's noise on the decision path (two identical blocks): {result['decision_noise_band_us'] * 1000:.0f}"
        + " ns"
        + f"\n  end to end via Envoy (requests, keep-alive): {e2e['without']:.0f} µs without, "
        + f"{e2e['with']:.0f} µs with an override in force (median per call)"
    )
