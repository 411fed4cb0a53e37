"""What a fake service instance does with a request: the replies ``fake_mesh`` handlers give.

A handler is a :class:`Reply` (the same answer every time), several replies (one per request
the service receives, the last one repeating: ``reply(503), reply(503), reply(200)`` fails twice
then succeeds), a callable taking the :class:`~mesh_client.testing.UpstreamRequest` and
returning a :class:`Reply` (or, for Thrift, the method's return value), or for Thrift a handler
object with the service's methods (as given to a thriftpy2 server).
"""

from __future__ import annotations

import json as jsonlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..policy import check_seconds

__all__ = ["Reply", "hang", "refuse", "reply", "reset", "thrift_reply"]

Fault = Literal["refuse", "reset"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer of a fake service instance (build it with :func:`reply` and friends)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: seconds the instance takes before it answers (virtual time under ``fake_mesh``)
    delay: float = 0.0
    #: ``"refuse"``: nothing listens (nothing was sent); ``"reset"``: the connection closes after
    #: the request was read (it may have been processed)
    fault: Fault | None = None
    #: Thrift: the method's return value, or the exception it raises
    value: Any = None
    raises: BaseException | None = None

    def describe(self) -> str:
        if self.fault == "refuse":
            text = "connection refused"
        elif self.fault == "reset":
            text = "connection reset"
        elif self.raises is not None:
            text = f"raises {self.raises!r}"
        elif self.value is not None:
            text = f"returns {self.value!r}"
        else:
            text = str(self.status)
        if math.isinf(self.delay):
            return f"{text} (never answers)" if self.fault is None else text
        return f"{text} after {self.delay:g} s" if self.delay else text


def _delay(delay: float) -> float:
    if delay == math.inf or (delay == 0 and not isinstance(delay, bool)):
        return float(delay)
    return check_seconds(delay, "delay") or 0.0


def reply(
    status: int = 200,
    *,
    json: Any = None,
    text: str | None = None,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> Reply:
    """An HTTP response: ``status``, a body (``json=``, ``text=`` or raw ``body=``) and headers,
    sent after ``delay`` seconds."""
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ValueError(f"status must be an HTTP status code (100-599), got {status!r}")
    if sum(x is not None for x in (json, text)) + bool(body) > 1:
        raise ValueError("give at most one of json=, text= and body=")
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    if json is not None:
        body = jsonlib.dumps(json).encode()
        hdrs.setdefault("content-type", "application/json")
    elif text is not None:
        body = text.encode()
        hdrs.setdefault("content-type", "text/plain; charset=utf-8")
    return Reply(status=status, headers=tuple(hdrs.items()), body=body, delay=_delay(delay))


def thrift_reply(value: Any = None, *, raises: BaseException | None = None, delay: float = 0.0) -> Reply:
    """A Thrift method's answer: its return ``value``, or an exception it ``raises`` (a declared
    exception, or a ``TApplicationException``), after ``delay`` seconds."""
    return Reply(value=value, raises=raises, delay=_delay(delay))


def refuse() -> Reply:
    """The instance refuses the connection: nothing reaches it (safe to retry)."""
    return Reply(fault="refuse")


def reset(delay: float = 0.0) -> Reply:
    """The instance reads the request and closes the connection after ``delay`` seconds without
    answering (it may have processed the request)."""
    return Reply(fault="reset", delay=_delay(delay))


def hang() -> Reply:
    """The instance never answers: the call ends by a timeout."""
    return Reply(delay=math.inf)
