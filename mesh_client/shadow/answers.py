"""What each wrapped library's answer is as an :class:`~mesh_client.shadow.compare.Answer`.

The builders run on the caller's thread (for the answer the caller got) and must stay cheap: they
keep references (the body bytes, a few header values) and leave decoding to :func:`decoded`, which
runs with the comparison, off the caller's path. A builder returns None when the answer cannot be
compared: a response the caller streams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import MeshError
from .compare import Answer

if TYPE_CHECKING:
    from .runner import ShadowCall

__all__ = [
    "decoded",
    "failed",
    "httpx_answer",
    "requests_answer",
    "shadow_thrift",
    "thrift_copy",
    "thrift_outcome",
]


def _headers(get: Callable[[str], str | None], names: Sequence[str]) -> tuple[tuple[str, str | None], ...]:
    return tuple((name, get(name)) for name in names)


def requests_answer(response: Any, names: Sequence[str]) -> Answer:
    """A ``requests.Response`` whose body was read (not ``stream=True``): already decoded."""
    get = response.headers.get
    return Answer(
        status=response.status_code,
        headers=_headers(get, names) if names else (),
        body=response.content,
        content_type=get("content-type") or "",
    )


def httpx_answer(response: Any, names: Sequence[str]) -> Answer | None:
    """An ``httpx.Response`` whose body the transport read (a ``ByteStream``, as received:
    :func:`decoded` undoes its ``content-encoding``); None when the caller streams it."""
    import httpx

    stream = response.stream
    if not isinstance(stream, httpx.ByteStream):
        return None
    get = response.headers.get
    return Answer(
        status=response.status_code,
        headers=_headers(get, names) if names else (),
        body=b"".join(stream),  # (a ByteStream yields its one bytes object)
        content_type=get("content-type") or "",
        content_encoding=get("content-encoding") or "",
    )


def decoded(answer: Answer) -> Answer:
    """``answer`` with its body decoded (``content-encoding`` undone, as httpx does for its callers);
    a body that cannot be decoded stays as received."""
    if not answer.content_encoding or answer.error is not None:
        return answer
    import dataclasses

    import httpx

    try:
        body = httpx.Response(
            200, headers=[("content-encoding", answer.content_encoding)], stream=httpx.ByteStream(answer.body)
        ).read()
    except httpx.DecodingError:
        return answer
    return dataclasses.replace(answer, body=body, content_encoding="")


def failed(error: BaseException) -> Answer:
    """The answer of a call that raised instead of answering."""
    return Answer(error=f"{type(error).__name__}: {error}"[:300])


def thrift_outcome(value: Any = None, raised: BaseException | None = None) -> Answer:
    """A Thrift call's decoded result, or the exception the server raised (compared by type). A
    mesh error (transport failure, Envoy's own reply) is no answer: :func:`failed`."""
    if raised is None:
        return Answer(thrift=("result", value))
    if isinstance(raised, MeshError):
        return failed(raised)
    return Answer(thrift=("raised", type(raised).__qualname__))


def thrift_copy(call: Callable[[], Any]) -> Answer:
    """Make the copy of a Thrift call (``call()`` calls the method) and take its outcome."""
    try:
        value = call()
    except Exception as exc:
        return thrift_outcome(raised=exc)
    return thrift_outcome(value)


def shadow_thrift(
    shadow: ShadowCall, result: Any, outcome: Callable[[], Any], send: Callable[[], Any] | None, target: str
) -> Any:
    """Return (or raise) ``outcome()``, the Thrift call's own result, after handing it to
    ``shadow`` with ``send`` (the same call again; None for a oneway call, which has no answer to
    compare and is skipped)."""
    try:
        value = outcome()
    except Exception as exc:
        _submit_thrift(shadow, result, thrift_outcome(raised=exc), send, target)
        raise
    _submit_thrift(shadow, result, thrift_outcome(value), send, target)
    return value


def _submit_thrift(
    shadow: ShadowCall, result: Any, answer: Answer, send: Callable[[], Any] | None, target: str
) -> None:
    if send is None:
        shadow.skip("a oneway call has no answer")
        return
    again = send
    shadow.submit(result, lambda _response, _names: answer, lambda: thrift_copy(again), target)
