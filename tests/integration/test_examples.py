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


@pytest.mark.usefixtures("envoy_bin", "haproxy_bin")
@pytest.mark.parametrize("transport", ["header", "framed"])
@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_thrift_example_calls_through_both_routes(route: str, transport: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "thrift_app.py"), "--route", route, "--transport", transport],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"^get\(1\)\s+User\(id=1, name='user-1'\)$", out, re.M), out
    assert re.search(r"^get\(-1\)\s+raised NotFound\(message='no user -1'\)$", out, re.M), out
    whoami = r"^whoami\(\) inside a request\s+users saw request id (\S+), time_left\(\) (None|(\d+) ms)$"
    seen = re.search(whoami, out, re.M)
    assert seen, out
    if transport == "header":  # THeader carries the request id and what is left of the caller's 800 ms
        assert seen.group(1) == "example-thrift-1", out
        assert seen.group(3) is not None, out
        assert 0 < int(seen.group(3)) < 800, out
    else:  # framed carries nothing: the server made up an id and has no deadline
        assert seen.group(1) != "example-thrift-1", out
        assert seen.group(2) == "None", out
    timed_out = re.search(r"^sleep\(600\) with timeout 0\.3\s+raised MeshTimeoutError\S* after (\d+) ms$", out, re.M)
    assert timed_out, out
    assert 250 <= int(timed_out.group(1)) <= 600, out
    assert re.search(rf"^\s+sleep to service 'users-thrift': no answer via {route} at ", out, re.M), out
    # never another call's reply after the timeout
    assert re.search(r"^get\(2\) right after\s+User\(id=2, name='user-2'\)$", out, re.M), out
    assert re.search(r"^get\(3\) after the late reply\s+User\(id=3, name='user-3'\)$", out, re.M), out
    calls = 6 if route == "envoy" else 0
    assert re.search(rf"^Envoy's Thrift listener counted {calls} calls$", out, re.M), out
    assert "OK: every call behaved as expected; all processes stopped." in out
