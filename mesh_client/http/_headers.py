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

from ..core import Attempt

__all__ = ["kept_names", "learn"]

#: (drop prefixes, drop names) -> {header name: whether it goes out}
_RULES: dict[tuple[tuple[str, ...], frozenset[str]], dict[str | bytes, bool]] = {}
_MAX_RULES: Final = 64
_MAX_NAMES: Final = 1024


def kept_names(attempt: Attempt) -> dict[str | bytes, bool]:
    """{header name: whether a caller's header of that name goes out on ``attempt``}, for the
    names learnt so far under ``attempt``'s rules."""
    key = (attempt.drop_prefixes, attempt.drop_names)
    known = _RULES.get(key)
    if known is None:
        if len(_RULES) >= _MAX_RULES:
            _RULES.clear()
        known = _RULES[key] = {}
    return known


def learn(known: dict[str | bytes, bool], attempt: Attempt, names: Iterable[str | bytes]) -> None:
    """Add ``names`` to ``known`` (from :func:`kept_names`); ``bytes`` are httpx's lower-case names,
    decoded as latin-1 to be checked."""
    if len(known) >= _MAX_NAMES:
        known.clear()
    for name in names:
        if name not in known:
            text = name.decode("latin-1") if isinstance(name, bytes) else name
            known[name] = not attempt.drops(text)
