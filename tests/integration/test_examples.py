"""The examples run as a user would run them (so they cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.usefixtures("envoy_bin", "haproxy_bin")
def test_route_by_flag_example_walks_the_flag_and_stops_everything() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "route_by_flag.py"), "--calls", "20"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # columns: envoy, haproxy, errors
    assert re.search(r"^flag: every caller via HAProxy\s+0\s+20\s+0\s", done.stdout, re.M), done.stdout
    assert re.search(r"^flag: every caller via Envoy\s+20\s+0\s+0\s", done.stdout, re.M), done.stdout
    assert re.search(r"^rollback: every caller via HAProxy\s+0\s+20\s+0\s", done.stdout, re.M), done.stdout
    assert "OK: every call succeeded" in done.stdout


@pytest.mark.usefixtures("envoy_bin", "haproxy_bin")
@pytest.mark.parametrize("route", ["envoy", "haproxy"])
@pytest.mark.parametrize("example", ["flask_app.py", "asgi_app.py"])
def test_context_examples_carry_request_id_and_shrunk_budget(example: str, route: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--route", route],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    request_id = "example-flask-1" if example == "flask_app.py" else "example-asgi-1"
    budget_header = "x-envoy-expected-rq-timeout-ms" if route == "envoy" else "x-mesh-timeout-ms"
    assert re.search(rf"^orders\s+time_left\(\) \d+ ms, current_request_id\(\) {request_id}$", done.stdout, re.M)
    seen = re.search(rf"^users\s+received x-request-id {request_id}, {budget_header} (\d+), ", done.stdout, re.M)
    assert seen, done.stdout
    assert 0 < int(seen.group(1)) < 800
    assert re.search(rf"^users\s+via {route}; x-envoy-max-retries -, ", done.stdout, re.M), done.stdout
    assert "OK: the request id and a shrunk budget reached users; all processes stopped." in done.stdout
