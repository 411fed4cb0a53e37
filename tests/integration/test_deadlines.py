"""Deadlines on both routes, in threads and asyncio tasks at the same time, without leaking."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
import requests

from mesh_client import DeadlineExceeded, MeshTimeoutError, Route, call_info, deadline, time_left

from .conftest import MeshWorld

ROUTES = [Route.ENVOY, Route.HAPROXY]
BUDGETS = [0.25, 0.4, 0.55, 0.7]  # all below the service's 1 s timeout, so the deadline decides


def timed_out(result: Any) -> bool:
    """A timeout in the route's shape: Envoy's 504 response or the client's own timeout error."""
    if isinstance(result, BaseException):
        return isinstance(result, MeshTimeoutError)
    info = call_info(result)
    return result.status_code == 504 and info is not None and info.envoy_error == "timeout"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_threads_each_get_their_own_deadline(world: MeshWorld, route: Route, key: str) -> None:
    world.set_route(route)
    barrier = threading.Barrier(len(BUDGETS))
    results: dict[float, tuple[float, Any, float | None]] = {}

    def worker(budget: float) -> None:
        session = world.mesh.requests_session()
        barrier.wait(5)
        with deadline(budget):
            started = time.monotonic()
            try:
                outcome: Any = session.get(f"http://users/slow?sleep=1500&key={key}-{budget}")
            except requests.RequestException as exc:
                outcome = exc
            results[budget] = (time.monotonic() - started, outcome, time_left())
        session.close()

    threads = [threading.Thread(target=worker, args=(b,)) for b in BUDGETS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert time_left() is None  # nothing leaked into the test's own context
    for budget in BUDGETS:
        elapsed, outcome, _ = results[budget]
        assert timed_out(outcome), outcome
        assert budget - 0.05 <= elapsed <= budget + 0.3, f"budget {budget} s, took {elapsed:.3f} s"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_asyncio_tasks_each_get_their_own_deadline(world: MeshWorld, route: Route, key: str) -> None:
    world.set_route(route)

    async def one(client: httpx.AsyncClient, budget: float) -> tuple[float, Any]:
        with deadline(budget):
            started = time.monotonic()
            try:
                outcome: Any = await client.get(f"http://users/slow?sleep=1500&key={key}-{budget}")
            except httpx.HTTPError as exc:
                outcome = exc
            return time.monotonic() - started, outcome

    async def main() -> list[tuple[float, Any]]:
        async with world.mesh.httpx_async_client() as client:
            return await asyncio.gather(*(one(client, b) for b in BUDGETS))

    for budget, (elapsed, outcome) in zip(BUDGETS, asyncio.run(main()), strict=True):
        assert timed_out(outcome), outcome
        assert budget - 0.05 <= elapsed <= budget + 0.3, f"budget {budget} s, took {elapsed:.3f} s"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_passed_deadline_sends_nothing(world: MeshWorld, route: Route, key: str) -> None:
    world.set_route(route)
    session = world.mesh.requests_session()
    with deadline(0.001) as at:
        while time.monotonic() <= at:  # bounded: 1 ms
            pass
        with pytest.raises(requests.Timeout) as raised:
            session.get(f"http://users/never?key={key}")
    assert isinstance(raised.value, DeadlineExceeded)
    assert world.backend.records(key) == []
