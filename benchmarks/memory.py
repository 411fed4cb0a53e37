"""Section 4: memory over many calls through one mesh requests session (Envoy route).

RSS (``/proc/self/statm``) and the number of objects the garbage collector tracks, after a
warm-up and then at checkpoints. The flag watcher runs throughout (file source, polled), and the
flag file is rewritten with a new version at every checkpoint, so flag reloads are part of the run.
The session's ``trust_env`` is off here (requests' per-call proxy lookup in the environment holds
no state and would only make the run longer).
"""

from __future__ import annotations

import gc
import os
import resource
import time
from typing import Any

from mesh_client.routing import write_flag_file

from . import report
from .world import FLAG_POLL_INTERVAL, World, flag_data

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: peak RSS is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _snapshot(calls: int, started: float) -> dict[str, Any]:
    gc.collect()
    return {
        "calls": calls,
        "rss_bytes": rss_bytes(),
        "gc_objects": len(gc.get_objects()),
        "at_s": time.monotonic() - started,
    }


def _flag_version(world: World) -> int | None:
    version = getattr(world.mesh.router, "flag_version", None)
    return version("users") if callable(version) else None


def _wait_for_flag_version(world: World, version: int, timeout: float) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until and _flag_version(world) != version:
        time.sleep(0.02)


def run(world: World, *, calls: int, warmup: int, checkpoints: int = 10) -> dict[str, Any]:
    session = world.mesh.requests_session()
    # requests re-reads proxy settings from the environment on every call when trust_env is on
    # (~0.3-0.5 ms here); that holds no state, so it is switched off to fit 100,000 calls in the run
    session.trust_env = False
    url = "http://users/ok"
    started = time.monotonic()
    try:
        for _ in range(warmup):
            session.get(url).raise_for_status()
        samples = [_snapshot(0, started)]
        chunk = calls // checkpoints
        done = 0
        version = 1
        for i in range(checkpoints):
            for _ in range(chunk):
                session.get(url).raise_for_status()
            done += chunk
            version = i + 2
            write_flag_file(world.flags_path, flag_data(version=version))  # a reload for the watcher
            if i == checkpoints - 1:  # let the watcher load the last version before the last snapshot
                _wait_for_flag_version(world, version, timeout=3 * FLAG_POLL_INTERVAL + 1)
            samples.append(_snapshot(done, started))
        route_seen = world.mesh.route_for("users").route.value
        flag_version = _flag_version(world)
    finally:
        session.close()
    first, middle, last = samples[0], samples[len(samples) // 2], samples[-1]
    growth = last["rss_bytes"] - first["rss_bytes"]
    per_call = growth / done if done else float("nan")
    second_half_calls = last["calls"] - middle["calls"]
    second_half = (last["rss_bytes"] - middle["rss_bytes"]) / second_half_calls if second_half_calls else float("nan")
    objects = last["gc_objects"] - first["gc_objects"]
    result = {
        "warmup_calls": warmup,
        "calls": done,
        "rss_after_warmup_mib": first["rss_bytes"] / 2**20,
        "rss_after_calls_mib": last["rss_bytes"] / 2**20,
        "rss_growth_kib": growth / 1024,
        "rss_growth_per_1000_calls_bytes": per_call * 1000,
        "rss_growth_per_call_second_half_bytes": second_half,
        "gc_objects_growth": objects,
        "flag_file_rewrites": checkpoints,
        "flag_version_written_last": version,
        "flag_version_seen_at_end": flag_version,
        "route_at_end": route_seen,
        "samples": samples,
    }
    result["targets"] = [
        report.below(
            "4",
            f"RSS growth per call, last {second_half_calls:,} of {done:,} calls (bytes)",
            second_half,
            report.MEMORY_BYTES_PER_CALL,
            issue=8,
        ),
        report.below(
            "4",
            f"gc-tracked objects added over {done:,} calls",
            objects,
            done / report.MEMORY_CALLS_PER_OBJECT,
            issue=8,
        ),
    ]
    return result


def render(result: dict[str, Any]) -> str:
    rows = [
        [
            f"{s['calls']:,}",
            s["rss_bytes"] / 2**20,
            (s["rss_bytes"] - result["samples"][0]["rss_bytes"]) / 1024,
            s["gc_objects"],
            s["at_s"],
        ]
        for s in result["samples"]
    ]
    out = report.table(
        f"4. Memory: mesh requests session via Envoy, {result['calls']:,} calls after {result['warmup_calls']:,} "
        f"warm-up (flag file rewritten at each checkpoint)",
        ["calls", "RSS MiB", "growth KiB", "gc objects", "time s"],
        rows,
        2,
    )
    out += (
        f"\n  RSS growth {result['rss_growth_kib']:.0f} KiB = {result['rss_growth_per_1000_calls_bytes']:.0f} bytes "
        f"per 1,000 calls ({result['rss_growth_per_call_second_half_bytes']:.2f} bytes per call over the second half); "
        f"gc-tracked objects {result['gc_objects_growth']:+d}; flag file rewritten {result['flag_file_rewrites']} "
        f"times, version seen at the end {result['flag_version_seen_at_end']} of "
        f"{result['flag_version_written_last']} (route {result['route_at_end']})"
    )
    return out
