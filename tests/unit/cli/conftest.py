"""Registries for the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_client.routing import route_flag, write_flag_file

from .helpers import write_registry

#: Fixed addresses: what ``render`` prints is compared with them (nothing is called).
FIXED_REGISTRY = """\
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:9001"
envoy_admin = "127.0.0.1:9901"

[flags]
source = "file"
path = "flags.json"

[services.users]
haproxy = "127.0.0.1:20001"
endpoints = ["127.0.0.1:8081"]

[services.orders]
haproxy = "127.0.0.1:20002"
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """One service, ``users``, on free ports nothing listens on; its flag says ``haproxy``."""
    write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", "haproxy")])
    return write_registry(tmp_path)


@pytest.fixture
def fixed_registry(tmp_path: Path) -> Path:
    """:data:`FIXED_REGISTRY`: ``users`` (its flag says ``envoy``) and ``orders`` (no flag)."""
    path = tmp_path / "mesh.toml"
    path.write_text(FIXED_REGISTRY)
    write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", "envoy")])
    return path
