"""The one deadline of an async httpx attempt: a pool wait, connect, send, wait and body that each
stay within httpx's per-phase timeouts can still add up past the attempt's time, so the whole
attempt runs in a block that raises ``TimeoutError`` when that time is up (see
:func:`attempt_deadline`)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import sys
import weakref
from collections.abc import Callable
from typing import Any

try:  # which async library runs the task (httpx's own test); without it, anyio decides
    import sniffio as _sniffio
except ImportError:  # pragma: no cover - sniffio comes with httpx's dependencies nearly always
    _sniffio = None  # type: ignore[assignment]

__all__ = ["attempt_deadline"]


if sys.version_info >= (3, 11):  # Task.cancelling() and uncancel()

    class _LoopDeadlines:
        """The deadlines of one event loop's attempts, kept in a heap that one ``loop.call_at``
        timer serves: an attempt pushes its deadline and marks it done on leaving, and a timer is
        made only when a deadline comes before the one waited for. When it fires, it cancels
        every attempt whose deadline has come (and is not done), drops the done ones from the top,
        and waits for the earliest still running. So an attempt costs a ``heappush`` in place of
        a timer of its own (its ``TimerHandle``, its ``heappush`` into the loop's heap, its
        cancel), and the loop's own heap holds one entry for all of them (or a few), while each attempt is
        still cut off at its own deadline. Done entries wait in the heap until they reach its top
        or, once they are more than half of it (and over :data:`_COMPACT_AT`), until it is
        rebuilt without them (asyncio's own rule for cancelled timers)."""

        __slots__ = ("_done", "_loop", "at", "heap", "serial")

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            # (weakly, and no timer handle kept: a handle holds its loop, and the loop's entry in
            # _LOOPS must not keep the loop alive)
            self._loop = weakref.ref(loop)
            self.heap: list[tuple[float, int, _AsyncioDeadline]] = []
            self.serial = itertools.count()
            #: when the timer waited for fires (None: no timer is waited for). A timer made for a
            #: later time before an earlier deadline came is not cancelled: it fires as well, and
            #: finds what is due by then
            self.at: float | None = None
            self._done = 0  # how many entries in the heap are done

        def wait_for(self, when: float) -> None:
            """Have a timer fire at ``when`` (loop time)."""
            loop = self._loop()
            if loop is not None:  # (None only while the loop is being collected)
                self.at = when
                loop.call_at(when, self._fire, when)

        def _fire(self, when: float) -> None:
            if when == self.at:  # the timer waited for (not one made for a later time before)
                self.at = None
            heap = self.heap  # (the loop runs a timer at its time or a little before: ``when`` is due)
            while heap:
                due, _, deadline = heap[0]
                if deadline.task is not None and due > when:
                    if self.at is None:
                        self.wait_for(due)  # the earliest attempt still running
                    return
                heapq.heappop(heap)
                if deadline.task is not None:
                    deadline.expire()
                else:
                    self._done -= 1

        def left(self) -> None:
            """An attempt in the heap is done (left its block before its deadline). The done
            entries at the top go at once: an attempt done in the usual order (the oldest first)
            is dropped by its own block, so it dies young (a heap of done entries kept for long
            lives through collections into the garbage collector's older generations, which then
            collects them all more often); one done out of order waits as a done entry."""
            self._done += 1
            heap = self.heap
            while heap and heap[0][2].task is None:
                heapq.heappop(heap)
                self._done -= 1
            if self._done > _COMPACT_AT and self._done * 2 > len(heap):
                self.heap = [entry for entry in heap if entry[2].task is not None]
                heapq.heapify(self.heap)
                self._done = 0

    #: below this many done entries the heap is never rebuilt
    _COMPACT_AT = 100

    _LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDeadlines] = weakref.WeakKeyDictionary()
    #: (a weak reference to the loop last asked about, its deadlines): one tuple, so a thread
    #: running another loop never sees one's reference with the other's deadlines
    _last: tuple[Callable[[], object], _LoopDeadlines | None] = (lambda: None, None)

    def _loop_deadlines(loop: asyncio.AbstractEventLoop) -> _LoopDeadlines:
        global _last
        ref, deadlines = _last
        if ref() is loop and deadlines is not None:
            return deadlines
        deadlines = _LOOPS.get(loop)
        if deadlines is None:
            deadlines = _LOOPS[loop] = _LoopDeadlines(loop)
        _last = (weakref.ref(loop), deadlines)
        return deadlines

    class _AsyncioDeadline:
        """``anyio.fail_after(seconds)`` for a task on asyncio, at a fraction of its cost (an entry
        in the loop's :class:`_LoopDeadlines`): the task is cancelled when the time is up, and the
        ``CancelledError`` that ends the block becomes a ``TimeoutError``. The same rules as
        ``asyncio.timeout`` (Python 3.11+): a cancellation from elsewhere (``cancelling()`` above
        what it was on entry) stays a cancellation."""

        __slots__ = ("_cancelling", "_expired", "_loop_deadlines", "task")

        def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
            #: the attempt's task while it runs; None once the block is left (done)
            self.task: asyncio.Task[Any] | None = task
            self._expired = False
            self._cancelling = task.cancelling()
            loop = task.get_loop()
            deadlines = self._loop_deadlines = _loop_deadlines(loop)
            when = loop.time() + seconds
            heapq.heappush(deadlines.heap, (when, next(deadlines.serial), self))
            if deadlines.at is None or when < deadlines.at:
                deadlines.wait_for(when)

        def expire(self) -> None:
            self._expired = True
            assert self.task is not None
            self.task.cancel()

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            task, self.task = self.task, None  # (done: the heap keeps no task alive)
            if not self._expired:
                self._loop_deadlines.left()
            elif task is not None and task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def attempt_deadline(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """A block that raises ``TimeoutError`` when ``seconds`` pass: in an asyncio task a
    deadline sharing the loop's one timer (:class:`_AsyncioDeadline`, Python 3.11+); otherwise
    ``anyio.fail_after``."""
    if sys.version_info >= (3, 11) and _sniffio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no asyncio loop runs in this thread
            task = None
        # sniffio's own answer, in its order: what a library running on top of asyncio declares
        # (trio-asyncio...) comes first, then the running asyncio task
        declared = _sniffio.thread_local.name or _sniffio.current_async_library_cvar.get()
        if task is not None and declared in (None, "asyncio"):
            return _AsyncioDeadline(task, seconds)
    import anyio  # httpx's own dependency (httpcore runs on it)

    return anyio.fail_after(seconds)
