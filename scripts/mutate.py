#!/usr/bin/env python3
"""Mutation check: hand-chosen mutants of the modules that decide (core, retrying, envoy, haproxy, policy,
budget, routing), each a bug someone could plausibly write, run against the tests that should
catch it. A mutant the tests still pass is a hole in the suite.

Each mutant is applied to a copy of the package and tests in a temporary folder (the working
tree is never touched), and the selected tests run there with ``pytest -x`` (stop at the first
failure: the mutant is killed). The unmutated copy must pass first.

    python scripts/mutate.py                  # unit tests only (about 3 min)
    python scripts/mutate.py --real           # plus the conformance suite (real Envoy and HAProxy)
    python scripts/mutate.py --only backoff-doubling --keep
    python scripts/mutate.py --list

Exit status: 0 when the score reaches ``--target`` (default 90 %), 1 otherwise, 2 on a broken
mutant or baseline. The score of a run is in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("mesh_client", "tests", "docs", "setup.cfg", "pyproject.toml", "ruff.toml")
UNIT = (
    "tests/unit/test_core.py",
    "tests/unit/test_envoy.py",
    "tests/unit/test_envoy_model.py",
    "tests/unit/test_policy.py",
    "tests/unit/test_budget.py",
    "tests/unit/test_routing.py",
    "tests/unit/test_fake_mesh.py",
    "tests/unit/test_registry.py",
)
REAL = ("tests/integration/test_conformance.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    find: str  # must occur exactly once in the file
    replace: str
    why: str


# Left out as equivalent (no observable behaviour differs, so no test can kill them): dropping the
# "does the Retry-After pause fit" check of CallRun._retry_after (CallRun._retry refuses a delay
# that leaves less than MIN_ATTEMPT anyway; only the exact boundary differs).
MUTANTS = [
    Mutant(
        "backoff-doubling",
        "mesh_client/retrying.py",
        "BACKOFF_BASE_MS << doublings",
        "BACKOFF_BASE_MS * ((2 << doublings) - 1)",
        "Envoy's documented (2^n - 1) x 25 ms instead of the doubling interval it uses",
    ),
    Mutant(
        "backoff-cap",
        "mesh_client/retrying.py",
        "BACKOFF_CAP_MS: Final = 10 * BACKOFF_BASE_MS",
        "BACKOFF_CAP_MS: Final = 20 * BACKOFF_BASE_MS",
        "a back-off cap twice Envoy's",
    ),
    Mutant(
        "retry-past-the-budget",
        "mesh_client/core.py",
        "        if self.end - now - delay < MIN_ATTEMPT:\n            return None",
        "        if False:\n            return None",
        "a retry started with no time left for it",
    ),
    Mutant(
        "retry-total-timeout",
        "mesh_client/retrying.py",
        "return attempt.per_try_limited and bool(tokens_set & envoy.RESET_RETRY_ON)",
        "return bool(tokens_set & envoy.RESET_RETRY_ON)",
        "the total timeout retried like a per-try timeout",
    ),
    Mutant(
        "replay-a-sent-body",
        "mesh_client/retrying.py",
        "    if not replayable:  # the body went to HAProxy already and cannot be sent again\n        return False",
        "    pass",
        "a streamed body sent twice",
    ),
    Mutant(
        "retry-shed-load",
        "mesh_client/retrying.py",
        '    if f"{prefix}-overloaded" in outcome.headers:',
        "    if False:",
        "the client retries a response that says the upstream is overloaded",
    ),
    Mutant(
        "retry-after-date-reversed",
        "mesh_client/retrying.py",
        "return max(0.0, when.timestamp() - _clock.wall())",
        "return max(0.0, _clock.wall() - when.timestamp())",
        "a Retry-After date read backwards (a date in the past asks for a long pause)",
    ),
    Mutant(
        "ignore-retry-after",
        "mesh_client/core.py",
        "delay = max(at_least or 0.0, float(self.plan.jitter(",
        "delay = max(0.0, float(self.plan.jitter(",
        "Retry-After not waited for",
    ),
    Mutant(
        "timeout-header-ignores-deadline",
        "mesh_client/core.py",
        "tail = ((timeout_header, remaining_ms), *policy_rest)",
        "tail = ((timeout_header, str(int(policy.timeout * 1000))), *policy_rest)",
        "Envoy told the service timeout, not the time the call has left",
    ),
    Mutant(
        "no-envoy-margin",
        "mesh_client/core.py",
        "return str(int(seconds * 1000 + 1e-6)), seconds + margin",
        "return str(int(seconds * 1000 + 1e-6)), seconds",
        "the client's timer races Envoy's on the Envoy route",
    ),
    Mutant(
        "envoy-retries-past-the-budget",
        "mesh_client/core.py",
        "                retries = self._budget_left  # (the budget as the call found it: one Envoy attempt per call)",
        "                pass",
        "Envoy asked for more retries than the budget has",
    ),
    Mutant(
        "failover-always",
        "mesh_client/core.py",
        "if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT and self.plan.mesh.failover:",
        "if self.route is Route.ENVOY and outcome.kind is Failure.CONNECT:",
        "failover when the registry switched it off",
    ),
    Mutant(
        "timeout-zero",
        "mesh_client/envoy.py",
        "return max(1, int(seconds * 1000 + 1e-6))",
        "return max(0, int(seconds * 1000 + 1e-6))",
        "x-envoy-upstream-rq-timeout-ms: 0 (no timeout at all) for a budget below 1 ms",
    ),
    Mutant(
        "gateway-error-without-504",
        "mesh_client/envoy.py",
        'or ("gateway-error" in tokens and status in (502, 503, 504))',
        'or ("gateway-error" in tokens and status in (502, 503))',
        "gateway-error not covering 504",
    ),
    Mutant(
        "retriable-4xx-too-wide",
        "mesh_client/envoy.py",
        'or ("retriable-4xx" in tokens and status == 409)',
        'or ("retriable-4xx" in tokens and 400 <= status < 500)',
        "retriable-4xx retrying every 4xx",
    ),
    Mutant(
        "no-max-retries-zero",
        "mesh_client/envoy.py",
        '        headers.append((names.max_retries, "0"))',
        "        pass",
        "no x-envoy-max-retries: 0, so a retry policy on the route retries calls that must not be",
    ),
    Mutant(
        "overflow-is-a-reset",
        "mesh_client/envoy.py",
        '        if "overflow" in reason:  # a circuit breaker refused it: never sent\n'
        '            return "overloaded"\n',
        "",
        "a circuit-breaker overflow read as a reset that may have reached the upstream",
    ),
    Mutant(
        "reset-before-request-no-connect",
        "mesh_client/envoy.py",
        '{"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure"}',
        '{"5xx", "gateway-error", "reset", "connect-failure"}',
        "reset-before-request not retrying a connection that was never made",
    ),
    Mutant(
        "haproxy-no-server-not-connect",
        "mesh_client/haproxy.py",
        '    if status == 503 and "No server is available to handle this request" in text:\n'
        '        return "connect_failure"',
        '    if status == 503 and "No server is available to handle this request" in text:\n'
        '        return "upstream_reset"',
        "HAProxy's 'no server' page read as a reset (a POST would not be retried although nothing was sent)",
    ),
    Mutant(
        "never-sent-any",
        "mesh_client/policy.py",
        "if idempotent or all(t in NEVER_SENT_TOKENS for t in self.retry_on):",
        "if idempotent or any(t in NEVER_SENT_TOKENS for t in self.retry_on):",
        "a POST retried under 5xx because connect-failure is also listed",
    ),
    Mutant(
        "post-idempotent",
        "mesh_client/policy.py",
        'DEFAULT_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})',
        'DEFAULT_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST"})',
        "POST treated as idempotent",
    ),
    Mutant(
        "zero-seconds",
        "mesh_client/policy.py",
        "    if seconds <= 0:",
        "    if seconds < 0:",
        "a timeout of 0 accepted",
    ),
    Mutant(
        "budget-ignores-retries",
        "mesh_client/budget.py",
        "balance = int(self._floor + calls * self._share - self._retries_total)",
        "balance = int(self._floor + calls * self._share)",
        "the budget forgets the retries already made",
    ),
    Mutant(
        "budget-below-one",
        "mesh_client/budget.py",
        "            if self._balance() < 1:",
        "            if self._balance() < 0:",
        "a retry withdrawn from a budget with less than one retry in it",
    ),
    Mutant(
        "flags-forget-last-good",
        "mesh_client/flag_router.py",
        "        route, stage = last or (self._default, None)",
        "        route, stage = (self._default, None)",
        "a broken flag source sends calls to default_route instead of the last good route",
    ),
]


def copy_tree(to: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, to / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, to / name)


def apply(mutant: Mutant, to: Path) -> None:
    path = to / mutant.path
    path.write_text(checked(mutant, path.read_text()).replace(mutant.find, mutant.replace))


def checked(mutant: Mutant, text: str) -> str:
    found = text.count(mutant.find)
    if found != 1:
        raise SystemExit(f"mutant {mutant.name}: the text to change occurs {found} times in {mutant.path}")
    return text


def run_tests(where: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str, float]:
    """(passed, the first failure's name or the last line, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=where, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s", time.monotonic() - started
    took = time.monotonic() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    lines = done.stdout.strip().splitlines()
    return done.returncode == 0, failed[0] if failed else (lines[-1] if lines else done.stderr[-300:]), took


def check_copy_is_used(where: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(where)}
    code = "import mesh_client; print(mesh_client.__file__)"
    found = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).is_relative_to(where):
        raise SystemExit(f"the copy is not the mesh_client imported: {found.stdout.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="also run the conformance suite (real Envoy, HAProxy)")
    parser.add_argument("--only", action="append", default=[], help="run this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--target", type=float, default=90.0, help="the score (%%) to reach, default 90")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:34} {m.path:24} {m.why}")
        return 0
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in mutants}
    if unknown:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    tests = UNIT + (REAL if args.real else ())
    work = Path(tempfile.mkdtemp(prefix="mesh-mutate-"))
    try:
        baseline = work / "baseline"
        copy_tree(baseline)
        check_copy_is_used(baseline)
        for m in mutants:  # every mutant applies to the current code before anything runs
            checked(m, (ROOT / m.path).read_text())
        passed, detail, took = run_tests(baseline, tests, args.timeout)
        print(f"baseline: {'passed' if passed else 'FAILED'} in {took:.0f} s ({detail})", flush=True)
        if not passed:
            return 2
        killed = []
        for m in mutants:
            copy = work / m.name
            copy_tree(copy)
            apply(m, copy)
            passed, detail, took = run_tests(copy, tests, args.timeout)
            if not passed:
                killed.append(m.name)
            verdict = "survived" if passed else "killed  "
            print(f"{verdict} {m.name:34} {took:5.0f} s  {'' if passed else detail}", flush=True)
            if not args.keep:
                shutil.rmtree(copy)
        score = 100.0 * len(killed) / len(mutants)
        survivors = [m.name for m in mutants if m.name not in killed]
        print(f"\nscore: {len(killed)}/{len(mutants)} mutants killed ({score:.0f} %) with {' '.join(tests)}")
        if survivors:
            print("survived: " + ", ".join(survivors))
        return 0 if score >= args.target else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
