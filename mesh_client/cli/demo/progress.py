"""What the demo shows while it runs: per step and service the calls per route, errors and p50/p99
latency per route (a table redrawn in place on a terminal, plain lines otherwise), and a line
per flip saying which callers the flag sends to Envoy."""

from __future__ import annotations

import math
import time
from typing import Final

from ...policy import Route
from .display import Display, Line
from .options import DEMO_SERVICES
from .steps import Walk
from .traffic import Step

__all__ = ["HEAD1", "HEAD2", "flag_text", "flip_line", "latency", "redraw", "rows", "share"]

_ROW: Final = (
    "{step:<5} {flag:<12} {service:<8} {all:>6} {envoy:>6} {haproxy:>8} {errors:>7} {lenvoy:>10} {lhaproxy:>10}"
)
HEAD2: Final = _ROW.format(
    step="step",
    flag="flag",
    service="service",
    all="all",
    envoy="envoy",
    haproxy="haproxy",
    errors="errors",
    lenvoy="envoy",
    lhaproxy="haproxy",
)
HEAD1: Final = f"{'':<29}{' calls ':-^29} {' p50/p99 ms ':-^21}"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def latency(values: list[float]) -> str:
    """``p50/p99`` in milliseconds, or ``-`` without calls."""
    if not values:
        return "-"
    return f"{_ms(_percentile(values, 0.5))}/{_ms(_percentile(values, 0.99))}"


def share(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, or ``-`` when there is none."""
    return f"{100 * part / whole:.1f}%" if whole else "-"


def flag_text(walk: Walk, step: Step, service: str) -> str:
    """What the flag says for ``service`` at ``step``."""
    if not walk.walked(service):
        return "Envoy" if walk.base is Route.ENVOY else "HAProxy"
    return f"{step.percent:g}% Envoy"


def flip_line(walk: Walk, step: Step) -> str:
    """The line saying which callers ``step``'s flag sends to Envoy, and how long loading it took."""
    at = step.started - walk.began
    loaded = f"flag v{step.version} loaded by all {len(step.decisions)} callers"
    if step.number > 1 and step.loaded_in is not None:
        loaded += f" in {step.loaded_in:.2f} s"
    who = []
    for service in walk.options.services:
        names = step.envoy_callers(service)
        if len(names) == len(step.decisions):
            listed = "every caller"
        elif not names:
            listed = "no caller"
        else:
            listed = ", ".join(names)
        who.append(f"{service} {step.percent:g}% -> Envoy for {listed}")
    steps = len(walk.steps)
    rollback = " (rollback)" if step.number > 1 and step.number == steps else ""
    return f"[{at:5.1f} s] step {step.number}/{steps}{rollback}: {'; '.join(who)} ({loaded})"


def rows(walk: Walk, step: Step) -> list[Line]:
    """The table rows of ``step``, one per demo service (call with the ledger's lock held)."""
    found = []
    for i, service in enumerate(DEMO_SERVICES):
        t = step.tallies[service]
        line = _ROW.format(
            step=f"{step.number}/{len(walk.steps)}" if i == 0 else "",
            flag=flag_text(walk, step, service),
            service=service,
            all=t.total,
            envoy=t.calls[Route.ENVOY],
            haproxy=t.calls[Route.HAPROXY],
            errors=t.errors,
            lenvoy=latency(t.latencies[Route.ENVOY]),
            lhaproxy=latency(t.latencies[Route.HAPROXY]),
        )
        style: tuple[str, ...] = ("red",) if t.errors else () if walk.walked(service) else ("dim",)
        found.append((line, style))
    return found


def redraw(walk: Walk, display: Display, final: bool = False) -> None:
    """Redraw the live table (terminal only): the steps so far, a progress bar, the last flip."""
    if not display.live:
        return
    lines: list[Line] = [(HEAD1, ("bold",)), (HEAD2, ("bold",))]
    current: Step | None = None
    calls = errors = 0
    for step in walk.steps:
        if not step.started:
            continue
        current = step
        lines += rows(walk, step)
        calls += sum(t.total for t in step.tallies.values())
        errors += sum(t.errors for t in step.tallies.values())
    if current is not None:
        hold = walk.hold
        done_at = current.ended or time.monotonic()
        done = done_at - current.started
        bar = "#" * round(20 * min(1.0, done / hold))
        state = (
            f"walk done in {done_at - walk.began:.1f} s"
            if final
            else f"step {current.number}/{len(walk.steps)} [{bar:<20}] {done:4.1f}/{hold:.1f} s"
        )
        lines.append(("", ()))
        lines.append((f"{state}   calls {calls}   errors {errors}", ("red",) if errors else ("cyan",)))
        if current.decisions and not final:
            lines.append((flip_line(walk, current), ("dim",)))
        elif not final:
            lines.append((f"step {current.number}: waiting for every caller to load flag v{current.version}", ()))
    display.frame(lines)
