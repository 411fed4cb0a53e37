"""``mesh-client demo`` without proxies: its arguments, and how its verdict is reached from the
tallies (:mod:`mesh_client.cli.demo.verdict`). The demo itself runs in
``tests/integration/cli/test_demo.py``, with real Envoy and HAProxy."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_client import Route
from mesh_client.cli import main, parser
from mesh_client.cli.demo import DEFAULT_DURATION, DemoOptions, options_from_args
from mesh_client.cli.demo.steps import Walk
from mesh_client.cli.demo.traffic import Tally
from mesh_client.cli.demo.verdict import conclude, step_problems, summarise

from .helpers import run_cli


def test_a_negative_duration_exits_2_with_a_clear_message() -> None:
    done = run_cli("demo", "--duration", "-1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "argument --duration: must be at least 2.5 seconds" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "soon"], "argument --duration: 'soon' is not a number of seconds"),
        (["--duration", "inf"], "argument --duration: must be at least 2.5 seconds"),
        (["--services", "payments"], "argument --services: no demo service 'payments' (known: users, orders, or all)"),
        (["--services", "users,,orders"], "argument --services: 'users,,orders': give service names separated by"),
    ],
)
def test_bad_demo_arguments_exit_2_naming_the_argument(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["demo", *args])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def demo_args(*argv: str) -> DemoOptions:
    return options_from_args(parser().parse_args(["demo", *argv]))


def test_demo_services_option_accepts_a_list_and_all() -> None:
    args = demo_args("--services", "orders,users,orders")
    assert args.services == ("orders", "users")
    assert demo_args("--services", "all").services == ("users", "orders")
    assert demo_args().services == ("users",)
    assert demo_args().duration == DEFAULT_DURATION
    assert demo_args("--no-color", "--keep") == DemoOptions(keep=True, color=False)


# -- the verdict, from the tallies -------------------------------------------------------------------


def walk_with(percent: float, callers_on_envoy: int, *, callers: int = 10) -> Walk:
    """A one-step walk of users at ``percent``, its flag settled with ``callers_on_envoy`` on Envoy."""
    walk = Walk.plan(DemoOptions(), have_haproxy=True, flags_path=Path("flags.json"))
    step = walk.steps[0]
    step.percent = percent
    step.decisions = {
        f"c{i}": {"users": Route.ENVOY if i < callers_on_envoy else Route.HAPROXY, "orders": Route.HAPROXY}
        for i in range(callers)
    }
    return walk


def settled(calls: int, envoy: int, *, backend: int | None = None, errors: int = 0) -> Tally:
    """The tally of ``calls`` checked calls, ``envoy`` of them expected and observed via Envoy."""
    tally = Tally(errors=errors)
    tally.calls = {Route.ENVOY: envoy, Route.HAPROXY: calls - envoy}
    tally.settled = calls
    tally.expected_envoy = tally.observed_envoy = envoy
    tally.backend_envoy = envoy if backend is None else backend
    return tally


def test_a_step_whose_split_followed_the_flag_has_no_problem() -> None:
    walk = walk_with(50.0, 4)
    step = walk.steps[0]
    assert step_problems(walk, step, "users", settled(100, 40)) == []
    assert step_problems(walk, step, "orders", settled(100, 0)) == []  # not walked: stays on HAProxy


def test_each_way_a_step_can_go_wrong_is_named() -> None:
    walk = walk_with(100.0, 9)
    step = walk.steps[0]
    wrong = settled(50, 45, backend=44, errors=2)
    wrong.wrong_route = 1
    wrong.failed_over = 1
    wrong.observed_envoy = 46
    assert step_problems(walk, step, "users", wrong) == [
        "2 failed calls",
        "1 calls took another route than the flag gave their caller",
        "expected 45 calls via Envoy, 46 went via Envoy",
        "46 calls went via Envoy, the backend saw 44",
        "1 calls failed over from Envoy to HAProxy",
        "the flag says 100% but 9 of 10 callers are on Envoy",
    ]
    assert step_problems(walk, step, "orders", Tally()) == [
        "no call measured after the flag loaded (try a longer --duration)"
    ]


def test_the_summary_names_each_problem_by_step_and_service_and_totals_the_calls() -> None:
    walk = walk_with(0.0, 0)
    step = walk.steps[0]
    step.tallies["users"] = settled(30, 0)
    step.tallies["orders"] = settled(20, 0, errors=1)
    step.tallies["orders"].in_flip, step.tallies["orders"].in_flip_errors = 3, 1
    step.tallies["users"].retried = 2
    summary = summarise(walk)
    assert [(r.step.number, r.service, r.problems) for r in summary.rows[:2]] == [
        (1, "users", []),
        (1, "orders", ["1 failed calls"]),
    ]
    assert summary.problems[0] == "step 1/5 orders: 1 failed calls"
    assert (summary.total_calls, summary.errors, summary.in_flip, summary.in_flip_errors, summary.retried) == (
        51,
        1,
        3,
        1,
        2,
    )


def test_the_ending_fails_on_a_problem_or_a_process_left_running_and_interrupted_wins() -> None:
    stopped = [("Envoy", 11, False), ("HAProxy", 12, False)]
    ok = conclude([], stopped, interrupted=False, total_calls=900, steps=5)
    assert (ok.kind, ok.code, ok.flips) == ("ok", 0, True)
    assert ok.stopped_text == "every process the demo started was stopped: Envoy (pid 11), HAProxy (pid 12)"
    failed = conclude(["step 2/5 users: 1 failed calls"], stopped, interrupted=False, total_calls=900, steps=5)
    assert (failed.kind, failed.code) == ("failed", 1)
    running = conclude([], [("Envoy", 11, True)], interrupted=False, total_calls=900, steps=1)
    assert (running.code, running.problems, running.stopped) == (1, ["Envoy (pid 11) is still running"], [])
    assert running.stopped_text == "every process the demo started was stopped"
    interrupted = conclude(["anything"], stopped, interrupted=True, total_calls=0, steps=0)
    assert (interrupted.kind, interrupted.code) == ("interrupted", 130)
