"""How the demo went, computed without printing anything: per step and service whether the
split followed the flag and no call failed (:func:`summarise`), and the ending once every
process is stopped (:func:`conclude`). :mod:`.report` prints both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...policy import Route
from .options import DEMO_SERVICES
from .steps import Walk
from .traffic import Step, Tally

__all__ = ["Ending", "Summary", "SummaryRow", "conclude", "step_problems", "summarise"]


def step_problems(walk: Walk, step: Step, service: str, t: Tally) -> list[str]:
    """What went wrong for ``service`` at ``step``; empty when every call succeeded and the split
    the callers and the backend saw is the one the flag gave."""
    problems = []
    if t.errors:
        problems.append(f"{t.errors} failed calls")
    if not t.settled:
        problems.append("no call measured after the flag loaded (try a longer --duration)")
    if t.wrong_route:
        problems.append(f"{t.wrong_route} calls took another route than the flag gave their caller")
    if t.expected_envoy != t.observed_envoy:
        problems.append(f"expected {t.expected_envoy} calls via Envoy, {t.observed_envoy} went via Envoy")
    if t.observed_envoy != t.backend_envoy:
        problems.append(f"{t.observed_envoy} calls went via Envoy, the backend saw {t.backend_envoy}")
    if t.failed_over:
        problems.append(f"{t.failed_over} calls failed over from Envoy to HAProxy")
    envoy = len(step.envoy_callers(service))
    want = step.percent if walk.walked(service) else (100.0 if walk.base is Route.ENVOY else 0.0)
    if want in (0.0, 100.0) and envoy != (len(step.decisions) if want else 0):
        problems.append(f"the flag says {want:g}% but {envoy} of {len(step.decisions)} callers are on Envoy")
    return problems


@dataclass(frozen=True)
class SummaryRow:
    """One step and service of the summary, with what went wrong (empty: ok)."""

    step: Step
    service: str
    tally: Tally
    problems: list[str]


@dataclass(frozen=True)
class Summary:
    """Every step and service, and the totals of the walk."""

    rows: list[SummaryRow]
    steps: int
    total_calls: int
    errors: int
    in_flip: int  # calls made while the callers were loading a new flag
    in_flip_errors: int
    retried: int

    @property
    def problems(self) -> list[str]:
        """Every row's problems, each naming its step and service."""
        return [f"step {r.step.number}/{self.steps} {r.service}: {p}" for r in self.rows for p in r.problems]


def summarise(walk: Walk) -> Summary:
    """The :class:`Summary` of ``walk``'s tallies (call once the traffic has stopped)."""
    rows = [
        SummaryRow(step, service, step.tallies[service], step_problems(walk, step, service, step.tallies[service]))
        for step in walk.steps
        for service in DEMO_SERVICES
    ]
    tallies = [row.tally for row in rows]
    return Summary(
        rows,
        steps=len(walk.steps),
        total_calls=sum(t.total for t in tallies),
        errors=sum(t.errors for t in tallies),
        in_flip=sum(t.in_flip for t in tallies),
        in_flip_errors=sum(t.in_flip_errors for t in tallies),
        retried=sum(t.retried for t in tallies),
    )


@dataclass(frozen=True)
class Ending:
    """How the demo ends: its exit code, the problems (for ``failed``) and the processes stopped."""

    kind: Literal["ok", "failed", "interrupted"]
    code: int
    problems: list[str]
    stopped: list[str]  # "Envoy (pid 123)", ...
    total_calls: int
    flips: bool  # the walk had more than one step

    @property
    def stopped_text(self) -> str:
        """``every process the demo started was stopped: ...``."""
        return "every process the demo started was stopped" + (f": {', '.join(self.stopped)}" if self.stopped else "")


def conclude(
    problems: list[str],
    processes: list[tuple[str, int, bool]],
    *,
    interrupted: bool,
    total_calls: int,
    steps: int,
) -> Ending:
    """The ending, from the problems so far and each process started as (name, pid, still
    running): 130 when interrupted, 1 with any problem (a process still running is one), else 0."""
    problems = list(problems)
    stopped = []
    for name, pid, running in processes:
        if running:  # cannot happen: stop() kills after its timeout
            problems.append(f"{name} (pid {pid}) is still running")
        else:
            stopped.append(f"{name} (pid {pid})")
    if interrupted:
        return Ending("interrupted", 130, problems, stopped, total_calls, steps > 1)
    if problems:
        return Ending("failed", 1, problems, stopped, total_calls, steps > 1)
    return Ending("ok", 0, problems, stopped, total_calls, steps > 1)
