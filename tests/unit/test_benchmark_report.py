"""The benchmark suite's targets table (benchmarks/report.py) and the sections' use of it.

The sections themselves need a real Envoy and HAProxy (``python -m benchmarks --quick``); these
checks read their source instead, so a target without its issue, or an issue-19 limit no section
reports, is caught by the unit tests.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from benchmarks import report

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
HELPERS = {"at_most", "below", "at_least"}
KNOWN_ISSUES = {8, 15, 16, 19}
#: every limit issue 19 sets, each reported by some section
ISSUE_19_LIMITS = {
    "THRIFT_WALL_RATIO",
    "THRIFT_CPU_ADDED_US",
    "THEADER_WALL_RATIO",
    "NO_IO_CPU_ADDED_US",
    "WALL_RATIO_19",
    "BURST_THROUGHPUT_RATIO",
    "DECISION_VS_LAUNCHDARKLY",
}


def _target_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(BENCHMARKS.glob("*.py")):
        if path.name == "report.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "report"
                and node.func.attr in HELPERS
            ):
                calls.append((path.name, node))
    return calls


def test_every_section_target_names_a_known_issue() -> None:
    calls = _target_calls()
    assert len(calls) >= 20
    for name, call in calls:
        issue = next((k.value for k in call.keywords if k.arg == "issue"), None)
        assert issue is not None, f"{name}:{call.lineno}: a target without issue="
        value = ast.literal_eval(issue)
        numbers = {value} if isinstance(value, int) else set(value)
        assert numbers, f"{name}:{call.lineno}: issue={value!r}"
        assert numbers <= KNOWN_ISSUES, f"{name}:{call.lineno}: issue={value!r}"


def test_each_issue_19_limit_is_reported_by_a_section() -> None:
    used = set()
    for path in BENCHMARKS.glob("*.py"):
        if path.name == "report.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "report":
                used.add(node.attr)
    assert used >= ISSUE_19_LIMITS, ISSUE_19_LIMITS - used
    for name in ISSUE_19_LIMITS:
        assert isinstance(getattr(report, name), float)


def test_the_table_has_an_issue_column_and_names_every_issue() -> None:
    targets = [
        report.below("2", "decision path median (µs)", 4.2, report.DECISION_PATH_US, issue=8),
        report.at_most("1", "wall ratio, httpx via envoy", 1.04, report.WALL_RATIO, "x", issue=8),
        report.at_most("1", "wall ratio, httpx via envoy", 1.04, report.WALL_RATIO_19, "x", issue=19),
        report.below("5", "mesh vs otel-instr (µs)", 150.0, 200.0, issue=(8, 19)),
    ]
    lines = report.targets_table(targets).splitlines()
    assert lines[0].startswith("Targets (issues 8, 19;")
    assert lines[1].split() == ["issue", "sec", "figure", "value", "target", "verdict"]
    rows = lines[3:]
    assert [r.split()[0] for r in rows] == ["8", "8", "19", "8,"]
    assert rows[1].endswith(" met")
    assert rows[2].endswith("NOT met")
    assert "8, 19" in rows[3]


def test_the_title_of_a_one_issue_table() -> None:
    text = report.targets_table([report.at_least("3", "throughput ratio", 0.99, 0.97, "x", issue=19)])
    assert text.startswith("Targets (issue 19;")


def test_json_carries_the_issues_as_a_list() -> None:
    targets = [
        report.at_least("3", "throughput ratio, pool 10", 0.96, report.BURST_THROUGHPUT_RATIO, "x", issue=19),
        report.below("5", "mesh vs otel-instr (µs)", 150.0, 200.0, issue=(8, 19)),
    ]
    rows = json.loads(json.dumps(report.targets_json(targets)))
    assert [r["issue"] for r in rows] == [[19], [8, 19]]
    assert [r["verdict"] for r in rows] == ["NOT met", "met"]
    assert rows[0]["met"] is False
    assert rows[1]["met"] is True


@pytest.mark.parametrize(("value", "limit"), [(math.nan, 0.5), (1.0, math.nan)])
def test_a_figure_the_run_could_not_measure_is_reported_so(value: float, limit: float) -> None:
    target = report.at_most("2", "decision path / LaunchDarkly", value, limit, "x", issue=19)
    assert not target.met
    assert target.verdict == "not measured"
    assert report.targets_table([target]).splitlines()[3].endswith("not measured")


def test_an_issue_is_required() -> None:
    with pytest.raises(TypeError):
        report.below("2", "decision path median (µs)", 4.2, 15.0)  # type: ignore[call-arg]
