"""The messages between a wrapper and the core (:mod:`mesh_client.core`).

The core answers each step of a call with an :class:`Attempt` to send, or ends it with
:class:`Done` or :class:`Fail`; the wrapper reports each attempt's outcome back as
:class:`Responded` (an HTTP response, a Thrift reply) or :class:`Broken` (no answer, classified by
:class:`Failure`). They are plain records: made once per attempt, read once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from .errors import MeshTransportError
from .info import CallInfo
from .policy import Route
from .registry import Address

__all__ = ["Attempt", "Broken", "Done", "Fail", "Failure", "Responded", "Step"]


class Failure(str, enum.Enum):
    """How an attempt failed below HTTP, as the wrapper saw it."""

    CONNECT = "connect"  # no connection was made: nothing was sent
    TIMEOUT = "timeout"  # no answer within the attempt's timeout: it may have been processed
    RESET = "reset"  # the connection broke after the request may have been sent


R = TypeVar("R")


@dataclass(slots=True)
class Responded(Generic[R]):
    """An attempt got an HTTP response. ``body`` is set only when the core asked for it
    (:meth:`~mesh_client.core.CallRun.wants_body`), to classify a possible Envoy local reply.

    A message from a wrapper to :meth:`~mesh_client.core.CallRun.advance`, read once and not kept (so not frozen:
    a frozen dataclass costs three times as much to make, once per attempt)."""

    response: R
    status: int
    headers: Mapping[str, str]
    body: bytes | None = None
    #: the local proxy's own failure kind when the wrapper already knows it (Thrift replies made
    #: by Envoy); otherwise the core classifies HAProxy's error pages from ``body``
    proxy_error: str | None = None


@dataclass(frozen=True, slots=True)
class Broken:
    """An attempt failed below HTTP; ``error`` is the wrapped library's exception."""

    kind: Failure
    error: BaseException
    detail: str = ""
    #: the status and headers had arrived, the body did not complete (in time)
    response_started: bool = False


class Attempt(NamedTuple):
    """One request to send: where, with which header changes, within which timeout.

    An immutable record (a named tuple: made once per attempt, at half the cost of a frozen
    dataclass)."""

    number: int
    route: Route
    address: Address
    host: str
    set_headers: tuple[tuple[str, str], ...]
    drop_prefixes: tuple[str, ...]
    drop_names: frozenset[str]
    timeout: float
    delay: float = 0.0
    #: the attempt's timeout is its per-try timeout (time for another attempt remains after it)
    per_try_limited: bool = False
    #: the call this attempt belongs to (unique in the process): every attempt of a call shares it
    call: int = 0

    def drops(self, name: str) -> bool:
        """Whether a header the caller set must not go out on this attempt."""
        lower = name.lower()
        return lower.startswith(self.drop_prefixes) or lower in self.drop_names

    @property
    def base_url(self) -> str:
        return self.address.base_url


@dataclass(frozen=True, slots=True)
class Done(Generic[R]):
    """The call is over with this response (any status: statuses are never raised)."""

    response: R
    info: CallInfo


@dataclass(frozen=True, slots=True)
class Fail:
    """The call is over with an error: raise ``error`` (combined with the library's own class)."""

    error: type[MeshTransportError]
    message: str
    info: CallInfo
    cause: BaseException | None


Step = Attempt | Done[R] | Fail
