"""What ``mesh-client demo`` can be asked: its options, their checks, and its fixed numbers."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CALLERS",
    "DEFAULT_DURATION",
    "DEMO_SERVICES",
    "DESCRIPTION",
    "EPILOG",
    "FLAG_LOAD_TIMEOUT",
    "MIN_DURATION",
    "MIN_STEP",
    "RATE",
    "THREADS",
    "WALK",
    "DemoOptions",
    "add_arguments",
    "duration_arg",
    "options_from_args",
    "services_arg",
]

#: The demo services; ``--services`` picks which of them have their route flag walked.
DEMO_SERVICES: Final = ("users", "orders")
#: The caller services: distinct names, so a percentage rollout has callers to split.
CALLERS: Final = (
    "checkout",
    "cart",
    "search",
    "billing",
    "shipping",
    "reviews",
    "recommendations",
    "inventory",
    "payments",
    "notifications",
)
#: The walk: percent of callers sent to Envoy at each step (the last one is the rollback).
WALK: Final = (0.0, 10.0, 50.0, 100.0, 0.0)
DEFAULT_DURATION: Final = 20.0
MIN_STEP: Final = 0.5
MIN_DURATION: Final = MIN_STEP * len(WALK)
#: Calls per second, all callers and services together, spread over THREADS background threads.
RATE: Final = 100.0
THREADS: Final = 2
#: How long every caller may take to load a new flag version before the demo gives up.
FLAG_LOAD_TIMEOUT: Final = 5.0

DESCRIPTION: Final = """\
A live migration from HAProxy to Envoy on this machine, with no account anywhere.
Starts two demo services (users, orders), a real Envoy and a real HAProxy on free
127.0.0.1 ports from a registry written to a temporary folder, sends steady traffic
from ten callers through mesh_client, and walks the route flag of --services through
the flag file, live: 0% -> 10% -> 50% -> 100% of callers via Envoy, then back to 0%
(a rollback). Ends with a summary proving that no call failed and that the split
followed the flag (the callers' flag decisions, call_info, and what the backend saw).
Without HAProxy it says so and shows the Envoy side only.
"""

EPILOG: Final = """\
exit codes:
  0    every call succeeded and every step's split followed the flag
  1    the demo failed: a call failed, a split did not follow the flag,
       a flag was not loaded in time, or a process would not start
  2    bad arguments
  130  interrupted (Ctrl-C or SIGTERM) during the walk; with --keep, Ctrl-C
       after the walk exits with the walk's result (0 or 1)
every process the demo starts is stopped before it exits, in every case.
"""


@dataclass(frozen=True)
class DemoOptions:
    """What ``mesh-client demo`` was asked to do (see :func:`add_arguments`)."""

    duration: float = DEFAULT_DURATION
    services: tuple[str, ...] = ("users",)
    keep: bool = False
    color: bool = True


def duration_arg(text: str) -> float:
    """An argparse type for ``--duration``: seconds, at least :data:`MIN_DURATION`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < MIN_DURATION:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_DURATION:g} seconds ({len(WALK)} steps of at least {MIN_STEP:g} s), got {text}"
        )
    return value


def services_arg(text: str) -> tuple[str, ...]:
    """An argparse type for ``--services``: demo service names separated by commas, or ``all``."""
    names = [name.strip() for name in text.split(",")]
    if text.strip() == "all":
        return DEMO_SERVICES
    known = ", ".join(DEMO_SERVICES)
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give service names separated by commas (known: {known}, or all)")
    unknown = [name for name in names if name not in DEMO_SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"no demo service {unknown[0]!r} (known: {known}, or all)")
    return tuple(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` options to ``parser``."""
    parser.add_argument(
        "--duration",
        type=duration_arg,
        default=DEFAULT_DURATION,
        metavar="SECONDS",
        help=f"total length of the flag walk, split evenly over its {len(WALK)} steps "
        f"(default {DEFAULT_DURATION:g}, at least {MIN_DURATION:g})",
    )
    parser.add_argument(
        "--services",
        type=services_arg,
        default=("users",),
        metavar="NAMES",
        help=f"which demo services have their route flag walked: comma-separated from "
        f"{', '.join(DEMO_SERVICES)}, or all (default users)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the walk, leave the mesh running and print how to call it, until Ctrl-C",
    )
    parser.add_argument("--no-color", action="store_true", help="no colors (also when NO_COLOR is set)")


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The :class:`DemoOptions` of parsed ``demo`` arguments."""
    return DemoOptions(duration=args.duration, services=args.services, keep=args.keep, color=not args.no_color)
