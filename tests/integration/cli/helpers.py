"""Helpers of the command-line tests with real proxies: registries written as TOML, a running
mesh, and reading the commands' output."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_client.registry import MeshConfig, load_file
from mesh_client.sidecar import SidecarProcess
from mesh_client.testing import Backend

from ..conftest import registry


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are the same in TOML


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    lines = []
    for table in ("mesh", "flags"):
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in data[table].items()), ""]
    for name, service in data["services"].items():
        scalars = {k: v for k, v in service.items() if not isinstance(v, dict)}
        lines += [f"[services.{name}]", *(f"{k} = {toml_value(v)}" for k, v in scalars.items()), ""]
        for key, table in service.items():
            if isinstance(table, dict):  # a sub-table: [services.NAME.KEY]
                lines += [f"[services.{name}.{key}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines))
    return path


@dataclass
class RunningMesh:
    """A registry file and its running proxies."""

    path: Path
    config: MeshConfig
    data: dict[str, Any]
    envoy: SidecarProcess
    haproxy: SidecarProcess


def own_envoy_registry(mesh: RunningMesh, backend: Backend, tmp_path: Path) -> tuple[Path, MeshConfig]:
    """A registry file with Envoy addresses of its own (nothing listens there yet), the running
    HAProxy and the flag file; and its config."""
    data = registry(backend, Path(mesh.data["flags"]["path"]))
    data["services"]["users"]["haproxy"] = mesh.data["services"]["users"]["haproxy"]  # the running HAProxy
    path = write_toml(tmp_path / "mesh.toml", data)
    return path, load_file(path)


def egress_hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The HTTP connection manager of a rendered bootstrap's egress listener."""
    hcm: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def verdicts(out: str) -> dict[str, str]:
    """check name -> verdict, from doctor's output."""
    found = {}
    for line in out.splitlines():
        verdict = line.split(None, 1)[0] if line.strip() else ""
        if verdict in ("OK", "WARN", "FAIL", "SKIP"):
            found[line[6:26].strip()] = verdict
    return found


def line_of(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln[6:26].strip() == name]
    return line


def fields(out: str) -> dict[str, str]:
    """The ``name  value`` rows of call's text output (the body excluded)."""
    rows = {}
    for line in out.splitlines()[1:]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition(" ")
        rows[name] = value.strip()
    return rows
