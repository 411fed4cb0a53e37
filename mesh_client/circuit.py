"""The circuit in front of a local sidecar that refuses connections."""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import clock as _clock

__all__ = ["SidecarCircuit"]


class SidecarCircuit:
    """Remembers that a local sidecar refused connections, so calls skip it for a while.

    After a refused connection the circuit opens for ``base`` seconds (doubling on each failed
    probe, up to ``cap``); while open, calls that may fail over go straight to HAProxy instead of
    each paying a connect attempt. The first call after the pause probes the sidecar again; an
    answer closes the circuit.
    """

    def __init__(self, base: float = 1.0, cap: float = 30.0, clock: Callable[[], float] = _clock.monotonic) -> None:
        self._base = base
        self._cap = cap
        self._clock = clock
        self._pause = 0.0
        #: the clock reading the circuit stays open until; 0.0 while closed (never opened, or
        #: answered since). Read by the core before it asks :meth:`is_open` or tells
        #: :meth:`answered` (nonzero exactly while a pause is set); set only here.
        self.open_until = 0.0
        self._era = _clock.era()
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        """Whether calls should skip the sidecar now (False once the pause is over: probe)."""
        if not self.open_until:  # never opened, or answered since: nothing to check
            return False
        if self._era != _clock.era():  # the clock was switched: its old times mean nothing
            self.answered()
            self._era = _clock.era()
        return self._clock() < self.open_until

    @property
    def failing(self) -> bool:
        """Whether the last contact with the sidecar was a refused connection."""
        return self._pause > 0

    def refused(self) -> None:
        """A connection to the sidecar was refused: open the circuit for ``base`` seconds, or for
        twice the last pause when the pause had ended (a failed probe). A refusal while the circuit
        is open changes nothing: it comes from a call that set out before it opened, and the many
        concurrent calls a sidecar restart catches must not double the pause once each."""
        with self._lock:
            now = self._clock()
            if self._era != _clock.era():
                self._pause, self.open_until, self._era = 0.0, 0.0, _clock.era()
            if now < self.open_until:
                return
            self._pause = self._base if self._pause == 0 else min(self._cap, self._pause * 2)
            self.open_until = now + self._pause

    def answered(self) -> None:
        if self._pause:
            with self._lock:
                self._pause = 0.0
                self.open_until = 0.0
