"""``-m "not real"`` leaves out every test that starts real Envoy / HAProxy (tests/conftest.py
marks them), and keeps the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parents[1]


def collected(*args: str) -> str:
    argv = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=TESTS.parent, check=False)
    return done.stdout


def test_not_real_deselects_integration_tests_without_a_marker_of_their_own() -> None:
    # test_routes.py has no pytestmark: the directory marks it
    path = str(TESTS / "integration" / "test_routes.py")
    assert "pytestmark" not in Path(path).read_text()
    out = collected("-m", "not real", path)
    assert "::" not in out, out
    assert "deselected" in out, out
    assert "::" in collected("-m", "real", path)


def test_not_real_keeps_unit_tests_and_drops_their_real_ones() -> None:
    path = str(TESTS / "unit" / "test_plugin.py")
    kept = [line for line in collected("-m", "not real", path).splitlines() if "::" in line]
    real = [line for line in collected("-m", "real", path).splitlines() if "::" in line]
    assert kept
    assert real
    assert not set(kept) & set(real)
    assert all("sidecar" in line for line in real), real
