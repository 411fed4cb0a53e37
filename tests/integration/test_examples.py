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
