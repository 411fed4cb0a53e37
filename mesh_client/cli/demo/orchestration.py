"""The demo from start to end: bring the mesh up, walk the flag with traffic running (then the
override step), print the summary, keep the mesh up with ``--keep``, stop everything (also on
Ctrl-C or SIGTERM), and end with the verdict and the exit code."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ...flag_files import write_flag_file
from .display import Display
from .options import DEMO_SERVICES, DemoOptions
from .overrides_step import steer_one
from .progress import HEAD1, HEAD2, flip_line, redraw, rows
from .report import print_ending, print_summary
from .shadow_step import compare_some
from .startup import DemoMesh, Processes, start
from .steps import DemoFailed, wait_for_flag
from .traffic import Ledger, Traffic
from .verdict import conclude, summarise

__all__ = ["keep", "run", "walk_flag"]


def run(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo; return the exit code (see :mod:`mesh_client.cli.demo`)."""
    out = out if out is not None else sys.stdout
    tty = out.isatty() and os.environ.get("TERM") != "dumb"
    display = Display(out, live=tty, color=tty and options.color and not os.environ.get("NO_COLOR"))
    restore: Any = None
    if threading.current_thread() is threading.main_thread():
        restore = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(options, display)
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


def _run(options: DemoOptions, display: Display) -> int:
    processes: Processes = []
    problems: list[str] = []
    total_calls = steps = 0
    interrupted = False
    stack = ExitStack()
    try:
        try:
            mesh = start(options, display, stack, processes)
            walk = mesh.walk
            steps = len(walk.steps)
            ledger = Ledger()
            traffic = Traffic(mesh.callers, ledger)
            stack.callback(traffic.stop)  # stopped before the sidecars and the Meshes
            display.cursor(False)
            stack.callback(display.cursor, True)
            problems += walk_flag(mesh, display, traffic, ledger)
            display.release()
            display.cursor(True)
            summary = summarise(walk)
            print_summary(display, walk, summary)
            problems += summary.problems
            total_calls = summary.total_calls
            if ledger.error_samples:
                display.print("first failed calls:", "red")
                for sample in ledger.error_samples:
                    display.print(f"  {sample}", "red")
            if options.keep:
                try:
                    keep(display, mesh, processes, problems)
                except KeyboardInterrupt:
                    display.print()
        except KeyboardInterrupt:
            interrupted = True
        except (DemoFailed, RuntimeError, OSError) as exc:
            display.release()
            problems.append(str(exc))
    finally:
        with _interrupts_ignored():
            stack.close()
    # said once every process is stopped
    ending = conclude(
        problems,
        [(name, process.pid, process.poll() is None) for name, process in processes],
        interrupted=interrupted,
        total_calls=total_calls,
        steps=steps,
    )
    print_ending(display, ending)
    return ending.code


def walk_flag(mesh: DemoMesh, display: Display, traffic: Traffic, ledger: Ledger) -> list[str]:
    """Each step: write its flag, wait until every caller has loaded it, settle the ledger on the
    callers' decisions, hold the step while the traffic runs; then (with the canary) steer one
    request to it and compare both routes' answers on a few calls (the shadow step), and stop the
    traffic. Returns the problems of those two steps."""
    show, walk, callers = display, mesh.walk, mesh.callers
    if not show.live:
        show.print(HEAD1)
        show.print(HEAD2)
    walk.began = time.monotonic()
    for step in walk.steps:
        step.started = time.monotonic()
        ledger.flip(step)  # calls in flight from now on are not checked against a flag
        if step.number == 1:  # its flag was written before the callers' Meshes were made
            traffic.start()
        else:
            write_flag_file(walk.flags_path, walk.flags_for(mesh.config, step))
        step.loaded_in = wait_for_flag(callers, DEMO_SERVICES, step.version, lambda: redraw(walk, show))
        ledger.settle(step, {c.name: {s: c.mesh.route_for(s).route for s in DEMO_SERVICES} for c in callers})
        if not show.live:
            show.print(flip_line(walk, step), "dim")
        until = max(step.started + walk.hold, time.monotonic() + 0.25)
        while (left := until - time.monotonic()) > 0:
            redraw(walk, show)
            time.sleep(min(0.2, left))
        step.ended = time.monotonic()
        if traffic.crashed:
            raise DemoFailed("the traffic stopped: " + "; ".join(traffic.crashed))
        if not show.live:
            with ledger.lock:
                for line, _ in rows(walk, step):
                    show.print(line)
    extra: list[tuple[str, list[str]]] = []
    canary = mesh.canary
    if canary is not None:  # while the traffic goes on: one request steered to the canary, then shadow reads
        extra.append(steer_one(callers[0].session, callers[0].name, lambda: canary.served))
        extra.append(compare_some(mesh.config, callers[0].name))
    traffic.stop()
    redraw(walk, show, final=True)
    problems = []
    for line, found in extra:
        show.print(line, "red" if found else "green")
        problems += found
    return problems


def keep(display: Display, mesh: DemoMesh, processes: Processes, problems: list[str]) -> None:
    """``--keep``: say how to call the running mesh, then watch the sidecars until Ctrl-C (a sidecar
    that exits is a problem, and ends the watch)."""
    show, prog, config = display, _prog(), mesh.config
    lines = [
        ("registry", str(mesh.registry)),
        ("flags", f"{mesh.walk.flags_path}  (edit it, e.g. with mesh_client.routing.write_flag_file)"),
        ("routes now", f"{prog} route {mesh.registry}"),
    ]
    for name, svc in config.services.items():
        lines.append((f"{name} via Envoy", f"curl -s -H 'Host: {name}' http://{config.envoy_http}/v1/{name}/1"))
        if mesh.have_haproxy:
            lines.append((f"{name} via HAProxy", f"curl -s http://{svc.haproxy}/v1/{name}/1"))
    lines.append(("Envoy admin", f"http://{config.envoy_admin}/  (stats, clusters, config_dump)"))
    show.print()
    show.print("The mesh is still running (--keep); Ctrl-C stops it.", "bold")
    width = max(len(label) for label, _ in lines)
    for label, text in lines:
        show.print(f"  {label:<{width}}  {text}")
    while True:
        time.sleep(0.5)
        for name, process in processes:
            if process.poll() is not None:
                problems.append(f"{name} (pid {process.pid}) exited with code {process.returncode} during --keep")
                show.print(f"{name} (pid {process.pid}) exited with code {process.returncode}; stopping", "red")
                return


def _prog() -> str:
    """How to run mesh-client with this interpreter, for the lines printed by --keep."""
    script = Path(sys.executable).parent / "mesh-client"
    on_path = shutil.which("mesh-client")
    if on_path and Path(on_path).resolve() == script.resolve():
        return "mesh-client"
    if script.exists():
        return str(script)
    return f"{sys.executable} -m mesh_client"


@contextmanager
def _interrupts_ignored() -> Iterator[list[int]]:
    """Ignore Ctrl-C and SIGTERM while every process is being stopped (a second Ctrl-C must not cut
    the clean-up short); yields the list of signals that arrived."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in held}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
