"""Argument types shared by the ``mesh-client`` commands (argparse ``type=`` functions)."""

from __future__ import annotations

import argparse
import math

from ..policy import MAX_SECONDS

__all__ = ["seconds_arg"]


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
