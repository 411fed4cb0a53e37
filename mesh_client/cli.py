"""The ``mesh-client`` command line (also ``python -m mesh_client``).

Commands so far:

- ``mesh-client render envoy|haproxy MESH.toml``: print the sidecar config the registry implies;
- ``mesh-client route MESH.toml [--service S]``: what the flags decide now, per service, and why.

Exit codes: 0 success, 1 invalid registry or failed command, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import ConfigError
from .mesh import Mesh
from .registry import load_file
from .sidecar.render import envoy_bootstrap_json, haproxy_config

__all__ = ["main"]


def _render(args: argparse.Namespace) -> int:
    config = load_file(args.registry)
    sys.stdout.write(envoy_bootstrap_json(config) if args.what == "envoy" else haproxy_config(config))
    return 0


def _route(args: argparse.Namespace) -> int:
    with Mesh.from_file(args.registry) as mesh:
        names = [args.service] if args.service else sorted(mesh.config.services)
        for name in names:
            if name not in mesh.config.services:
                known = ", ".join(sorted(mesh.config.services)) or "none"
                print(f"mesh-client route: no service {name!r} in {args.registry} (services: {known})", file=sys.stderr)
                return 1
            decision = mesh.route_for(name)
            print(f"{name:24} {decision.route.value:8} {decision.reason}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-client", description="Tools for mesh_client registries.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render = sub.add_parser("render", help="print the Envoy bootstrap or HAProxy config for a registry")
    render.add_argument("what", choices=["envoy", "haproxy"], help="which sidecar config to print")
    render.add_argument("registry", help="the registry TOML file")
    render.set_defaults(run=_render)
    route = sub.add_parser("route", help="show which route the flags pick now for each service, and why")
    route.add_argument("registry", help="the registry TOML file")
    route.add_argument("--service", help="only this service")
    route.set_defaults(run=_route)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"mesh-client {args.command}: invalid registry: {exc}", file=sys.stderr)
        return 1
    return code
