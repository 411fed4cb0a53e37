"""``mesh-client route MESH.toml [--service S]``: what the flags decide now, per service, and why."""

from __future__ import annotations

import argparse
import sys

from ..mesh import Mesh
from ..registry import load_file
from ._args import Subparsers
from ._flags import flag_source_problem, quiet_flag_logs

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """One line per service (route and reason); 1 when the flag source did not load, 2 for an
    unknown ``--service``."""
    config = load_file(args.registry)
    if args.service and args.service not in config.services:
        known = ", ".join(sorted(config.services)) or "none"
        print(f"mesh-client route: no service {args.service!r} in {args.registry} (services: {known})", file=sys.stderr)
        return 2  # a bad argument, as for `call`
    with quiet_flag_logs() as said:  # a flag source that fails is reported below, in one line
        mesh = Mesh(config)
    try:
        problem = flag_source_problem(config, mesh, said)
        for name in [args.service] if args.service else sorted(config.services):
            if problem:  # every service falls back: its decision says so; the SDK need not repeat it
                with quiet_flag_logs():
                    decision = mesh.route_for(name)
            else:
                decision = mesh.route_for(name)
            print(f"{name:24} {decision.route.value:8} {decision.reason}")
    finally:
        with quiet_flag_logs():
            mesh.close()
    if problem:
        print(
            f"mesh-client route: the flag source did not load: {problem}; every route above is the fallback, "
            f"default_route {config.default_route.value}",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(subparsers: Subparsers) -> None:
    """Register ``route`` on the ``mesh-client`` sub-command parsers."""
    p = subparsers.add_parser("route", help="show which route the flags pick now for each service, and why")
    p.add_argument("registry", help="the registry TOML file")
    p.add_argument("--service", help="only this service")
    p.set_defaults(run=run)
