"""The comparison of two answers to the same call, one per route. Pure: no I/O, no clock, no state.

An :class:`Answer` is what one route gave: an HTTP status, the headers named in
``compare_headers`` and the (decoded) body; for Thrift the decoded result or the type of the
exception raised; or, when the call failed below HTTP, an error. :func:`compare` says whether two
answers match and, when they do not, which parts differ:

- the status;
- the body: JSON (a ``content-type`` of ``application/json`` or ``...+json``) parsed and compared
  structurally, the ``ignore_json`` paths left out; any other body byte for byte;
- each header in ``compare_headers`` (a missing header differs from a present one);
- Thrift: the result value (thriftpy2 structs compare field by field), or the exception type.

An ``ignore_json`` path names members by key, joined by ``.``; ``[]`` after a name stands for every
item of that list, and a path may start with ``[]`` when the body is a list::

    generated_at          {"generated_at": ...}
    items[].etag          {"items": [{"etag": ...}, ...]}
    meta.trace.id         {"meta": {"trace": {"id": ...}}}
    [].etag               [{"etag": ...}, ...]

An ignored member is left out on both sides, whatever it holds (a whole subtree).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "Answer",
    "Comparison",
    "Difference",
    "compare",
    "is_json",
    "parse_json_path",
]

#: at most this many differences are listed per comparison (the count is kept)
MAX_DIFFERENCES: Final = 20
#: a value shown in a difference is cut to this many characters
MAX_VALUE_CHARS: Final = 200
#: bytes shown on each side of the first differing byte of a non-JSON body
BYTES_CONTEXT: Final = 32

_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\])*)|((?:\[\])+)")
_JSON_TYPE = re.compile(r"^application/(?:[a-z0-9.+-]*\+)?json$")
LIST: Final = "[]"

Outcome = Literal["match", "mismatch", "error"]


def parse_json_path(path: str) -> tuple[str, ...]:
    """``"items[].etag"`` -> ``("items", "[]", "etag")``; ValueError for a malformed path."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{path!r} is not a JSON path")
    parts: list[str] = []
    for i, piece in enumerate(path.split(".")):
        match = _SEGMENT.fullmatch(piece)
        if match is None or (match.group(3) and i > 0):
            raise ValueError(
                f"{path!r} is not a JSON path (member names joined by '.', '[]' after a name for every "
                "item of a list, e.g. 'items[].etag')"
            )
        if match.group(3):
            parts += [LIST] * (len(match.group(3)) // 2)
        else:
            parts.append(match.group(1))
            parts += [LIST] * (len(match.group(2)) // 2)
    return tuple(parts)


@functools.lru_cache(maxsize=256)
def _ignored(paths: tuple[str, ...]) -> frozenset[tuple[str, ...]]:
    return frozenset(parse_json_path(p) for p in paths)


def is_json(content_type: str) -> bool:
    """Whether a ``content-type`` value is JSON (parameters such as ``charset`` ignored)."""
    return bool(_JSON_TYPE.match(content_type.split(";", 1)[0].strip().lower()))


@dataclass(frozen=True, slots=True)
class Answer:
    """What one route answered (see the module docs). ``error`` set: no answer, the call failed."""

    status: int | None = None
    #: (lower-case name, value) of the headers compared, in ``compare_headers`` order (None: absent)
    headers: tuple[tuple[str, str | None], ...] = ()
    body: bytes = b""
    content_type: str = ""
    #: the body's ``content-encoding`` when it is still encoded (compared only once decoded)
    content_encoding: str = ""
    #: Thrift: ``("result", value)`` or ``("raised", "ExceptionType")``
    thrift: tuple[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """One part where the answers differ: ``where`` (``status``, ``header etag``, ``body``,
    ``body $.items[2].name``, ``result``) and each side's value, as text (cut short)."""

    where: str
    primary: str
    copy: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of :func:`compare`. ``differences`` lists at most :data:`MAX_DIFFERENCES` of
    ``count`` differing parts."""

    outcome: Outcome
    differences: tuple[Difference, ...] = ()
    count: int = 0

    @property
    def matched(self) -> bool:
        return self.outcome == "match"


_MATCH: Final = Comparison("match")
_ERROR: Final = Comparison("error")


def compare(
    primary: Answer,
    copy: Answer,
    *,
    ignore_json: Sequence[str] = (),
    compare_headers: Sequence[str] = (),
) -> Comparison:
    """Compare the answer the caller got (``primary``) with the copy's. ``"error"`` when either
    side has no answer (its ``error`` is set): then nothing is compared."""
    if primary.error is not None or copy.error is not None:
        return _ERROR
    found = _Differences()
    if primary.thrift is not None or copy.thrift is not None:
        if primary.thrift != copy.thrift:
            found.add("result", _thrift_text(primary.thrift), _thrift_text(copy.thrift))
        return found.comparison()
    if primary.status != copy.status:
        found.add("status", str(primary.status), str(copy.status))
    wanted = {name.lower() for name in compare_headers}
    theirs = dict(copy.headers)
    for name, value in primary.headers:
        if name in wanted and theirs.get(name) != value:
            found.add(f"header {name}", _text(value), _text(theirs.get(name)))
    _compare_bodies(primary, copy, _ignored(tuple(ignore_json)), found)
    return found.comparison()


class _Differences:
    def __init__(self) -> None:
        self.items: list[Difference] = []
        self.count = 0

    def add(self, where: str, primary: str, copy: str) -> None:
        self.count += 1
        if len(self.items) < MAX_DIFFERENCES:
            self.items.append(Difference(where, _cut(primary), _cut(copy)))

    def comparison(self) -> Comparison:
        if not self.count:
            return _MATCH
        return Comparison("mismatch", tuple(self.items), self.count)


def _compare_bodies(primary: Answer, copy: Answer, ignored: frozenset[tuple[str, ...]], found: _Differences) -> None:
    if primary.body == copy.body:
        return
    if is_json(primary.content_type):
        try:
            mine, theirs = json.loads(primary.body), json.loads(copy.body)
        except (ValueError, UnicodeDecodeError):
            pass  # not both JSON after all: byte for byte
        else:
            _Walker(ignored, found).walk(mine, theirs, (), "$")
            return
    found.add("body", *_byte_difference(primary.body, copy.body))


class _Walker:
    """Compares two parsed JSON values, leaving out the ``ignored`` paths."""

    def __init__(self, ignored: frozenset[tuple[str, ...]], found: _Differences) -> None:
        self.ignored = ignored
        self.found = found

    def walk(self, mine: Any, theirs: Any, path: tuple[str, ...], shown: str) -> None:
        """``path`` is the place in the ignore-matching form (lists as ``[]``), ``shown`` its
        JSONPath-like text (``$.items[2].etag``)."""
        ignored, found = self.ignored, self.found
        if path in ignored:
            return
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for key in _keys(mine, theirs):
                if (*path, key) in ignored:
                    continue
                where = f"{shown}.{key}" if _PLAIN_KEY.fullmatch(key) else f"{shown}[{json.dumps(key)}]"
                if key not in mine or key not in theirs:
                    found.add(f"body {where}", _json_text(mine, key), _json_text(theirs, key))
                    continue
                self.walk(mine[key], theirs[key], (*path, key), where)
            return
        if isinstance(mine, list) and isinstance(theirs, list):
            inner = (*path, LIST)
            if inner in ignored:
                return
            if len(mine) != len(theirs):
                found.add(f"body {shown}", f"{len(mine)} items", f"{len(theirs)} items")
            for i, (a, b) in enumerate(zip(mine, theirs, strict=False)):  # (the common items)
                self.walk(a, b, inner, f"{shown}[{i}]")
            return
        if not _same_scalar(mine, theirs):
            found.add(f"body {shown}", _dump(mine), _dump(theirs))


def _same_scalar(mine: Any, theirs: Any) -> bool:
    """JSON equality of two parsed values that are not both objects or both lists: numbers by
    value (``1`` and ``1.0`` are the same number), everything else by type and value (``true``
    is not ``1``, ``"1"`` is not ``1``)."""
    numbers = (int, float)
    if isinstance(mine, numbers) and isinstance(theirs, numbers) and not isinstance(mine, bool):
        return not isinstance(theirs, bool) and mine == theirs
    return type(mine) is type(theirs) and mine == theirs


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ABSENT: Final = "(absent)"


def _keys(mine: dict[str, Any], theirs: dict[str, Any]) -> Iterable[str]:
    return [*mine, *(k for k in theirs if k not in mine)]


def _json_text(value: dict[str, Any], key: str) -> str:
    return _dump(value[key]) if key in value else _ABSENT


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _text(value: str | None) -> str:
    return _ABSENT if value is None else repr(value)


def _thrift_text(value: tuple[str, Any] | None) -> str:
    if value is None:
        return _ABSENT
    kind, detail = value
    return f"raised {detail}" if kind == "raised" else repr(detail)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _byte_difference(mine: bytes, theirs: bytes) -> tuple[str, str]:
    """Each side's bytes around the first difference, with both lengths."""
    at = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), min(len(mine), len(theirs)))
    start = max(0, at - BYTES_CONTEXT)

    def window(data: bytes) -> str:
        part = data[start : at + BYTES_CONTEXT]
        return f"{len(data)} bytes, at {at}: {part!r}"

    return window(mine), window(theirs)
