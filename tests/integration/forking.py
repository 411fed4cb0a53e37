"""Run code in a child made with ``os.fork()`` from a test, and talk to it over pipes.

The child never returns into pytest: whatever happens, it leaves with ``os._exit`` and the status
says how it went (0: its work returned; 1: it raised, the traceback was sent to the parent). The
parent reads the child's messages and its exit status with deadlines, and kills the child (by its
pid) if it does not finish in time, so a child that hangs fails the test instead of stalling it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any


class Channel:
    """One end of the two pipes between a parent and its child: JSON messages, one per line."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._buffer = b""

    def send(self, message: Any) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self._write_fd, data) :]

    def receive(self, timeout: float) -> Any:
        """The next message; raises ``TimeoutError`` if none comes within ``timeout`` seconds,
        ``EOFError`` if the other side closed its end."""
        until = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message within {timeout} s")
            readable, _, _ = select.select([self._read_fd], [], [], left)
            if readable:
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    raise EOFError("the other side closed the pipe")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Child:
    """A forked child running ``work(channel)``; the parent's side of it."""

    def __init__(self, work: Callable[[Channel], None]) -> None:
        to_parent_r, to_parent_w = os.pipe()
        to_child_r, to_child_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 1
            channel = Channel(to_child_r, to_parent_w)
            try:
                os.close(to_parent_r)
                os.close(to_child_w)
                work(channel)
                status = 0
            except BaseException:
                with contextlib.suppress(BaseException):
                    channel.send({"error": traceback.format_exc()})
            finally:
                os._exit(status)
        os.close(to_parent_w)
        os.close(to_child_r)
        self.pid = pid
        self.channel = Channel(to_parent_r, to_child_w)
        self.status: int | None = None

    def receive(self, timeout: float = 60.0) -> Any:
        """The child's next message; a traceback it sent fails the test with it."""
        try:
            message = self.channel.receive(timeout)
        except (TimeoutError, EOFError) as exc:
            self.kill()
            raise AssertionError(f"child {self.pid}: {exc} (exit status {self.status})") from None
        if isinstance(message, dict) and "error" in message:
            self.wait()
            raise AssertionError(f"child {self.pid} raised:\n{message['error']}")
        return message

    def send(self, message: Any) -> None:
        self.channel.send(message)

    def wait(self, timeout: float = 30.0) -> int:
        """The child's exit status (killing it if it has not exited within ``timeout``)."""
        until = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > until:
                self.kill()
                raise AssertionError(f"child {self.pid} did not exit within {timeout} s (killed)")
            time.sleep(0.01)
        self.channel.close()
        return self.status

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                self.status = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        self.channel.close()


def run_in_child(work: Callable[[Channel], None], timeout: float = 60.0) -> Any:
    """Fork, run ``work`` in the child and return the one message it sends; the child must then
    exit with status 0."""
    child = Child(work)
    try:
        message = child.receive(timeout)
        assert child.wait() == 0
        return message
    finally:
        child.kill()
