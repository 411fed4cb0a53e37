"""The loop a wrapper runs a :class:`~mesh_client.core.CallRun` in: ask the run for an attempt,
send it, report the outcome, until the run says the call is over. :func:`drive` for blocking I/O,
:func:`drive_async` for asyncio; they differ only in ``await``. Re-exported by
:mod:`mesh_client.core`, where wrappers import them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from . import clock as _clock
from .steps import Attempt, Broken, Done, Fail, Responded

if TYPE_CHECKING:
    from .core import CallRun

__all__ = ["drive", "drive_async"]

R = TypeVar("R")


def drive(
    run: CallRun[R],
    send: Callable[[Attempt], Responded[R] | Broken],
    discard: Callable[[R], None],
    sleep: Callable[[float], None] = _clock.sleep,
) -> Done[R] | Fail:
    """Run a call to its end, synchronously. ``send`` does one attempt and classifies the result;
    ``discard`` releases a response that is being retried."""
    step = run.advance(None)
    try:
        while isinstance(step, Attempt):
            if step.delay > 0:
                sleep(step.delay)
            outcome = send(step)
            step = run.advance(outcome)
            if isinstance(step, Attempt) and isinstance(outcome, Responded):
                discard(outcome.response)
    except BaseException as exc:
        run.abort(exc)
        raise
    return step


async def drive_async(
    run: CallRun[R],
    send: Callable[[Attempt], Awaitable[Responded[R] | Broken]],
    discard: Callable[[R], Awaitable[None]],
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> Done[R] | Fail:
    """:func:`drive` for asyncio (or any loop ``sleep`` supports)."""
    if sleep is None:
        sleep = _clock.async_sleep
    step = run.advance(None)
    try:
        while isinstance(step, Attempt):
            if step.delay > 0:
                await sleep(step.delay)
            outcome = await send(step)
            step = run.advance(outcome)
            if isinstance(step, Attempt) and isinstance(outcome, Responded):
                await discard(outcome.response)
    except BaseException as exc:
        run.abort(exc)
        raise
    return step
