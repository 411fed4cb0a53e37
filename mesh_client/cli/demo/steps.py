"""The flag walk's state: its steps (percent of callers via Envoy, flag version, tallies), the
flags each step writes, and waiting until every caller has loaded a step's flag."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...flag_files import rollout_flag, route_flag
from ...flag_router import FlagRouter
from ...policy import Route
from ...registry import MeshConfig
from .options import DEMO_SERVICES, FLAG_LOAD_TIMEOUT, WALK, DemoOptions
from .traffic import Caller, Step, Tally

__all__ = ["DemoFailed", "Walk", "wait_for_flag"]


class DemoFailed(Exception):
    """The demo could not go on (a process would not start, a flag was not loaded in time)."""


@dataclass
class Walk:
    """The walk of the route flag of ``options.services``: one :class:`Step` per percentage.
    The other demo services stay on ``base`` (HAProxy; Envoy when HAProxy is not installed)."""

    options: DemoOptions
    base: Route = Route.HAPROXY
    percents: tuple[float, ...] = WALK
    flags_path: Path = Path()
    steps: list[Step] = field(default_factory=list)
    began: float = 0.0  # when the first step started (monotonic)

    @classmethod
    def plan(cls, options: DemoOptions, *, have_haproxy: bool, flags_path: Path) -> Walk:
        """The whole walk with HAProxy; one step, every caller via Envoy, without it."""
        percents = WALK if have_haproxy else (100.0,)
        steps = [
            Step(i + 1, percent, version=i + 1, tallies={s: Tally() for s in DEMO_SERVICES})
            for i, percent in enumerate(percents)
        ]
        base = Route.HAPROXY if have_haproxy else Route.ENVOY
        return cls(options, base, percents, flags_path, steps)

    @property
    def hold(self) -> float:
        """Seconds each step lasts."""
        return self.options.duration / len(self.percents)

    def walked(self, service: str) -> bool:
        """Whether ``service``'s flag is walked (else it stays on :attr:`base`)."""
        return service in self.options.services

    def flags_for(self, config: MeshConfig, step: Step) -> list[dict[str, Any]]:
        """The route flags of ``step``: a rollout for the walked services, ``base`` for the others."""
        return [
            rollout_flag(config.flags.key_for(name), step.percent, version=step.version)
            if self.walked(name)
            else route_flag(config.flags.key_for(name), self.base, version=step.version)
            for name in DEMO_SERVICES
        ]


def wait_for_flag(callers: list[Caller], services: Sequence[str], version: int, tick: Callable[[], None]) -> float:
    """Wait until every caller's flag client holds ``version`` for ``services``; return the seconds."""
    started = time.monotonic()
    pending = [(caller, service) for caller in callers for service in services]
    while pending:
        caller, service = pending[-1]
        router = caller.mesh.router
        if not isinstance(router, FlagRouter):
            raise DemoFailed(f"{caller.name}: the Mesh has no flag router")
        if router.flag_version(service) == version:
            pending.pop()
            continue
        if time.monotonic() - started > FLAG_LOAD_TIMEOUT:
            names = ", ".join(sorted({c.name for c, _ in pending}))
            raise DemoFailed(f"flag version {version} not loaded within {FLAG_LOAD_TIMEOUT:g} s by: {names}")
        tick()
        time.sleep(0.01)
    return time.monotonic() - started
