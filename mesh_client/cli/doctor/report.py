"""What ``mesh-client doctor`` prints: a heading, one line per check as it is made, a summary."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from .checks import diagnose
from .context import Check, exit_code

__all__ = ["run", "summary_line"]


def summary_line(checks: list[Check]) -> str:
    """The last line: the count per verdict and the overall verdict."""
    counts = {v: sum(c.verdict == v for c in checks) for v in ("OK", "WARN", "FAIL", "SKIP")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n or v != "SKIP")
    verdict = "FAILED" if exit_code(checks) else "healthy" if not counts["WARN"] else "working, with warnings"
    noun = "check" if len(checks) == 1 else "checks"
    return f"{len(checks)} {noun}: {summary}: {verdict}"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``mesh-client doctor``: print one line per check and a summary; 1 if any check failed."""
    stream = out or sys.stdout

    def emit(check: Check) -> None:
        print(check.line(), file=stream, flush=True)

    print(f"mesh-client doctor {args.registry} (timeout {args.timeout:g} s per step)", file=stream, flush=True)
    checks = diagnose(args.registry, timeout=args.timeout, path=args.path, emit=emit)
    print(summary_line(checks), file=stream, flush=True)
    return exit_code(checks)
