"""requests internals: the attempt's headers written into a ``CaseInsensitiveDict``'s store, the
attempt's request built without a copy of the cookie jar, the body read within the attempt kept
as the response's content, and a time noted on a response for ``Session.send`` to read. Each
probed at import on freshly made objects, each with a public fallback (see
:mod:`mesh_client._compat`)."""

from __future__ import annotations

import io
import operator
from collections.abc import Iterable, Mapping
from typing import Final

import requests
from requests.structures import CaseInsensitiveDict

from . import forced_fallback

__all__ = ["attempt_copy", "copy_headers", "keep_body", "lower_dict", "note_on", "take_from"]


def _probe_header_store() -> bool:
    """Whether a ``CaseInsensitiveDict`` keeps each (name, value) under the lower-case name in the
    dict ``_store`` that every method reads (then :func:`copy_headers` writes there directly)."""
    if forced_fallback():
        return False
    try:
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict({"A": "b"})
        store = vars(headers).get("_store")
        if store != {"a": ("A", "b")}:
            return False
        store.update([("c", ("C", "d"))])
        return (
            list(headers.items()) == [("A", "b"), ("C", "d")]
            and dict(headers.lower_items()) == {"a": "b", "c": "d"}
            and headers["c"] == "d"
            and "C" in headers
            and headers.copy() == {"a": "b", "c": "d"}
        )
    except Exception:  # a requests that keeps its headers otherwise
        return False


_HEADER_STORE: bool = _probe_header_store()


def copy_headers(
    caller: Mapping[str, str], keep: Mapping[str | bytes, bool], set_headers: Iterable[tuple[str, str]]
) -> CaseInsensitiveDict[str]:
    """New headers: those of ``caller`` (a ``CaseInsensitiveDict``) whose name ``keep`` says go
    out, in their order, then ``set_headers`` (replacing a caller's header of the same name).
    Fallback when the probe fails, or for headers of another type: the dictionary's methods
    (the same headers, a few µs slower)."""
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    if _HEADER_STORE and isinstance(caller, CaseInsensitiveDict):
        store: dict[str, tuple[str, str]] = headers._store  # type: ignore[attr-defined]
        for lower, item in caller._store.items():  # type: ignore[attr-defined]
            if keep[item[0]]:
                store[lower] = item
        for header in set_headers:  # (each is already the store's (name, value) item)
            store[header[0].lower()] = header
    else:
        headers.update((name, value) for name, value in caller.items() if keep[name])
        headers.update(set_headers)
    return headers


#: the value of a header store's (name, value) item
_VALUE: Final = operator.itemgetter(1)


def lower_dict(headers: CaseInsensitiveDict[str]) -> dict[str, str]:
    """``{lower-case name: value}`` of ``headers``, as ``dict(headers.lower_items())`` gives it
    (without a Python-level generator). Fallback when the probe fails: that expression."""
    if _HEADER_STORE:
        store: dict[str, tuple[str, str]] = headers._store  # type: ignore[attr-defined]
        return dict(zip(store, map(_VALUE, store.values()), strict=True))
    return dict(headers.lower_items())


#: the fields of a ``PreparedRequest`` (as :func:`_probe_request_fields` checks), for its fast copy
_REQUEST_FIELD_NAMES: Final = frozenset(("method", "url", "headers", "_cookies", "body", "hooks", "_body_position"))


def _fast_copy(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """What :func:`attempt_copy` makes when the probe succeeds: a new ``PreparedRequest`` holding
    the same fields (as ``copy.copy`` makes it, without its generic steps)."""
    prepared: requests.PreparedRequest = object.__new__(requests.PreparedRequest)
    prepared.__dict__.update(request.__dict__)
    return prepared


def _probe_request_fields() -> bool:
    """Whether a ``PreparedRequest`` holds exactly the fields requests' own ``copy()`` sets (method,
    URL, headers, cookie jar ``_cookies``, body, hooks, body position ``_body_position``: then
    :func:`_fast_copy` may copy its ``__dict__``), with the values ``copy()`` gives (the jar aside:
    the same one, where ``copy()`` copies it)."""
    if forced_fallback():
        return False
    try:
        request = requests.Request(
            "POST", "http://h/a", headers={"X": "1"}, cookies={"c": "1"}, data=io.BytesIO(b"x")
        ).prepare()
        copied, fast = vars(request.copy()), vars(_fast_copy(request))
        if set(copied) != _REQUEST_FIELD_NAMES or set(fast) != set(copied) or fast["_cookies"] is not request._cookies:  # type: ignore[attr-defined]
            return False
        return fast.pop("_cookies").get_dict() == copied.pop("_cookies").get_dict() == {"c": "1"} and fast == copied
    except Exception:  # a requests whose prepared requests are made otherwise
        return False


_REQUEST_FIELDS: bool = _probe_request_fields()


def attempt_copy(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A new prepared request like ``request`` (its method, URL, headers, body, hooks and body
    position), holding the caller's cookie jar itself: an attempt is only sent, it never writes the
    jar. Set its own URL and headers on it. Fallback when the probe fails, or for a request holding
    attributes of its own: ``PreparedRequest.copy()``, which also copies the headers and the jar
    (slower)."""
    fields = request.__dict__
    # (an attribute of the caller's own on the request: copy() leaves it out, so this does too)
    if _REQUEST_FIELDS and len(fields) == len(_REQUEST_FIELD_NAMES):
        prepared: requests.PreparedRequest = object.__new__(requests.PreparedRequest)
        prepared.__dict__.update(fields)  # (what _fast_copy does, without a call more per attempt)
        return prepared
    return request.copy()


def _probe_content_store() -> bool:
    """Whether a ``Response`` keeps its body in ``_content`` and whether it was read in
    ``_content_consumed`` (then :func:`keep_body` sets them, as ``Response.content`` does)."""
    if forced_fallback():
        return False
    try:
        response = requests.Response()
        state = vars(response)
        if state.get("_content") is not False or state.get("_content_consumed") is not False:
            return False
        response._content = b"ab"
        response._content_consumed = True  # type: ignore[attr-defined]
        return response.content == b"ab" and list(response.iter_content(1)) == [b"a", b"b"]
    except Exception:  # a requests that keeps the body otherwise
        return False


_CONTENT_STORE: bool = _probe_content_store()


def keep_body(response: requests.Response, chunks: list[bytes]) -> None:
    """Make ``chunks``, the whole body read from ``response.raw``, the response's ``content``, as
    ``Response.content`` does with what it reads. Fallback when the probe fails: the same reading
    through ``Response.content``, from the chunks in memory, with ``raw`` set back afterwards."""
    if _CONTENT_STORE:
        response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]  # (not in the stubs)
        return
    raw = response.raw
    response.raw = io.BytesIO(b"".join(chunks))  # (no ``stream``: read with ``read``)
    try:
        _ = response.content
    finally:
        response.raw = raw


def _probe_instance_dict() -> bool:
    """Whether a ``Response``'s ``__dict__`` is where its attributes are found (then
    :func:`note_on` and :func:`take_from` use it directly)."""
    if forced_fallback():
        return False
    try:
        response = requests.Response()
        vars(response)["_mesh_client_probe"] = 1.5
        if getattr(response, "_mesh_client_probe", None) != 1.5:
            return False
        return vars(response).pop("_mesh_client_probe", None) == 1.5 and not hasattr(response, "_mesh_client_probe")
    except Exception:  # a Response whose attributes are kept otherwise
        return False


_INSTANCE_DICT: bool = _probe_instance_dict()


def note_on(response: requests.Response, name: str, value: float) -> None:
    """Set the attribute ``name`` (one of mesh_client's own) on ``response``. Fallback when the
    probe fails: ``setattr``."""
    if _INSTANCE_DICT:
        response.__dict__[name] = value
    else:
        setattr(response, name, value)


def take_from(response: requests.Response, name: str) -> float | None:
    """The attribute ``name`` set by :func:`note_on` on ``response``, removed from it; None when
    it is not set. Fallback when the probe fails: ``getattr`` and ``delattr``."""
    if _INSTANCE_DICT:
        value: float | None = response.__dict__.pop(name, None)
        return value
    value = getattr(response, name, None)
    if value is not None:
        delattr(response, name)
    return value
