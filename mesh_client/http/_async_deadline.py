"""The one deadline of an async httpx attempt: a pool wait, connect, send, wait and body that each
stay within httpx's per-phase timeouts can still add up past the attempt's time, so the whole
attempt runs in a block that raises ``TimeoutError`` when that time is up (see
:func:`attempt_deadline`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

try:  # which async library runs the task (httpx's own test); without it, anyio decides
    import sniffio as _sniffio
except ImportError:  # pragma: no cover - sniffio comes with httpx's dependencies nearly always
    _sniffio = None  # type: ignore[assignment]

__all__ = ["attempt_deadline"]


if sys.version_info >= (3, 11):  # Task.cancelling() and uncancel()

    class _AsyncioDeadline:
        """``anyio.fail_after(seconds)`` for a task on asyncio, at a fraction of its cost (one
        ``loop.call_at``): the task is cancelled when the time is up, and the ``CancelledError``
        that ends the block becomes a ``TimeoutError``. The same rules as ``asyncio.timeout``
        (Python 3.11+): a cancellation from elsewhere (``cancelling()`` above what it was on entry)
        stays a cancellation."""

        __slots__ = ("_cancelling", "_expired", "_handle", "_task")

        def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
            self._task = task
            self._expired = False
            self._cancelling = task.cancelling()
            loop = task.get_loop()
            self._handle = loop.call_at(loop.time() + seconds, self._expire)

        def _expire(self) -> None:
            self._expired = True
            self._task.cancel()

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
            self._handle.cancel()
            if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc


def attempt_deadline(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """A block that raises ``TimeoutError`` when ``seconds`` pass: in an asyncio task a
    ``loop.call_at`` timer (:class:`_AsyncioDeadline`, Python 3.11+); otherwise ``anyio.fail_after``."""
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
