"""Real Envoy and HAProxy for integration tests: the ``envoy_sidecar`` / ``haproxy_sidecar``
fixtures' handles, with the proxies' own counters.

Both are configured from the registry (:mod:`mesh_client.sidecar.render`), listen on the
registry's loopback ports, and are stopped by their own process handle.
"""

from __future__ import annotations

import csv
import io
import json
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..registry import MeshConfig
from ..sidecar import SidecarProcess, start_envoy, start_haproxy

__all__ = ["EnvoySidecar", "HAProxySidecar", "start_envoy_sidecar", "start_haproxy_sidecar"]


@dataclass
class EnvoySidecar:
    """A running Envoy for ``config``: its egress listener is ``config.envoy_http``."""

    config: MeshConfig
    process: SidecarProcess

    @property
    def address(self) -> str:
        return str(self.config.envoy_http)

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges from the admin endpoint (``/stats?format=json``)."""
        assert self.config.envoy_admin is not None
        url = f"http://{self.config.envoy_admin}/stats?format=json"
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
        return {s["name"]: s["value"] for s in data.get("stats", []) if isinstance(s.get("value"), int)}

    def counter(self, name: str) -> int:
        """One counter, e.g. ``cluster.users.upstream_rq_retry`` (0 when Envoy has not made it)."""
        return self.stats().get(name, 0)

    def upstream_requests(self, service: str) -> int:
        """Requests Envoy sent to ``service``'s instances (retries included)."""
        return self.counter(f"cluster.{service}.upstream_rq_total")

    def stop(self) -> None:
        self.process.stop()


@dataclass
class HAProxySidecar:
    """A running HAProxy for ``config``: one port per service (``config.service(name).haproxy``)."""

    config: MeshConfig
    process: SidecarProcess
    socket_path: Path

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` from the stats socket, by ``proxy/server`` name (``users/BACKEND``...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {f"{row['pxname']}/{row['svname']}": row for row in csv.DictReader(io.StringIO(text))}

    def upstream_requests(self, service: str) -> int:
        """Requests HAProxy sent to ``service``'s instances (its backend's sessions)."""
        row = self.stats().get(f"{service}/BACKEND") or self.stats().get(f"{service}/FRONTEND") or {}
        return int(row.get("stot") or 0)

    def stop(self) -> None:
        self.process.stop()


def start_envoy_sidecar(config: MeshConfig, workdir: Path, *, binary: str | None = None) -> EnvoySidecar:
    return EnvoySidecar(config, start_envoy(config, workdir, binary=binary))


def start_haproxy_sidecar(config: MeshConfig, workdir: Path, *, binary: str | None = None) -> HAProxySidecar:
    process = start_haproxy(config, workdir, binary=binary)
    assert process.stats_socket is not None
    return HAProxySidecar(config, process, process.stats_socket)
