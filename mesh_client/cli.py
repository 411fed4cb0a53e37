"""The ``mesh-client`` command line (also ``python -m mesh_client``).

Commands (see ``docs/cli.md``):

- ``mesh-client render envoy|haproxy MESH.toml``: print the sidecar config the registry implies;
- ``mesh-client route MESH.toml [--service S]``: what the flags decide now, per service, and why;
- ``mesh-client demo [--duration S] [--services NAMES] [--keep] [--no-color]``: a live migration
  from HAProxy to Envoy on this machine, with real proxies, checked by its own numbers
  (:mod:`mesh_client.demo`);
- ``mesh-client doctor MESH.toml``: checks the sidecars, that Envoy honours the client's headers,
  and the flag source, with a verdict and a fix per check (:mod:`mesh_client.doctor`);
- ``mesh-client call MESH.toml SERVICE METHOD PATH``: one call, with its route, attempts and
  ``call_info`` (:mod:`mesh_client.call_cmd`);
- ``mesh-client shadow MESH.toml SERVICE``: GETs copied down both routes and compared, with a
  live table per path (:mod:`mesh_client.shadow_cmd`).

Exit codes (the table per command is in ``docs/cli.md``): 0 success; 1 invalid registry, failed
command (``route``: the flag source did not load), failed demo or failed check; 2 bad arguments;
3 ``call --route R`` went another way (failed over); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import call_cmd, demo, doctor, shadow_cmd
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
    config = load_file(args.registry)
    if args.service and args.service not in config.services:
        known = ", ".join(sorted(config.services)) or "none"
        print(f"mesh-client route: no service {args.service!r} in {args.registry} (services: {known})", file=sys.stderr)
        return 2  # a bad argument, as for `call`
    with doctor.quiet_flag_logs() as said:  # a flag source that fails is reported below, in one line
        mesh = Mesh(config)
    try:
        problem = doctor.flag_source_problem(config, mesh, said)
        for name in [args.service] if args.service else sorted(config.services):
            if problem:  # every service falls back: its decision says so; the SDK need not repeat it
                with doctor.quiet_flag_logs():
                    decision = mesh.route_for(name)
            else:
                decision = mesh.route_for(name)
            print(f"{name:24} {decision.route.value:8} {decision.reason}")
    finally:
        with doctor.quiet_flag_logs():
            mesh.close()
    if problem:
        print(
            f"mesh-client route: the flag source did not load: {problem}; every route above is the fallback, "
            f"default_route {config.default_route.value}",
            file=sys.stderr,
        )
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    return demo.run(demo.options_from_args(args))


DEMO_DESCRIPTION = """\
A live migration from HAProxy to Envoy on this machine, with no account anywhere.
Starts two demo services (users, orders), a real Envoy and a real HAProxy on free
127.0.0.1 ports from a registry written to a temporary folder, sends steady traffic
from ten callers through mesh_client, and walks the route flag of --services through
the flag file, live: 0% -> 10% -> 50% -> 100% of callers via Envoy, then back to 0%
(a rollback). Ends with a summary proving that no call failed and that the split
followed the flag (the callers' flag decisions, call_info, and what the backend saw).
Without HAProxy it says so and shows the Envoy side only.
"""

DEMO_EPILOG = """\
exit codes:
  0    every call succeeded and every step's split followed the flag
  1    the demo failed: a call failed, a split did not follow the flag,
       a flag was not loaded in time, or a process would not start
  2    bad arguments
  130  interrupted (Ctrl-C or SIGTERM) during the walk; with --keep, Ctrl-C
       after the walk exits with the walk's result (0 or 1)
every process the demo starts is stopped before it exits, in every case.
"""


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
    run_demo = sub.add_parser(
        "demo",
        help="a live HAProxy -> Envoy migration on this machine, with real proxies, checked by its own numbers",
        description=DEMO_DESCRIPTION,
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(run_demo)
    run_demo.set_defaults(run=_demo)
    doctor.add_parser(sub)
    call_cmd.add_parser(sub)
    shadow_cmd.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
