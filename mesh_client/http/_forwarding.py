"""What an httpx transport that wraps another owes it: ``with`` and closing reach the wrapped
transport (httpx enters, exits and closes a client's transports; a wrapper that kept them would
leave the caller's transport never entered, and its ``__exit__`` never run)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import httpx

__all__ = ["ForwardsAsyncContext", "ForwardsContext"]

_S = TypeVar("_S", bound="ForwardsContext")
_A = TypeVar("_A", bound="ForwardsAsyncContext")


class ForwardsContext:
    """``__enter__`` / ``__exit__`` / ``close`` forwarded to :meth:`_forward_to` (None: nothing)."""

    def _forward_to(self) -> httpx.BaseTransport | None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        wrapped = self._forward_to()
        if wrapped is not None:
            wrapped.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        wrapped = self._forward_to()
        if wrapped is not None:
            wrapped.__exit__(exc_type, exc_value, traceback)

    def close(self) -> None:
        wrapped = self._forward_to()
        if wrapped is not None:
            wrapped.close()


class ForwardsAsyncContext:
    """The asyncio twin of :class:`ForwardsContext` (``async with``, ``aclose``)."""

    def _forward_to(self) -> httpx.AsyncBaseTransport | None:
        raise NotImplementedError

    async def __aenter__(self: _A) -> _A:
        wrapped = self._forward_to()
        if wrapped is not None:
            await wrapped.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        wrapped = self._forward_to()
        if wrapped is not None:
            await wrapped.__aexit__(exc_type, exc_value, traceback)

    async def aclose(self) -> None:
        wrapped = self._forward_to()
        if wrapped is not None:
            await wrapped.aclose()
