"""What the demo prints after the walk: the summary table and the ending (:mod:`.verdict`
decides both)."""

from __future__ import annotations

from typing import Final

from .backends import ENVOY_MARK
from .display import Display
from .progress import flag_text, share
from .steps import Walk
from .verdict import Ending, Summary

__all__ = ["print_ending", "print_summary"]

_SUM: Final = (
    "{step:<5} {service:<8} {flag:<12} {callers:>8} {expected:>9} {observed:>9} {backend:>8} {calls:>8} {errors:>7}"
    "  {result}"
)
#: problems shown in full in the ending; the rest are counted
_SHOWN: Final = 20


def print_summary(display: Display, walk: Walk, summary: Summary) -> None:
    """Per step and service: the share of calls the flag sends to Envoy, observed, and seen by the backend."""
    show = display
    show.print()
    show.print("Summary: share of calls via Envoy once every caller had loaded the step's flag", "bold")
    show.print(
        "  expected: calls by the callers the flag sends to Envoy (each caller's Mesh asked);"
        " observed: call_info(r).route;"
    )
    show.print(f"  backend: calls that reached the service with {ENVOY_MARK} (only Envoy adds it)")
    show.print(
        "  a rollout buckets callers by a hash of their name: with 10 callers a 10% rollout may put 0, 1, 2 or"
        " more on Envoy"
    )
    head = _SUM.format(
        step="step",
        service="service",
        flag="flag",
        callers="callers",
        expected="expected",
        observed="observed",
        backend="backend",
        calls="checked",
        errors="errors",
        result="",
    )
    show.print(head.rstrip(), "bold")
    for row in summary.rows:
        step, t = row.step, row.tally
        line = _SUM.format(
            step=f"{step.number}/{summary.steps}",
            service=row.service,
            flag=flag_text(walk, step, row.service),
            callers=f"{len(step.envoy_callers(row.service))}/{len(step.decisions)}",
            expected=share(t.expected_envoy, t.settled),
            observed=share(t.observed_envoy, t.settled),
            backend=share(t.backend_envoy, t.settled),
            calls=t.settled,
            errors=t.errors,
            result="ok" if not row.problems else "FAILED: " + "; ".join(row.problems),
        )
        show.print(line, "red" if row.problems else "green" if walk.walked(row.service) else "dim")
    show.print(
        f"total: {summary.total_calls} calls, {summary.errors} failed; {summary.in_flip} made while the callers were "
        f"loading a new flag, {summary.in_flip_errors} of them failed; {summary.retried} needed a retry",
        *(("red",) if summary.errors else ()),
    )


def print_ending(display: Display, ending: Ending) -> None:
    """The last lines: interrupted, FAILED with the problems, or OK; and which processes were stopped."""
    display.print()
    if ending.kind == "interrupted":
        display.print(f"interrupted; {ending.stopped_text}", "yellow")
    elif ending.kind == "failed":
        display.print("FAILED:", "red", "bold")
        for problem in ending.problems[:_SHOWN]:
            display.print(f"  {problem}", "red")
        if len(ending.problems) > _SHOWN:
            display.print(f"  ... and {len(ending.problems) - _SHOWN} more", "red")
        text = ending.stopped_text
        display.print(text[0].upper() + text[1:])
    else:
        display.print(
            f"OK: {ending.total_calls} calls, none failed{', also during the flips' if ending.flips else ''}; "
            f"every step's split followed the flag; {ending.stopped_text}",
            "green",
            "bold",
        )
