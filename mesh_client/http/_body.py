"""Reading a response body inside its attempt, within the attempt's time (requests and httpx).

Left to themselves, requests and httpx read a body after the mesh call has returned, with a
timeout per socket read only: an upstream that trickles its body (a byte every few hundred ms)
holds the caller far past the call's total, and a connection that breaks mid-body raises the
library's own error instead of a mesh one. So when the caller does not stream, the wrappers read
the whole body during the attempt, every read bounded by the time the attempt has left, and report
an overrun to the core as ``Failure.TIMEOUT`` (a :class:`~mesh_client.MeshTimeoutError`).
"""

from __future__ import annotations

from typing import Final

from .. import clock as _clock
from ..steps import Attempt, Broken, Failure

__all__ = ["CHUNK", "BodyTimer"]

#: Bytes asked for per read.
CHUNK: Final = 65536


class BodyTimer:
    """When an attempt's response must be complete: its start plus its timeout (the time the call
    has left, or the per-try timeout; on the Envoy route Envoy's timeout plus the client's margin)."""

    __slots__ = ("received", "timeout", "until")

    def __init__(self, attempt: Attempt) -> None:
        self.timeout = attempt.timeout
        self.until = _clock.monotonic() + attempt.timeout
        #: body bytes read so far
        self.received = 0

    def left(self) -> float:
        """Seconds left for the rest of the response (0 or less: overrun)."""
        return self.until - _clock.monotonic()

    def _bytes(self) -> str:
        return f"{self.received} byte{'' if self.received == 1 else 's'}"

    def message(self) -> str:
        """For the library's own timeout exception."""
        return f"the response body was not complete within {self.timeout:.3f} s ({self._bytes()} arrived)"

    def overrun(self, error: BaseException) -> Broken:
        """The attempt's outcome when its time ran out during the body: ``error`` is the library's
        own timeout exception."""
        return Broken(Failure.TIMEOUT, error, f"{self._bytes()} of the body arrived", response_started=True)

    def cut(self, error: BaseException) -> Broken:
        """The outcome when the connection broke during the body."""
        return Broken(Failure.RESET, error, f"body cut short after {self._bytes()}", response_started=True)
