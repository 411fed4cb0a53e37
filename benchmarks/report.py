"""Targets and plain-text tables. Targets are reported, never asserted.

Each target names the issue (or issues) that set it: 8 (the first performance pass), 19 (the
fourth), and 15 / 16 for the targets the overrides and shadow-read issues set for their sections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: issue 8 targets
DECISION_PATH_US = 15.0
CPU_ADDED_US = 25.0
WALL_RATIO = 1.05
#: the fake_mesh fixture is at least this many times faster than a real Envoy (same 100 calls)
FIXTURE_SPEEDUP = 20.0
#: "no memory growth": over the second half of the run (the allocator may still settle in the
#: first), RSS grows less than this many bytes per call. A leak of one small object per call is
#: >= 50 bytes per call; RSS moves in 4 KiB pages, so 50,000 calls resolve ~0.1 byte per call.
MEMORY_BYTES_PER_CALL = 1.0
#: ... and the objects the garbage collector tracks grow by less than one per this many calls
MEMORY_CALLS_PER_OBJECT = 100

#: issue 19 targets: Thrift against thriftpy2's own framed client, direct and through each proxy (section 6)
THRIFT_WALL_RATIO = 1.15
THRIFT_CPU_ADDED_US = 15.0
THEADER_WALL_RATIO = 1.25
#: ... client CPU added per call without network, for requests (trust_env off), httpx and async httpx (section 1)
NO_IO_CPU_ADDED_US = 10.0
#: ... wall ratio mesh/plain on every sequential row, both proxies (section 1)
WALL_RATIO_19 = 1.03
#: ... async burst throughput ratio mesh/plain at every pool size (section 3)
BURST_THROUGHPUT_RATIO = 0.97
#: ... decision path median at most this fraction of one LaunchDarkly variation_detail() (section 2)
DECISION_VS_LAUNCHDARKLY = 0.5


Issues = int | tuple[int, ...]


@dataclass
class Target:
    section: str
    what: str
    value: float
    op: str  # "<", "<=" or ">="
    limit: float
    unit: str = ""
    #: the issues that set the target (JSON: a list of numbers)
    issue: tuple[int, ...] = ()

    @property
    def measured(self) -> bool:
        """False when the run could not measure the figure (or its limit): value or limit is NaN."""
        return not (math.isnan(self.value) or math.isnan(self.limit))

    @property
    def met(self) -> bool:
        if not self.measured:
            return False
        if self.op == ">=":
            return self.value >= self.limit
        return self.value < self.limit if self.op == "<" else self.value <= self.limit

    @property
    def verdict(self) -> str:
        if not self.measured:
            return "not measured"
        return "met" if self.met else "NOT met"

    @property
    def issue_text(self) -> str:
        return ", ".join(str(i) for i in self.issue)

    def text(self, value: float) -> str:
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if self.unit == "x" else f"{value:,.1f}"


def _issues(issue: Issues) -> tuple[int, ...]:
    return (issue,) if isinstance(issue, int) else tuple(issue)


def at_most(section: str, what: str, value: float, limit: float, unit: str = "", *, issue: Issues) -> Target:
    return Target(section, what, value, "<=", limit, unit, _issues(issue))


def below(section: str, what: str, value: float, limit: float, unit: str = "", *, issue: Issues) -> Target:
    return Target(section, what, value, "<", limit, unit, _issues(issue))


def at_least(section: str, what: str, value: float, limit: float, unit: str = "", *, issue: Issues) -> Target:
    return Target(section, what, value, ">=", limit, unit, _issues(issue))


def targets_json(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [{**asdict(t), "issue": list(t.issue), "met": t.met, "verdict": t.verdict} for t in targets]


def fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"  # NaN: not applicable
    return str(value)


def table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 1, *, left: int = 1
) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    cells = [[fmt(c, digits) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        line = "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append(line.rstrip())
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    rows = [
        [
            t.issue_text,
            t.section,
            t.what,
            t.text(t.value),
            f"{t.op} {t.text(t.limit)}{' ' + t.unit if t.unit else ''}",
            t.verdict,
        ]
        for t in targets
    ]
    issues = sorted({i for t in targets for i in t.issue})
    return table(
        f"Targets ({'issue' if len(issues) == 1 else 'issues'} {', '.join(map(str, issues)) or '-'}; "
        "measured in this run, reported, not asserted)",
        ["issue", "sec", "figure", "value", "target", "verdict"],
        rows,
        left=3,
    )
