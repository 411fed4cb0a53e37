"""Doctor's ``haproxy NAME`` check, per service: the service's HAProxy port accepts connections
(and, for HTTP services, answers a ``GET`` that HAProxy did not answer itself)."""

from __future__ import annotations

import http.client

from ... import haproxy
from ...registry import MeshConfig
from .context import Context
from .network import connect, get, haproxy_error_page, why

__all__ = ["check_haproxy"]


def check_haproxy(ctx: Context, config: MeshConfig) -> None:
    """One ``haproxy NAME`` result per service."""
    for svc in config.services.values():
        name = f"haproxy {svc.name}"
        fix = (
            f"start HAProxy (SmartStack) for this machine, or set services.{svc.name}.haproxy to the port "
            "it binds for the service (`mesh-client render haproxy MESH.toml` prints a reference config)"
        )
        try:
            connect(svc.haproxy, ctx.timeout)
        except OSError as exc:
            ctx.check(name, "FAIL", f"{svc.haproxy} {why(exc, ctx.timeout)}", fix)
            continue
        if svc.protocol != "http":
            ctx.check(name, "OK", f"{svc.haproxy} accepts connections")
            continue
        try:
            reply = get(svc.haproxy, ctx.path, ctx.timeout, {"Host": svc.envoy_host}, body_limit=haproxy_error_page)
        except (OSError, http.client.HTTPException) as exc:
            ctx.check(
                name,
                "WARN",
                f"{svc.haproxy} accepts connections, but GET {ctx.path}: it {why(exc, ctx.timeout)}",
                "check HAProxy's backend for the service",
            )
            continue
        kind = haproxy.classify_reply(reply.status, reply.body)
        if kind is not None:
            ctx.check(
                name,
                "WARN",
                f"{svc.haproxy} accepts connections, but HAProxy answered {reply.status} itself ({kind})",
                f"HAProxy reaches no healthy instance of {svc.name}: check its servers (SmartStack registrations)",
            )
        else:
            took = f"{reply.elapsed * 1000:.0f} ms"
            ctx.check(
                name, "OK", f"{svc.haproxy} accepts connections; GET {ctx.path} answered {reply.status} in {took}"
            )
