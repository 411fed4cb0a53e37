"""The seams of mesh_client._compat: with MESH_CLIENT_COMPAT_FALLBACK=1 every probe fails and the
public fallbacks carry the calls (``tox -e compat-fallback`` runs the unit tests so)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mesh_client._compat import FALLBACK_ENV, forced_fallback

FORCED_CHECK = """
from mesh_client._compat import otel
assert otel._METRICS_API is None, "metrics probe"
assert otel._TRACE_STATE_STORE is False, "trace state probe"
assert otel.tracing_is_noop() is False, "tracing assumed on"
assert otel.metrics_are_noop() is False, "metrics assumed on"
assert otel.no_sdk() is False, "an SDK assumed"
from opentelemetry import context as otel_context
assert otel.current_context is otel_context.get_current, "context read through the public API"
state = otel.trace_state([("a", "1"), ("b", "2")])
assert state.to_header() == "a=1,b=2", state.to_header()
print("fallbacks in force")
"""


def run_python(code: str, value: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, FALLBACK_ENV: value}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_the_environment_variable_forces_every_fallback() -> None:
    done = run_python(FORCED_CHECK, "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fallbacks in force"


@pytest.mark.parametrize("value", ["", "0", "true"])
def test_only_the_value_1_forces_them(value: str) -> None:
    done = run_python("from mesh_client._compat import otel; print(otel._TRACE_STATE_STORE)", value)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_this_process_knows_which_mode_it_runs_in() -> None:
    assert forced_fallback() == (os.environ.get(FALLBACK_ENV) == "1")


def test_the_current_context_reader_follows_attach_and_detach() -> None:
    from opentelemetry import context as otel_context

    from mesh_client._compat import otel

    before = otel.current_context()
    assert before is otel_context.get_current()
    token = otel_context.attach(otel_context.set_value("mesh_client.test", 1))
    try:
        assert otel.current_context() is otel_context.get_current()
        assert otel.current_context().get("mesh_client.test") == 1
    finally:
        otel_context.detach(token)
    assert otel.current_context() is before
    # the fast reader where the probe holds, the public one where it is forced off
    assert (otel.current_context is otel_context.get_current) == forced_fallback()
