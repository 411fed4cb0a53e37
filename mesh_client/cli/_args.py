"""Argument types shared by the ``mesh-client`` commands (argparse ``type=`` functions)."""

from __future__ import annotations

import argparse
import math

from ..policy import MAX_SECONDS

__all__ = ["count_arg", "seconds_arg"]


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


def count_arg(text: str) -> int:
    """An argparse type: a whole number of 1 or more (``--count``, ``--concurrency``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value
