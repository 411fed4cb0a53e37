"""The clock behind every timing decision: deadlines, timeouts, back-off, budgets, the circuit.

Real time by default. :func:`use_virtual_clock` swaps in a :class:`VirtualClock` (the
``fake_mesh`` fixture does), so a test of a 30 s timeout takes microseconds: waiting on a virtual
clock moves that clock on instead of sleeping.

Virtual time is kept per execution context (a :mod:`contextvars` offset on top of a shared base):
asyncio tasks started together each wait on their own timeline, as concurrent calls overlap in
real time, and a thread starts at the shared base. :meth:`VirtualClock.advance` moves everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
from collections.abc import Iterator

__all__ = ["VirtualClock", "async_sleep", "era", "monotonic", "sleep", "use_virtual_clock", "wall"]

_ids = itertools.count()


class VirtualClock:
    """A monotonic clock that moves only when code waits on it or a test advances it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._base = start
        self._start = start
        self._offset: contextvars.ContextVar[float] = contextvars.ContextVar(
            f"mesh_client.clock.{next(_ids)}", default=0.0
        )

    def now(self) -> float:
        """The current virtual time, in seconds, as this task or thread sees it."""
        return self._base + self._offset.get()

    def wait(self, seconds: float) -> None:
        """Let ``seconds`` pass for the current task or thread (no real sleep)."""
        if seconds > 0:
            self._offset.set(self._offset.get() + seconds)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for everyone (budgets refill, circuits reopen, deadlines near)."""
        if seconds < 0:
            raise ValueError(f"time only moves forward: advance({seconds!r})")
        self._base += seconds

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the clock was made, as this task or thread sees them."""
        return self.now() - self._start


_virtual: VirtualClock | None = None
#: bumped whenever a virtual clock starts or stops being used (see :func:`era`)
_era = 0


def era() -> int:
    """A number that changes whenever the clock is switched (to or from a virtual clock). Times read
    in one era mean nothing in another: the retry budgets and sidecar circuits of a mesh that
    outlives a ``fake_mesh`` test start afresh when they see a new era."""
    return _era


def monotonic() -> float:
    """:func:`time.monotonic`, or the virtual clock's time while one is in use."""
    v = _virtual
    return time.monotonic() if v is None else v.now()


def wall() -> float:
    """:func:`time.time`, moved on by the virtual time elapsed while a virtual clock is in use."""
    v = _virtual
    return time.time() if v is None else time.time() + v.elapsed


def sleep(seconds: float) -> None:
    """:func:`time.sleep`, or a virtual wait."""
    v = _virtual
    if v is None:
        time.sleep(seconds)
    else:
        v.wait(seconds)


async def async_sleep(seconds: float) -> None:
    """:func:`asyncio.sleep`, or a virtual wait (that still lets other tasks run)."""
    v = _virtual
    if v is None:
        await asyncio.sleep(seconds)
    else:
        v.wait(seconds)
        await asyncio.sleep(0)


@contextlib.contextmanager
def use_virtual_clock(clock: VirtualClock | None = None) -> Iterator[VirtualClock]:
    """Run the block on a virtual clock (a new one unless given). Not nestable across threads:
    one virtual clock at a time per process, as one test runs at a time."""
    global _virtual, _era
    previous, _virtual = _virtual, clock if clock is not None else VirtualClock()
    _era += 1
    try:
        yield _virtual
    finally:
        _virtual = previous
        _era += 1
