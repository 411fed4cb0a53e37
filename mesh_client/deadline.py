"""Deadlines: how much time the current piece of work has left.

A deadline is an absolute point on the monotonic clock, kept in a contextvar so threads and
asyncio tasks each see their own. :func:`deadline` blocks nest and only ever shrink it. Every
mesh call uses ``min(policy timeout, time left)``; a call whose deadline has already passed raises
:class:`~mesh_client.DeadlineExceeded` without sending anything.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Final

from . import clock
from .policy import check_seconds

__all__ = ["current_deadline", "deadline", "time_left"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("mesh_client.deadline", default=None)


#: ``current_deadline()``: the current deadline as a :func:`mesh_client.clock.monotonic` value, or
#: None when there is none. The context variable's own ``get`` (asked on every call).
current_deadline: Final[Callable[[], float | None]] = _deadline.get


def time_left(now: float | None = None) -> float | None:
    """Seconds left before the current deadline (may be <= 0), or None when there is none."""
    at = _deadline.get()
    if at is None:
        return None
    return at - (clock.monotonic() if now is None else now)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Run the block with at most ``seconds`` left for all the mesh calls made inside it.

    An enclosing deadline that ends sooner wins: nesting only ever shrinks the time left.
    Yields the absolute deadline (on the :func:`mesh_client.clock.monotonic` clock).
    """
    seconds = check_seconds(seconds, "deadline") or 0.0
    token = shrink_deadline(seconds)
    try:
        yield _deadline.get() or 0.0
    finally:
        _deadline.reset(token)


def shrink_deadline(seconds: float) -> contextvars.Token[float | None]:
    """Set the deadline to ``seconds`` from now unless the current one ends sooner; return the
    token to restore the previous one with :func:`restore_deadline`."""
    at = clock.monotonic() + seconds
    outer = _deadline.get()
    if outer is not None and outer < at:
        at = outer
    return _deadline.set(at)


def restore_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)
