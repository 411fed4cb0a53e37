"""The ``mesh-client`` command line (also ``python -m mesh_client``), one module per command.

Commands (see ``docs/cli.md``):

- ``mesh-client render envoy|haproxy MESH.toml``: print the sidecar config the registry implies
  (:mod:`mesh_client.cli.render`);
- ``mesh-client route MESH.toml [--service S]``: what the flags decide now, per service, and why
  (:mod:`mesh_client.cli.route`);
- ``mesh-client demo [--duration S] [--services NAMES] [--keep] [--no-color]``: a live migration
  from HAProxy to Envoy on this machine, with real proxies, checked by its own numbers
  (:mod:`mesh_client.cli.demo`);
- ``mesh-client doctor MESH.toml``: checks the sidecars, that Envoy honours the client's headers,
  and the flag source, with a verdict and a fix per check (:mod:`mesh_client.cli.doctor`);
- ``mesh-client call MESH.toml SERVICE METHOD PATH``: one call, with its route, attempts and
  ``call_info`` (:mod:`mesh_client.cli.call`);
- ``mesh-client shadow MESH.toml SERVICE``: GETs copied down both routes and compared, with a
  live table per path (:mod:`mesh_client.cli.shadow`).

Each command module has ``add_parser(subparsers)``, which registers the command and sets its
``run(args) -> exit code``; :data:`COMMANDS` lists them in the order ``--help`` shows. A new
command is a new module here and one line in that table. The library never imports this package.

Exit codes (the table per command is in ``docs/cli.md``): 0 success; 1 invalid registry, failed
command (``route``: the flag source did not load), failed demo or failed check; 2 bad arguments;
3 ``call --route R`` went another way (failed over); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final

from ..errors import ConfigError
from . import call, demo, doctor, render, route, shadow
from ._args import Subparsers

__all__ = ["COMMANDS", "main", "parser"]

#: The sub-commands' ``add_parser`` functions, in the order ``mesh-client --help`` lists them.
COMMANDS: Final[tuple[Callable[[Subparsers], None], ...]] = (
    render.add_parser,
    route.add_parser,
    demo.add_parser,
    doctor.add_parser,
    call.add_parser,
    shadow.add_parser,
)


def parser() -> argparse.ArgumentParser:
    """The ``mesh-client`` argument parser, with every command of :data:`COMMANDS`."""
    p = argparse.ArgumentParser(prog="mesh-client", description="Tools for mesh_client registries.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in COMMANDS:
        add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mesh-client`` with ``argv`` (default: the process's arguments); return the exit code."""
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"mesh-client {args.command}: invalid registry: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mesh-client {args.command}: interrupted", file=sys.stderr)
        return 130
    return code
