"""The one cache type of the package: a dictionary that forgets everything when it is full.

mesh_client remembers small facts that are expensive to work out again on every call (a URL's
parsed parts, a set of header names, an encoded THeader key). Their keys come from a small set in
practice (the registry's services, the caller's own URLs and header names), so a full cache is a
sign of unusual input, not of a working set to keep: clearing it whole is cheaper than tracking
which entry was used last, and it bounds the memory a caller with unbounded keys (a fresh URL per
call) can make the process hold.

A :class:`BoundedCache` is a ``dict``, so a hit is one C-level ``get``; only a miss goes through
:meth:`~BoundedCache.put`. It takes no lock: a lost or repeated ``put`` under threads only costs
working a value out again, and every value kept here is the same whoever works it out.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["BoundedCache"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V]):
    """A ``dict`` of at most ``limit`` entries: :meth:`put` clears it first when it is full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a BoundedCache holds at least one entry, got limit={limit!r}")
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` under ``key`` (forgetting every entry first if the cache is full) and
        return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value

    def __reduce__(self) -> tuple[type[BoundedCache[K, V]], tuple[int]]:
        # a copy (pickle, copy.copy, a forked-and-pickled session) starts empty: what is kept here
        # can always be worked out again
        return (type(self), (self.limit,))
