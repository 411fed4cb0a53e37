"""The seams of mesh_client._compat: with MESH_CLIENT_COMPAT_FALLBACK=1 every probe fails and the
public fallbacks carry the calls (``tox -e compat-fallback`` runs the unit tests so)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import thriftpy2.thrift
import thriftpy2.transport

from mesh_client._compat import FALLBACK_ENV, forced_fallback
from mesh_client._compat import thriftpy2 as tp
from mesh_client.thrift import pool

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
from mesh_client._compat import thriftpy2 as tp
from mesh_client.thrift import pool, reading
assert tp._ARGS_TO_KWARGS is None, "args_to_kwargs probe"
assert tp.call_kwargs({1: (10, "id", True)}, 7) == {"id": 7}
assert tp.memory_buffer_reusable() is False and pool._REUSABLE_BUFFER is False, "memory buffer probe"
assert tp._BUFFERED_CLEAN is False, "buffered transport probe"
assert tp.strict_reader(reading.pure_reader) is False, "strict reader probe"
assert reading.binary_reader is reading.pure_reader, "thrift reader"
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


# -- thriftpy2: each seam's fast path and fallback, in whichever mode this process runs ----------


def test_the_thriftpy2_probes_pass_on_this_thriftpy2_unless_forced() -> None:
    passing = not forced_fallback()
    assert (tp._probe_args_to_kwargs() is thriftpy2.thrift.args_to_kwargs) == passing
    assert tp._probe_memory_clean() == passing
    assert tp._probe_buffered_clean() == passing


@pytest.mark.parametrize("probed", [True, False], ids=["clean", "constructor again"])
def test_a_buffered_transport_is_emptied_either_way(probed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    class Inner(tp._Chunks):
        written = b""

        def write(self, data: bytes) -> None:
            self.written += bytes(data)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(tp, "_BUFFERED_CLEAN", probed)
    inner = Inner(b"abcd", b"wxyz")
    trans: Any = thriftpy2.transport.TBufferedTransport(inner)
    assert bytes(trans.read(1)) == b"a"
    trans.write(b"unsent")
    tp.clear_buffered(trans, inner)
    assert bytes(trans.read(2)) == b"wx"  # not the rest of the first chunk
    trans.write(b"reply")
    trans.flush()
    assert inner.written == b"reply"  # not what was dropped


@pytest.mark.parametrize("reusable", [True, False], ids=["clean", "new buffer"])
def test_the_thrift_client_writes_each_call_into_an_empty_buffer(
    reusable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "_REUSABLE_BUFFER", reusable)
    left, right = socket.socketpair()
    try:
        conn = pool.Connection(left, None)  # type: ignore[arg-type]
        first, proto = conn.writer()
        proto.write_message_begin("a", 1, 1)
        assert bytes(first.getvalue())
        second, _ = conn.writer()
        assert bytes(second.getvalue()) == b""
        assert (second is first) == reusable
    finally:
        left.close()
        right.close()
