"""``mesh-client render envoy|haproxy MESH.toml``: print the sidecar config a registry implies."""

from __future__ import annotations

import argparse
import sys

from ..registry import load_file
from ..sidecar.render import envoy_bootstrap_json, haproxy_config
from ._args import Subparsers

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Print the Envoy bootstrap (JSON) or the HAProxy config for the registry; 0."""
    config = load_file(args.registry)
    sys.stdout.write(envoy_bootstrap_json(config) if args.what == "envoy" else haproxy_config(config))
    return 0


def add_parser(subparsers: Subparsers) -> None:
    """Register ``render`` on the ``mesh-client`` sub-command parsers."""
    p = subparsers.add_parser("render", help="print the Envoy bootstrap or HAProxy config for a registry")
    p.add_argument("what", choices=["envoy", "haproxy"], help="which sidecar config to print")
    p.add_argument("registry", help="the registry TOML file")
    p.set_defaults(run=run)
