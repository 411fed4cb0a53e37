"""Helpers shared by the command-line tests: running the command as a user does, registries on
free ports, and reading doctor's output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mesh_client.registry import load_file
from mesh_client.sidecar import envoy_bootstrap, free_port


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a new process, where the SDK's own logging would reach stderr
    (under pytest it goes to the log capture instead)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh_client", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def write_registry(tmp_path: Path, *, flags: str = "file", extra: str = "", admin: bool = True) -> Path:
    """A registry with one HTTP service, ``users``, every address a free port nothing listens on."""
    lines = [
        "[mesh]",
        'caller = "checkout"',
        f'envoy_http = "127.0.0.1:{free_port()}"',
        *([f'envoy_admin = "127.0.0.1:{free_port()}"'] if admin else []),
        "",
        "[flags]",
        f'source = "{flags}"',
        *(['path = "flags.json"'] if flags == "file" else ['sdk_key_env = "MESH_TEST_NO_SUCH_KEY"']),
        "",
        "[services.users]",
        f'haproxy = "127.0.0.1:{free_port()}"',
        "retries = 0",
        extra,
    ]
    path = tmp_path / "mesh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def verdicts(out: str) -> dict[str, str]:
    """The check name -> verdict of doctor's output."""
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in ("OK", "WARN", "FAIL", "SKIP"):
            name = line[6:26].strip()
            found[name] = parts[0]
    return found


def rendered_hcm(registry: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The egress listener of the bootstrap ``mesh-client render envoy`` prints, and its HTTP
    connection manager."""
    listener = envoy_bootstrap(load_file(registry))["static_resources"]["listeners"][0]
    return listener, listener["filter_chains"][0]["filters"][0]["typed_config"]
