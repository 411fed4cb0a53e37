"""The requests seams (``mesh_client._compat.requests``): each probe and each fallback, in
whichever mode this process runs (``MESH_CLIENT_COMPAT_FALLBACK=1`` or not); the forced check of every
seam at once is in ``test_compat.py``."""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import rewind_body

from mesh_client._compat import FALLBACK_ENV, forced_fallback
from mesh_client._compat import requests as compat_requests

# -- requests (mesh_client._compat.requests) --------------------------------------------------------

#: each probe of the requests seams, and the flag its answer is kept in
REQUESTS_PROBES = {
    "_HEADER_STORE": compat_requests._probe_header_store,
    "_REQUEST_FIELDS": compat_requests._probe_request_fields,
    "_CONTENT_STORE": compat_requests._probe_content_store,
    "_INSTANCE_DICT": compat_requests._probe_instance_dict,
}


@pytest.fixture(params=[True, False], ids=["probed", "fallback"])
def seam(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test of a requests seam twice: through the internals (when the installed requests
    has them, in the compat-fallback job too) and through the public fallbacks."""
    fast: bool = request.param
    if fast:
        with monkeypatch.context() as unforced:
            unforced.setenv(FALLBACK_ENV, "0")
            if not all(probe() for probe in REQUESTS_PROBES.values()):
                pytest.skip("the installed requests keeps these otherwise")
    for flag in REQUESTS_PROBES:
        monkeypatch.setattr(compat_requests, flag, fast)
    return fast


@pytest.mark.parametrize("flag", list(REQUESTS_PROBES))
def test_each_requests_probe_passes_on_the_installed_requests_unless_forced(
    monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    probe = REQUESTS_PROBES[flag]
    assert getattr(compat_requests, flag) is not forced_fallback()  # (what this process probed at import)
    monkeypatch.setenv(FALLBACK_ENV, "0")
    assert probe() is True
    monkeypatch.setenv(FALLBACK_ENV, "1")
    assert probe() is False


def test_the_header_store_probe_fails_when_the_dictionary_keeps_its_items_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = CaseInsensitiveDict.__init__

    def elsewhere(self: CaseInsensitiveDict[str], data: object = None, **kwargs: str) -> None:
        original(self, data, **kwargs)
        self.__dict__["_items"] = self.__dict__.pop("_store")

    monkeypatch.setattr(CaseInsensitiveDict, "__init__", elsewhere)
    assert compat_requests._probe_header_store() is False


def test_the_request_fields_probe_fails_when_a_prepared_request_gets_a_new_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = requests.PreparedRequest.__init__

    def with_new_field(self: requests.PreparedRequest) -> None:
        original(self)
        self.__dict__["_new_field"] = object()

    monkeypatch.setattr(requests.PreparedRequest, "__init__", with_new_field)
    assert compat_requests._probe_request_fields() is False


def test_the_content_probe_fails_when_a_response_keeps_its_body_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FALLBACK_ENV, "0")
    original = requests.Response.__init__

    def elsewhere(self: requests.Response) -> None:
        original(self)
        del self.__dict__["_content"]

    monkeypatch.setattr(requests.Response, "__init__", elsewhere)
    assert compat_requests._probe_content_store() is False


def test_copy_headers_keeps_the_callers_that_go_out_then_sets_the_attempts(seam: bool) -> None:
    caller: CaseInsensitiveDict[str] = CaseInsensitiveDict({"A": "1", "Drop": "x", "b": "2"})
    keep = {"A": True, "Drop": False, "b": True}
    headers = compat_requests.copy_headers(caller, keep, [("B", "3"), ("C", "4")])
    assert isinstance(headers, CaseInsensitiveDict)
    # the caller's order, a replaced header where it was, under the attempt's spelling
    assert list(headers.items()) == [("A", "1"), ("B", "3"), ("C", "4")]
    assert headers["b"] == "3"
    assert dict(headers.lower_items()) == {"a": "1", "b": "3", "c": "4"}
    assert list(caller.items()) == [("A", "1"), ("Drop", "x"), ("b", "2")]  # the caller's untouched
    headers["D"] = "5"
    assert "D" not in caller


def test_copy_headers_takes_headers_of_another_type_through_their_methods(seam: bool) -> None:
    headers = compat_requests.copy_headers({"A": "1", "Drop": "x"}, {"A": True, "Drop": False}, [("C", "4")])
    assert list(headers.items()) == [("A", "1"), ("C", "4")]


@pytest.mark.parametrize(
    "caller", [CaseInsensitiveDict({"A": "1", "New": "x"}), {"A": "1", "New": "x"}], ids=["CaseInsensitiveDict", "dict"]
)
def test_copy_headers_raises_key_error_for_a_name_not_known_yet(seam: bool, caller: dict[str, str]) -> None:
    # (the wrapper learns the name then, and copies again: see mesh_client.http._headers)
    with pytest.raises(KeyError):
        compat_requests.copy_headers(caller, {"A": True}, [("C", "4")])
    assert list(caller.items()) == [("A", "1"), ("New", "x")]


def test_lower_dict_is_the_lower_case_names_and_their_values(seam: bool) -> None:
    headers: CaseInsensitiveDict[str] = CaseInsensitiveDict({"Content-Type": "a", "X-One": "1"})
    headers["content-type"] = "b"
    lowered = compat_requests.lower_dict(headers)
    assert lowered == dict(headers.lower_items()) == {"content-type": "b", "x-one": "1"}
    assert list(lowered) == ["content-type", "x-one"]
    assert compat_requests.lower_dict(CaseInsensitiveDict()) == {}


def prepared_request() -> requests.PreparedRequest:
    hooks: dict[str, list[Callable[..., object]]] = {"response": [lambda r, **_: r]}
    return requests.Request(
        "PUT", "http://users/a?x=1", headers={"X-One": "1"}, cookies={"sid": "1"}, data=io.BytesIO(b"body"), hooks=hooks
    ).prepare()


def test_attempt_copy_is_the_callers_request_with_its_cookie_jar(seam: bool) -> None:
    request = prepared_request()
    request.body.read(2)  # type: ignore[union-attr]  # (a file body, part read)
    copied = compat_requests.attempt_copy(request)
    assert copied is not request
    assert (copied.method, copied.url, copied.headers) == (request.method, request.url, request.headers)
    assert copied.body is request.body
    assert copied.hooks == request.hooks
    jar = copied._cookies  # type: ignore[attr-defined]
    assert jar.get_dict() == {"sid": "1"}
    assert (jar is request._cookies) is seam  # type: ignore[attr-defined]  # (the fallback copies the jar)
    # the body position kept: requests rewinds the body to it before a redirect sends it again
    rewind_body(copied)
    assert copied.body.read() == b"body"  # type: ignore[union-attr]
    # what a redirect or digest auth does with it: the requests' own copy, then its cookies
    again = copied.copy()
    again.prepare_cookies(again._cookies)  # type: ignore[attr-defined]
    assert again.headers["Cookie"] == "sid=1"


def test_attempt_copy_leaves_out_an_attribute_of_the_callers_own(seam: bool) -> None:
    # as requests' own copy() does (the request's fields only)
    request = prepared_request()
    request.mine = "x"  # type: ignore[attr-defined]
    copied = compat_requests.attempt_copy(request)
    assert not hasattr(copied, "mine")
    assert (copied.method, copied.url, copied.headers, copied.body) == (
        request.method,
        request.url,
        request.headers,
        request.body,
    )
    assert copied._cookies.get_dict() == {"sid": "1"}  # type: ignore[attr-defined]


def test_attempt_copy_of_a_copy_is_the_same_request(seam: bool) -> None:
    # (what the requests wrapper shows as r.request: a copy of the attempt's request)
    attempt = compat_requests.attempt_copy(prepared_request())
    attempt.url = "http://127.0.0.1:9001/a?x=1"
    shown = compat_requests.attempt_copy(attempt)
    assert shown is not attempt
    assert vars(shown).keys() == vars(attempt).keys()
    assert (shown.method, shown.url, shown.headers, shown.body, shown.hooks) == (
        attempt.method,
        attempt.url,
        attempt.headers,
        attempt.body,
        attempt.hooks,
    )
    shown.url = "http://users/a?x=1"
    assert attempt.url == "http://127.0.0.1:9001/a?x=1"


def answered(body: bytes, **headers: str) -> tuple[requests.Response, list[bytes]]:
    """A response read as the requests wrapper reads it (from ``raw``, in chunks, decoded)."""
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(body),
        headers={"content-length": str(len(body)), "content-type": "application/json; charset=utf-8", **headers},
        status=200,
        preload_content=False,
    )
    response = HTTPAdapter().build_response(requests.Request("GET", "http://users/a").prepare(), raw)
    chunks = []
    while chunk := raw.read(3, decode_content=True):
        chunks.append(chunk)
    return response, chunks


def test_keep_body_makes_the_chunks_read_the_responses_content(seam: bool) -> None:
    response, chunks = answered(b'{"a": 1}')
    raw = response.raw
    compat_requests.keep_body(response, chunks)
    assert response.raw is raw  # (the one cookies, the connection and the caller read)
    assert response.content == b'{"a": 1}'
    assert response.text == '{"a": 1}'
    assert response.json() == {"a": 1}
    assert b"".join(response.iter_content(2)) == b'{"a": 1}'
    assert pickle.loads(pickle.dumps(response)).content == b'{"a": 1}'


def test_keep_body_keeps_a_decoded_body_as_it_was_read(seam: bool) -> None:
    response, chunks = answered(gzip.compress(b"hello " * 100), **{"content-encoding": "gzip"})
    compat_requests.keep_body(response, chunks)
    assert response.content == b"hello " * 100


def test_keep_body_keeps_an_empty_body_as_empty(seam: bool) -> None:
    response, chunks = answered(b"")
    compat_requests.keep_body(response, chunks)
    assert response.content == b""
    assert list(response.iter_content(2)) == []


def test_a_note_on_a_response_is_read_once(seam: bool) -> None:
    response = requests.Response()
    compat_requests.note_on(response, "_mesh_client_test_note", 1.5)
    assert getattr(response, "_mesh_client_test_note") == 1.5  # noqa: B009 - (a name of our own, as set)
    assert compat_requests.take_from(response, "_mesh_client_test_note") == 1.5
    assert not hasattr(response, "_mesh_client_test_note")
    assert compat_requests.take_from(response, "_mesh_client_test_note") is None
    assert "_mesh_client_test_note" not in pickle.loads(pickle.dumps(response)).__dict__
