"""Section 7: the test fixtures, ``fake_mesh`` against a real Envoy, on the same 100-call scenario.

The scenario (requests, Envoy route) is what a service's test suite exercises: 70 GETs answered
200 with a small JSON body, 20 that fail once with 503 and succeed on Envoy's retry (after its
jittered back-off), and 10 whose first try is slow and hits the 0.2 s per-try timeout before a
fast retry. The "plain" variant is the 70 plain calls alone. The real side runs it through a real Envoy (started
here, its start-up timed apart) to a real HTTP upstream scripted with the same replies
(:class:`~mesh_client.testing.upstream.ScriptedUpstream`); the fake side runs it on
:class:`~mesh_client.testing.FakeMesh`, set-up included. Rounds alternate the two sides.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_client import Mesh, call_info
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.sidecar import free_port, start_envoy
from mesh_client.testing import FakeMesh, Reply, reply
from mesh_client.testing.upstream import ScriptedUpstream

from . import report

CALLS = 100
OK = (reply(200, json={"id": 1, "name": "ada"}),)
FLAKY = (reply(503), reply(200, json={"id": 2}))
SLOW = (reply(200, delay=0.5), reply(200, json={"id": 3}))
MIXED = [FLAKY if i % 5 == 4 else SLOW if i % 10 == 2 else OK for i in range(CALLS)]
PLAIN = [OK] * 70


def scenario(mesh: Mesh, script: Callable[..., None], plan: list[tuple[Reply, ...]]) -> int:
    """The calls; returns the upstream attempts Envoy reported (a check both sides agree)."""
    attempts = 0
    with mesh.requests_session() as session:
        for i, replies in enumerate(plan):
            script(*replies)
            response = session.get(f"http://users/v1/users/{i}")
            if response.status_code != 200:
                raise RuntimeError(f"call {i}: status {response.status_code}")
            attempts += call_info(response).attempts
    return attempts


def registry(upstream: ScriptedUpstream) -> MeshConfig:
    data: dict[str, Any] = {
        "mesh": {
            "caller": "bench",
            "envoy_http": f"127.0.0.1:{free_port()}",
            "envoy_admin": f"127.0.0.1:{free_port()}",
            "default_route": "envoy",
        },
        "flags": {"source": "none"},
        "services": {
            "users": {
                "haproxy": f"127.0.0.1:{free_port()}",
                "endpoints": [str(upstream.address)],
                "timeout": 1.0,
                "per_try_timeout": 0.2,
                "retries": 2,
                "retry_on": ["gateway-error", "reset"],
            }
        },
    }
    return load_mapping(data, source="fixtures benchmark")


def run_fake(config: MeshConfig, plan: list[tuple[Reply, ...]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    with FakeMesh() as fake:
        mesh = fake.mesh(config)

        def script(*replies: Reply) -> None:
            fake.reset()
            fake.add("users", *replies)

        attempts = scenario(mesh, script, plan)
    return time.perf_counter() - t0, attempts


def run_real(config: MeshConfig, upstream: ScriptedUpstream, plan: list[tuple[Reply, ...]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    with Mesh(config) as mesh:
        attempts = scenario(mesh, upstream.script, plan)
    return time.perf_counter() - t0, attempts


def _median_ms(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] * 1000


def run(*, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mesh-bench-fixtures-") as folder, ScriptedUpstream("users") as upstream:
        config = registry(upstream)
        t0 = time.perf_counter()
        envoy = start_envoy(config, Path(folder) / "envoy")
        startup = time.perf_counter() - t0
        times: dict[str, list[float]] = {"fake": [], "real": [], "fake_plain": [], "real_plain": []}
        attempts: dict[str, int] = {}
        try:
            for _ in range(rounds):
                for name, plan in (("", MIXED), ("_plain", PLAIN)):
                    seconds, attempts["fake" + name] = run_fake(config, plan)
                    times["fake" + name].append(seconds)
                    seconds, attempts["real" + name] = run_real(config, upstream, plan)
                    times["real" + name].append(seconds)
                    if attempts["fake" + name] != attempts["real" + name]:
                        raise RuntimeError(f"fake and real disagree on upstream attempts: {attempts}")
        finally:
            envoy.stop()
    ms = {name: _median_ms(values) for name, values in times.items()}
    ratio = ms["real"] / ms["fake"]
    return {
        "calls": CALLS,
        "rounds": rounds,
        "attempts": attempts["fake"],
        "fake_ms": ms["fake"],
        "real_ms": ms["real"],
        "fake_plain_ms": ms["fake_plain"],
        "real_plain_ms": ms["real_plain"],
        "plain_ratio": ms["real_plain"] / ms["fake_plain"],
        "envoy_startup_ms": startup * 1000,
        "ratio": ratio,
        "ratio_with_startup": (ms["real"] + startup * 1000) / ms["fake"],
        "targets": [
            report.at_least(
                "7", "fixtures: real Envoy / fake_mesh, 100 calls", ratio, report.FIXTURE_SPEEDUP, "x", issue=8
            )
        ],
    }


def render(r: dict[str, Any]) -> str:
    rows = [
        ["fake_mesh (set-up included)", r["fake_ms"], r["fake_plain_ms"], ""],
        [
            "real Envoy + upstream",
            r["real_ms"],
            r["real_plain_ms"],
            f"+ {report.fmt(r['envoy_startup_ms'], 0)} ms Envoy start-up",
        ],
        ["real / fake", f"{report.fmt(r['ratio'])}x", f"{report.fmt(r['plain_ratio'])}x", ""],
    ]
    return report.table(
        f"7. Fixtures: the same {r['calls']}-call scenario ({r['attempts']} upstream attempts), median of "
        f"{r['rounds']} rounds: real/fake {report.fmt(r['ratio'])}x ({report.fmt(r['ratio_with_startup'])}x "
        "with Envoy's start-up)",
        ["side", "ms, 100-call scenario", "ms, 70 plain calls", ""],
        rows,
    )
