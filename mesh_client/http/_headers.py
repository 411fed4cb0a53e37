"""Which of a caller's request headers go out on an attempt, remembered per set of rules.

An attempt drops the caller's hop-by-hop headers, Envoy control headers and the names mesh_client
sets itself (:meth:`Attempt.drops <mesh_client.core.Attempt.drops>`). A caller sends the same few
header names on every call, so the answer is kept per name (as the wrapper holds it: ``str`` for
requests, httpx's lower-case ``bytes``) for each set of drop rules. A wrapper reads the answers
with ``known[name]`` and, on a ``KeyError`` (a name not seen yet), calls :func:`learn` and reads
again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .._cache import BoundedCache
from ..steps import Attempt

__all__ = ["kept_names", "learn"]

#: (drop prefixes, drop names) -> {header name: whether it goes out}
_RULES: BoundedCache[tuple[tuple[str, ...], frozenset[str]], BoundedCache[str | bytes, bool]] = BoundedCache(64)
_MAX_NAMES: Final = 1024


def kept_names(attempt: Attempt) -> BoundedCache[str | bytes, bool]:
    """{header name: whether a caller's header of that name goes out on ``attempt``}, for the
    names learnt so far under ``attempt``'s rules."""
    key = (attempt.drop_prefixes, attempt.drop_names)
    known = _RULES.get(key)
    if known is None:
        known = _RULES.put(key, BoundedCache(_MAX_NAMES))
    return known


def learn(known: BoundedCache[str | bytes, bool], attempt: Attempt, names: Iterable[str | bytes]) -> None:
    """Add ``names`` to ``known`` (from :func:`kept_names`); ``bytes`` are httpx's lower-case names,
    decoded as latin-1 to be checked."""
    for name in names:
        if name not in known:
            text = name.decode("latin-1") if isinstance(name, bytes) else name
            known.put(name, not attempt.drops(text))
