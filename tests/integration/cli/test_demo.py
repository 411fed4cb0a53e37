"""``mesh-client demo`` runs as a user would run it, with real Envoy and HAProxy, and proves its walk.

Its arguments and its verdict are tested without proxies in ``tests/unit/cli/test_demo.py``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mesh_client.cli import main
from mesh_client.cli.demo import startup

# step, service, flag, callers on Envoy / callers, expected, observed, backend, checked calls, errors, result
SUMMARY_ROW = re.compile(
    r"^(?P<step>\d)/(?P<steps>\d)\s+(?P<service>users|orders)\s+(?P<flag>\d+% Envoy|HAProxy|Envoy)\s+"
    r"(?P<envoy_callers>\d+)/(?P<callers>\d+)\s+(?P<expected>[\d.]+)%\s+(?P<observed>[\d.]+)%\s+"
    r"(?P<backend>[\d.]+)%\s+(?P<checked>\d+)\s+(?P<errors>\d+)\s+(?P<result>.+)$",
    re.M,
)


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_client", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.usefixtures("envoy_bin", "haproxy_bin")
def test_demo_walks_the_flag_with_no_failed_call_and_the_split_the_flag_gave() -> None:
    done = run_demo("--duration", "6")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    rows = [m.groupdict() for m in SUMMARY_ROW.finditer(out)]
    assert [(r["step"], r["service"]) for r in rows] == [
        (str(step), service) for step in range(1, 6) for service in ("users", "orders")
    ], out
    for row in rows:
        assert row["result"] == "ok", row
        assert row["errors"] == "0", row
        assert int(row["checked"]) > 0, row
        assert row["expected"] == row["observed"] == row["backend"], row
        assert row["callers"] == "10", row
    users = [r for r in rows if r["service"] == "users"]
    assert [r["flag"] for r in users] == ["0% Envoy", "10% Envoy", "50% Envoy", "100% Envoy", "0% Envoy"]
    envoy_callers = [int(r["envoy_callers"]) for r in users]
    assert envoy_callers[0] == envoy_callers[4] == 0, users  # all via HAProxy, then the rollback
    assert envoy_callers[3] == 10, users  # all via Envoy
    assert 0 < envoy_callers[1] <= envoy_callers[2] < 10, users  # a growing share in between
    assert [r["observed"] for r in users][::4] == ["0.0", "0.0"]
    assert users[3]["observed"] == "100.0"
    # the service whose flag is not walked stays on HAProxy throughout
    assert {(r["flag"], r["observed"]) for r in rows if r["service"] == "orders"} == {("HAProxy", "0.0")}
    assert re.search(
        r"^total: \d+ calls, 0 failed; \d+ made while the callers were loading a new flag, 0 of them", out, re.M
    )
    assert re.search(
        r"^OK: \d+ calls, none failed, also during the flips; every step's split followed the flag", out, re.M
    )
    # the override step: one request steered to users' canary through orders, on both of orders' routes
    assert re.search(
        r"^  override  checkout -> orders \((envoy|haproxy)\) -> users, with route_overrides\(\{'users': 'canary'\}\) "
        r"in checkout: the canary answered via Envoy and via HAProxy; it received 2 request\(s\), every other call "
        r"stayed on main$",
        out,
        re.M,
    ), out
    # the shadow step: both routes' answers compared, and the planted difference found, alone
    assert re.search(
        r"^  shadow    checkout -> users at stage shadow, 20 calls each copied via Envoy and compared: 10 matched, "
        r"10 mismatched, on /v1/search \(body \$\.page_size\): the planted difference, and nothing else$",
        out,
        re.M,
    ), out
    pids = [int(pid) for pid in re.findall(r"^  (?:Envoy|HAProxy)\s+pid (\d+):", out, re.M)]
    assert len(pids) == 2, out
    assert all(gone(pid) for pid in pids), "the demo left a sidecar running"


@pytest.mark.usefixtures("envoy_bin")
def test_without_haproxy_the_demo_says_so_and_shows_the_envoy_side(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(startup.sidecars, "haproxy_binary", lambda: None)
    assert main(["demo", "--duration", "3", "--services", "users,orders"]) == 0
    out = capsys.readouterr().out
    assert "HAProxy is not installed (apt-get install -y haproxy)" in out
    rows = [m.groupdict() for m in SUMMARY_ROW.finditer(out)]
    assert [(r["step"], r["steps"], r["service"], r["observed"], r["backend"]) for r in rows] == [
        ("1", "1", "users", "100.0", "100.0"),
        ("1", "1", "orders", "100.0", "100.0"),
    ], out
    assert all(r["result"] == "ok" and r["errors"] == "0" for r in rows), out
