"""Targets (from issues 8 and 19) and plain-text tables. Targets are reported, never asserted."""

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

#: issue 19 targets: Thrift against thriftpy2's own framed client (section 6)
THRIFT_WALL_RATIO = 1.15
THRIFT_CPU_ADDED_US = 15.0
THEADER_WALL_RATIO = 1.25


@dataclass
class Target:
    section: str
    what: str
    value: float
    op: str  # "<", "<=" or ">="
    limit: float
    unit: str = ""

    @property
    def met(self) -> bool:
        if self.op == ">=":
            return self.value >= self.limit
        return self.value < self.limit if self.op == "<" else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return "met" if self.met else "NOT met"

    def text(self, value: float) -> str:
        return f"{value:,.3f}" if self.unit == "x" else f"{value:,.1f}"


def at_most(section: str, what: str, value: float, limit: float, unit: str = "") -> Target:
    return Target(section, what, value, "<=", limit, unit)


def below(section: str, what: str, value: float, limit: float, unit: str = "") -> Target:
    return Target(section, what, value, "<", limit, unit)


def at_least(section: str, what: str, value: float, limit: float, unit: str = "") -> Target:
    return Target(section, what, value, ">=", limit, unit)


def targets_json(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [{**asdict(t), "met": t.met, "verdict": t.verdict} for t in targets]


def fmt(value: object, digits: int = 1) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:,.{digits}f}"  # NaN: not applicable
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 1) -> str:
    cells = [[fmt(c, digits) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        line = "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        lines.append(line.rstrip())
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    rows = [
        [t.section, t.what, t.text(t.value), f"{t.op} {t.text(t.limit)}{' ' + t.unit if t.unit else ''}", t.verdict]
        for t in targets
    ]
    return table("Targets (issue 8; reported, not asserted)", ["sec", "figure", "value", "target", "verdict"], rows)
