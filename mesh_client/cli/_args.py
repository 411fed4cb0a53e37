"""What the ``mesh-client`` commands' parsers share: argument types (argparse ``type=``
functions), the registry argument, and how a command with its own help text is registered."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Final, TypeAlias

from ..policy import MAX_SECONDS

__all__ = ["Subparsers", "add_registry", "command_parser", "count_arg", "seconds_arg", "whole_number_arg"]

#: What ``add_subparsers()`` returns: each command's ``add_parser(subparsers)`` registers on it.
#: (A string: argparse's class cannot be subscripted at run time.)
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def command_parser(
    subparsers: Subparsers, name: str, *, summary: str, description: str, epilog: str
) -> argparse.ArgumentParser:
    """Register the command ``name``: ``summary`` in ``mesh-client --help``; its own ``--help``
    prints ``description`` and ``epilog`` as written (line breaks kept)."""
    return subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_registry(parser: argparse.ArgumentParser) -> None:
    """The positional ``MESH.toml`` argument (``args.registry``)."""
    parser.add_argument("registry", metavar="MESH.toml", help="the registry TOML file")


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, got {text!r}")
    if value > MAX_SECONDS:  # what the library accepts (sockets refuse far less than infinity)
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS} seconds (a day), got {text!r}")
    return value


def whole_number_arg(minimum: int, *, unit: str = "", least: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number (of ``unit``) of at least ``minimum`` (said as ``least``)."""
    of = f" of {unit}" if unit else ""
    floor = least or str(minimum)

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number{of}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {floor} or more, got {text!r}")
        return value

    return whole_number


#: An argparse type: a whole number of 1 or more (``--count``, ``--concurrency``).
count_arg: Final = whole_number_arg(1)
