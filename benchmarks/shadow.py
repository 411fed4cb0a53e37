"""Section 8: the caller-side cost of a shadowed call (shadow reads, issue 16).

Two figures, both CPU time of the **caller's thread** (``time.thread_time``), medians:

- **the hook** (the target, <= 20 µs): what shadowing does on the caller's thread, measured with
  no network: ``Mesh.start_call`` at stage ``shadow`` picking the call for a copy, minus the same
  at stage ``off``, plus ``ShadowCall.submit`` taking the answer and handing the copy to the pool.
- **end to end**: the same keep-alive GET to the ``legacy`` service (real HAProxy and backend),
  stage ``off`` against stage ``shadow`` with ``sample = 1.0``, every call copied via the real
  Envoy and compared in the pool; rounds alternate, and the copies of a block are drained before
  the next (untimed). This includes what the copies' threads cost the caller's thread while they
  run beside it (they share the GIL, and on two cores the CPU with Envoy, HAProxy and the
  backend): reported, not a target. Wall-clock median and p99 per call are shown beside it.
- **unused** (issue 19: no measurable cost): what a call at stage ``off`` pays for the feature,
  the copy-order read of ``start_call``, timed in a loop, against this run's noise on the decision
  path at stage ``off`` (the median difference between two identical blocks, plain vs plain).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

from mesh_client import Mesh
from mesh_client.routing import RouteDecision
from mesh_client.shadow.compare import Answer

from . import report
from .measure import loop_mean_us, noise_band_us, percentile
from .world import World

#: the issue's target: CPU added on the caller's thread by a shadowed call
TARGET_US = 20.0
SERVICE = "legacy"


class _StageRouter:
    """Answers one migration stage for every service (the flag's evaluation is not measured here:
    section 2 covers it)."""

    def __init__(self) -> None:
        self.stage = "off"

    def decide(self, service: str) -> RouteDecision:
        return RouteDecision(_route(self.stage), f"benchmark stage {self.stage}", self.stage, self.stage)

    def close(self) -> None:
        pass


def _route(stage: str) -> Any:
    from mesh_client.shadow.stages import STAGES

    return STAGES[stage][1]


def _block(call: Callable[[], None], calls: int) -> tuple[float, list[float]]:
    """(caller-thread CPU per call in µs, each call's wall time in µs)."""
    walls = []
    cpu0 = time.thread_time()
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        walls.append((time.perf_counter() - t0) * 1e6)
    return (time.thread_time() - cpu0) / calls * 1e6, walls


def run(world: World, *, rounds: int, calls: int, warmup: int) -> dict[str, Any]:
    services = {
        name: dataclasses.replace(svc, shadow=dataclasses.replace(svc.shadow, sample=1.0, max_in_flight=1024))
        for name, svc in world.config.services.items()
    }
    config = dataclasses.replace(world.config, services=services)
    router = _StageRouter()
    results: dict[str, Any] = {}
    with Mesh(config, router=router) as mesh:
        for kind in ("requests", "httpx"):
            client: Any = mesh.requests_session() if kind == "requests" else mesh.httpx_client()

            def call(client: Any = client) -> None:
                if client.get(f"http://{SERVICE}/ok").status_code != 200:
                    raise RuntimeError("benchmark call failed")

            cpu: dict[str, list[float]] = {"off": [], "shadow": []}
            walls: dict[str, list[float]] = {"off": [], "shadow": []}
            for stage in ("off", "shadow"):
                router.stage = stage
                _block(call, warmup)
                mesh.shadow_drain(30)
            for _ in range(rounds):
                for stage in ("off", "shadow"):
                    router.stage = stage
                    per_call, block_walls = _block(call, calls)
                    cpu[stage].append(per_call)
                    walls[stage] += block_walls
                    if not mesh.shadow_drain(30):
                        raise RuntimeError("the copies did not finish within 30 s")
            stats = mesh.shadow_stats(SERVICE)
            if stats.errors or stats.mismatched or stats.skipped:
                raise RuntimeError(f"the copies did not all compare equal: {stats}")
            client.close()
            off, shadow = statistics.median(cpu["off"]), statistics.median(cpu["shadow"])
            results[kind] = {
                "cpu_off_us": off,
                "cpu_shadow_us": shadow,
                "cpu_added_us": shadow - off,
                "wall_off_median_us": statistics.median(walls["off"]),
                "wall_shadow_median_us": statistics.median(walls["shadow"]),
                "wall_off_p99_us": percentile(walls["off"], 99),
                "wall_shadow_p99_us": percentile(walls["shadow"], 99),
                "copies_compared": stats.compared,
            }
        results["hook"] = _hook_alone(mesh, router, calls * rounds)
        unused, noise = _unused(mesh, router, rounds=rounds, calls=calls)
    hook = results.pop("hook")
    targets = [
        report.at_most("8", "shadow hook, caller-thread CPU per shadowed call", hook, TARGET_US, "µs", issue=16),
        report.at_most(
            "8",
            "shadowing unused: hook per call vs this run's noise (decision path, plain vs plain)",
            unused * 1000,
            noise * 1000,
            "ns",
            issue=19,
        ),
    ]
    return {
        "by_client": results,
        "hook_us": hook,
        "unused_hook_us": unused,
        "decision_noise_band_us": noise,
        "targets": targets,
    }


def _unused(mesh: Mesh, router: _StageRouter, *, rounds: int, calls: int) -> tuple[float, float]:
    """What a call pays for shadow reads at stage ``off`` (µs per call): the copy-order read
    ``start_call`` makes on every call (the stage checks after it are a comparison each), timed in
    a loop; and this run's noise on the decision path at that stage (two identical blocks)."""
    from mesh_client.shadow.runner import copy_order

    router.stage = "off"
    service = mesh.config.services[SERVICE]

    def decide() -> None:
        mesh.start_call(service, "GET").advance(None)

    hook = statistics.median(loop_mean_us(copy_order, calls * 100) for _ in range(max(3, rounds)))
    return hook, noise_band_us(decide, rounds=max(6, rounds * 3), calls=calls * 3)


def _hook_alone(mesh: Mesh, router: _StageRouter, calls: int) -> float:
    """CPU per call of start_call + ShadowCall.submit at stage shadow minus start_call at stage
    off (the copy answers at once, without the network)."""
    from mesh_client.core import Done
    from mesh_client.info import CallInfo

    service = mesh.config.services[SERVICE]
    answer = Answer(status=200, body=b"ok")
    done = Done(None, CallInfo(SERVICE, _route("shadow"), 1))

    def answer_of(_response: Any, _names: tuple[str, ...]) -> Answer:
        return answer

    def one(stage: str) -> float:
        router.stage = stage
        cpu0 = time.thread_time()
        for _ in range(calls):
            run = mesh.start_call(service, "GET")
            if run.shadow is not None:
                run.shadow.submit(done, answer_of, lambda: answer, "/ok")
        per_call = (time.thread_time() - cpu0) / calls * 1e6
        mesh.shadow_drain(30)
        return per_call

    measured = [one("shadow") - one("off") for _ in range(5)]
    return statistics.median(measured)


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            kind,
            r["cpu_off_us"],
            r["cpu_shadow_us"],
            r["cpu_added_us"],
            r["wall_off_median_us"],
            r["wall_shadow_median_us"],
            r["wall_off_p99_us"],
            r["wall_shadow_p99_us"],
        ]
        for kind, r in result["by_client"].items()
    ]
    header = ["client", "cpu off", "cpu shadow", "added", "wall p50 off", "shadow", "wall p99 off", "shadow"]
    text = report.table(
        "8. Shadow reads, end to end: caller-thread CPU and wall time per call (µs), via HAProxy, every call copied "
        "via Envoy",
        header,
        rows,
    )
    hook = f"\n  the shadow hook on the caller's thread (start_call + submit, no network): {result['hook_us']:.1f} µs"
    unused = (
        f"\n  unused (stage off): {result['unused_hook_us'] * 1000:.0f} ns per call; this run's noise on the "
        f"decision path (two identical blocks): {result['decision_noise_band_us'] * 1000:.0f} ns"
    )
    return text + hook + " per shadowed call" + unused
