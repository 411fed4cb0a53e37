"""The async httpx attempt's deadline (mesh_client.http._async_deadline): the attempts of one event
loop share one timer, and each is still cut off at its own time."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

import pytest

from mesh_client.http._async_deadline import attempt_deadline

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="the shared timer needs Task.uncancel()")


async def _attempt(seconds: float, hold: asyncio.Event) -> float:
    """How long an attempt bounded by ``seconds`` ran before its TimeoutError (it waits for
    ``hold``, which is never set)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError), attempt_deadline(seconds):
        await hold.wait()
    return loop.time() - start


def test_each_attempt_is_cut_off_at_its_own_deadline_whatever_the_order_they_began_in() -> None:
    async def main() -> list[float]:
        never = asyncio.Event()
        # the long one first: the shorter ones that follow must move the shared timer forward
        return list(await asyncio.gather(_attempt(0.30, never), _attempt(0.05, never), _attempt(0.15, never)))

    long_, short, middle = asyncio.run(main())
    assert 0.05 <= short < 0.05 + 0.08
    assert 0.15 <= middle < 0.15 + 0.08
    assert 0.30 <= long_ < 0.30 + 0.08


def test_attempts_done_in_time_are_not_cancelled_when_their_deadline_comes() -> None:
    async def main() -> tuple[str, float]:
        never = asyncio.Event()
        with attempt_deadline(0.02):  # done at once: its deadline passes while the next one waits
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # (the first one's deadline has passed: nothing may be cancelled)
        with attempt_deadline(1.0):
            await asyncio.sleep(0)
        return "in time", await _attempt(0.05, never)

    outcome, cut = asyncio.run(main())
    assert outcome == "in time"
    assert 0.05 <= cut < 0.05 + 0.08


def test_attempts_in_flight_share_one_timer_and_finished_ones_keep_no_task_alive() -> None:
    async def main() -> tuple[int, list[weakref.ref[asyncio.Task[None]]]]:
        go = asyncio.Event()
        entered = 0

        async def one() -> None:
            nonlocal entered
            with attempt_deadline(30.0):
                entered += 1
                await go.wait()

        tasks = [asyncio.ensure_future(one()) for _ in range(1000)]
        while entered < len(tasks):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        timers = len([h for h in loop._scheduled if not h.cancelled()])  # type: ignore[attr-defined]
        go.set()
        await asyncio.gather(*tasks)
        refs = [weakref.ref(task) for task in tasks]
        del tasks
        return timers, refs

    timers, refs = asyncio.run(main())
    gc.collect()
    assert timers == 1  # (a timer per attempt: 1,000)
    assert [r for r in refs if r() is not None] == []


def test_a_cancellation_from_elsewhere_stays_a_cancellation_with_other_attempts_waiting() -> None:
    async def main() -> tuple[bool, float]:
        never = asyncio.Event()
        started = asyncio.Event()

        async def victim() -> None:
            with attempt_deadline(5.0):
                started.set()
                await never.wait()

        other = asyncio.ensure_future(_attempt(0.05, never))
        task = asyncio.ensure_future(victim())
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return cancelled, await other

    cancelled, cut = asyncio.run(main())
    assert cancelled
    assert 0.05 <= cut < 0.05 + 0.08


def test_attempts_finished_long_before_their_deadline_do_not_pile_up() -> None:
    import tracemalloc

    async def main() -> int:
        async def calls(n: int) -> None:
            for _ in range(n):
                with attempt_deadline(30.0):  # no deadline comes during the test: nothing fires
                    await asyncio.sleep(0)

        async def held_open(release: asyncio.Event) -> None:
            with attempt_deadline(20.0):  # due first, open throughout: the others finish behind it
                await release.wait()

        await calls(200)  # (the loop's own structures made)
        release = asyncio.Event()
        oldest = asyncio.ensure_future(held_open(release))
        await asyncio.sleep(0)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await calls(20_000)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        release.set()
        await oldest
        return grown

    grown = asyncio.run(main())
    # kept until their deadlines, 20,000 finished entries would hold about 2.5 MB
    assert grown < 100_000


def test_loops_in_two_threads_each_keep_their_own_deadlines() -> None:
    import threading

    def run_loop(results: list[float]) -> None:
        async def main() -> None:
            never = asyncio.Event()
            for _ in range(5):
                for _ in range(50):  # attempts done in time, interleaved with the other thread's
                    with attempt_deadline(5.0):
                        await asyncio.sleep(0)
                results.append(await _attempt(0.03, never))

        asyncio.run(main())

    results: tuple[list[float], list[float]] = ([], [])
    threads = [threading.Thread(target=run_loop, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for cuts in results:
        assert len(cuts) == 5
        assert all(0.03 <= cut < 0.03 + 0.08 for cut in cuts), cuts


def test_a_finished_event_loop_is_not_kept_alive_by_its_deadlines() -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def one() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        with attempt_deadline(30.0):  # (its timer still waits in the loop when the loop closes)
            await asyncio.sleep(0)

    for _ in range(3):
        asyncio.run(one())
    gc.collect()
    assert [ref for ref in loops if ref() is not None] == []
