"""``mesh-client shadow MESH.toml SERVICE``: compare the two routes' answers on a few paths, live.

Before a flip, an operator wants to see on the spot whether Envoy answers like HAProxy. This
command makes ``--count`` GETs of the ``--path`` values (round robin) through the mesh at the
``shadow`` stage (``--stage live`` swaps who answers), every call copied down the other route
(``sample = 1.0``, whatever the registry says) and compared exactly as an application's shadow
reads are (the registry's ``ignore_json`` and ``compare_headers``, see docs/shadow.md). It prints
a table per path, refreshed while the calls run on a terminal, then the differing parts of the
first mismatches.

Exit codes: 0 every copy matched; 1 a mismatch, a copy that failed on either route, a call that
failed, or an invalid registry; 2 bad arguments (an unknown or Thrift service, a bad path, header
or count).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TextIO

import requests

from ..errors import ConfigError, MeshError
from ..flag_router import RouteDecision
from ..mesh import Mesh
from ..registry import MeshConfig, load_file
from ..shadow.report import log as mismatch_log
from ..shadow.stages import STAGES, copy_route
from ..shadow.stats import Counters, ShadowEvent, observe
from ._args import Subparsers, add_registry, command_parser, count_arg
from .call.arguments import ArgumentProblem, check_path, check_service, merge_headers, parse_header

__all__ = [
    "PathTally",
    "StageRouter",
    "Tally",
    "add_parser",
    "every_call_copied",
    "quiet_mismatch_log",
    "render",
    "run",
]

#: how often the table is redrawn on a terminal (seconds)
REFRESH: Final = 0.25
#: the path column is at most this wide (longer paths are cut)
MAX_PATH_WIDTH: Final = 72
#: how long the command waits for the last copies after the last call (seconds)
DRAIN_TIMEOUT: Final = 30.0


@dataclass
class PathTally:
    """The outcomes for one path: the calls made, and what their copies gave (counted as
    :meth:`Mesh.shadow_stats <mesh_client.Mesh.shadow_stats>` counts them)."""

    calls: int = 0
    call_errors: int = 0
    copies: Counters = field(default_factory=Counters)
    #: the first mismatch's differing parts (where, the caller's side, the copy's side)
    first_difference: tuple[str, str, str] | None = None


@dataclass
class Tally:
    """Everything the command counted, per path (thread-safe: calls and copies finish on other
    threads)."""

    stage: str
    paths: dict[str, PathTally] = field(default_factory=dict)
    mismatches: list[ShadowEvent] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def called(self, path: str, ok: bool) -> None:
        with self._lock:
            row = self.paths.setdefault(path, PathTally())
            row.calls += 1
            row.call_errors += not ok

    def copied(self, event: ShadowEvent) -> None:
        with self._lock:
            row = self.paths.setdefault(event.target, PathTally())
            row.copies.count(event)
            if event.result == "mismatch":
                self.mismatches.append(event)
                if row.first_difference is None and event.comparison and event.comparison.differences:
                    d = event.comparison.differences[0]
                    row.first_difference = (d.where, d.primary, d.copy)

    def total(self) -> PathTally:
        with self._lock:
            rows = list(self.paths.values())
        copies = Counters()
        for name in ("compared", "matched", "mismatched", "errors", "skipped"):
            setattr(copies, name, sum(getattr(r.copies, name) for r in rows))
        return PathTally(sum(r.calls for r in rows), sum(r.call_errors for r in rows), copies)

    @property
    def clean(self) -> bool:
        """Every call answered and every copy matched."""
        t = self.total()
        c = t.copies
        return t.call_errors == c.errors == c.mismatched == c.skipped == 0 and c.matched == t.calls


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render(tally: Tally, *, service: str, details: int) -> list[str]:
    """The table (one row per path, then the total) and the first ``details`` mismatches."""
    answering = STAGES[tally.stage][1]
    with tally._lock:
        rows = sorted(tally.paths.items())
    width = min(MAX_PATH_WIDTH, max([len("path"), *(len(path) for path, _ in rows)]))
    lines = [
        f"{service}: stage {tally.stage}, {answering.value} answers the caller, "
        f"every call copied via {copy_route(tally.stage).value}",
        f"{'path':{width}} {'calls':>6} {'failed':>6} {'matched':>8} {'mismatch':>8} {'errors':>7} {'skipped':>8}"
        "  first difference",
    ]
    for path, row in [*rows, ("(all)", tally.total())]:
        diff = ""
        if row.first_difference is not None:
            where, primary, copy = row.first_difference
            diff = _cut(f"{where}: {primary} / {copy}", 60)
        lines.append(
            f"{_cut(path, width):{width}} {row.calls:>6} {row.call_errors:>6} {row.copies.matched:>8} "
            f"{row.copies.mismatched:>8} {row.copies.errors:>7} {row.copies.skipped:>8}  {diff}".rstrip()
        )
    with tally._lock:
        shown = tally.mismatches[:details]
        more = len(tally.mismatches) - len(shown)
    other = copy_route(tally.stage).value
    for event in shown:
        assert event.comparison is not None
        lines.append(f"mismatch: {event.method} {event.target} ({event.comparison.count} difference(s))")
        for d in event.comparison.differences:
            lines.append(f"  {d.where}: {answering.value} {d.primary} / {other} {d.copy}")
    if more:
        lines.append(f"... and {more} more mismatch(es) (--details N shows more)")
    return lines


class StageRouter:
    """Answers ``stage`` for the one service the command calls (no flag source is read)."""

    def __init__(self, stage: str) -> None:
        self._decision = RouteDecision(STAGES[stage][1], f"forced to stage {stage} by mesh-client shadow", stage, stage)

    def decide(self, service: str) -> RouteDecision:
        return self._decision

    def close(self) -> None:
        pass


def every_call_copied(config: MeshConfig, service: str, concurrency: int) -> MeshConfig:
    """``config`` with ``service``'s calls all copied (``sample = 1.0``), ``concurrency`` at once."""
    svc = config.services[service]
    shadow = dataclasses.replace(svc.shadow, sample=1.0, max_in_flight=max(svc.shadow.max_in_flight, concurrency))
    services = dict(config.services)
    services[service] = dataclasses.replace(svc, shadow=shadow)
    return dataclasses.replace(config, services=MappingProxyType(services))


class _Screen:
    """Redraws the table in place on a terminal; elsewhere prints it once, at the end."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._live = out.isatty()
        self._drawn = 0
        self._at = 0.0

    def draw(self, lines: Sequence[str], *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and (not self._live or now - self._at < REFRESH):
            return
        self._at = now
        if self._live and self._drawn:
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the table's first line, clear below
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self._drawn = len(lines)


@contextlib.contextmanager
def quiet_mismatch_log() -> Iterator[None]:
    """Keep the library's mismatch log quiet (for output that shows the mismatches itself)."""
    level = mismatch_log.level
    mismatch_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        mismatch_log.setLevel(level)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``mesh-client shadow``: 0 when every copy matched, 1 otherwise, 2 for bad arguments."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        paths = [check_path(p) for p in args.path or ["/"]]
        headers = merge_headers([parse_header(h) for h in args.header or []])
        if args.count < 1 or args.concurrency < 1:
            raise ArgumentProblem("--count and --concurrency must be 1 or more")
        config = load_file(args.registry)
        check_service(config, args.service)
    except ArgumentProblem as exc:
        print(f"mesh-client shadow: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"mesh-client shadow: invalid registry: {exc}", file=err)
        return 1
    config = every_call_copied(config, args.service, args.concurrency)
    tally = Tally(args.stage)
    screen = _Screen(out)

    def one(path: str) -> None:
        try:
            response = session.get(f"http://{args.service}{path}", headers=headers)
            response.close()
            tally.called(path, ok=True)
        except (requests.RequestException, MeshError):
            tally.called(path, ok=False)

    def mine(event: ShadowEvent) -> None:
        if event.service == args.service:
            tally.copied(event)

    # the mismatches are shown below, in full: the library's sampled mismatch log would repeat them
    with quiet_mismatch_log(), observe(mine), Mesh(config, router=StageRouter(args.stage)) as mesh:
        session = mesh.requests_session()
        with ThreadPoolExecutor(args.concurrency, thread_name_prefix="mesh-client-shadow") as pool:
            futures = [pool.submit(one, paths[i % len(paths)]) for i in range(args.count)]
            for future in futures:
                future.result()
                screen.draw(render(tally, service=args.service, details=0))
        drained = mesh.shadow_drain(DRAIN_TIMEOUT)
    screen.draw(render(tally, service=args.service, details=args.details), final=True)
    if not drained:
        print(f"mesh-client shadow: some copies were still running after {DRAIN_TIMEOUT:g} s", file=err)
    total = tally.total()
    print(
        f"{total.calls} call(s): {total.copies.matched} matched, {total.copies.mismatched} mismatched, "
        f"{total.copies.errors} copy error(s), {total.copies.skipped} skipped, {total.call_errors} failed call(s)",
        file=out,
    )
    return 0 if tally.clean and drained else 1


DESCRIPTION = """\
Makes --count GETs of the --path values (round robin) to a registered HTTP service at the
shadow stage: HAProxy answers each call and a copy goes via Envoy (--stage live: the other
way round). Every call is copied (sample 1.0) and compared as the library's shadow reads are,
with the registry's ignore_json and compare_headers. Prints a table per path (live on a
terminal) and the differing parts of the first mismatches. No flag is read or changed.
"""

EPILOG = """\
examples:
  mesh-client shadow mesh.toml users --path /v1/users/1 --path /v1/users?limit=5 --count 100
  mesh-client shadow mesh.toml users --path /v1/users/1 --stage live -H 'x-tenant: acme'

exit codes:
  0    every copy matched the caller's answer
  1    a mismatch, a copy that failed on either route, a call that failed, or an invalid registry
  2    bad arguments: unknown or Thrift service, malformed -H, bad PATH, bad option values
"""


def add_parser(subparsers: Subparsers) -> None:
    """Register ``shadow`` on the ``mesh-client`` sub-command parsers."""
    p = command_parser(
        subparsers,
        "shadow",
        summary="copy GETs down both routes and compare the answers, live (shadow reads on the spot)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_registry(p)
    p.add_argument("service", metavar="SERVICE", help="a registered HTTP service")
    p.add_argument(
        "--path", action="append", metavar="PATH", help="a path (and query) to GET; repeat for more (default /)"
    )
    p.add_argument("--count", type=count_arg, default=20, metavar="N", help="calls to make in all (default 20)")
    p.add_argument("--concurrency", type=count_arg, default=1, metavar="N", help="calls in flight at once (default 1)")
    p.add_argument(
        "--stage",
        choices=["shadow", "live"],
        default="shadow",
        help="shadow: HAProxy answers, the copy goes via Envoy (default); live: the other way round",
    )
    p.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'", help="a request header; repeat")
    p.add_argument(
        "--details", type=int, default=5, metavar="N", help="mismatches shown in full at the end (default 5)"
    )
    p.set_defaults(run=run)
