"""Doctor's checks of the Envoy sidecar's reachability and routing: ``envoy admin``, ``envoy
egress``, ``envoy vhost NAME`` per HTTP service, and ``envoy thrift``."""

from __future__ import annotations

import http.client
from typing import Any

from ... import envoy
from ...registry import MeshConfig, ServiceConfig
from .context import RENDER_HINT, Context
from .envoy_config import Admin, domains, egress_listener, read_config, read_server_info
from .network import Reply, connect, get, local_reply_body, why

__all__ = ["check_admin", "check_egress", "check_thrift", "check_vhosts", "vhost_verdict"]


def check_admin(ctx: Context, config: MeshConfig) -> Admin | None:
    """``envoy admin`` (only with ``mesh.envoy_admin``): the endpoint answers; what it told."""
    address = config.envoy_admin
    if address is None:
        return None
    admin = Admin()
    try:
        state = read_server_info(admin, address, ctx.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        admin.error = str(exc) if isinstance(exc, ValueError) else why(exc, ctx.timeout)
        ctx.check(
            "envoy admin",
            "WARN",
            f"{address} (mesh.envoy_admin): {admin.error}; doctor cannot read Envoy's listener config",
            "start the Envoy sidecar, or set mesh.envoy_admin to its admin address (or remove the key)",
        )
        return admin
    try:
        read_config(admin, address, ctx.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        admin.error = "GET /config_dump: " + (str(exc) if isinstance(exc, ValueError) else why(exc, ctx.timeout))
    found = f"{address}: Envoy {admin.version}, {state}, {len(admin.listeners)} listener(s)"
    if admin.error:
        ctx.check("envoy admin", "WARN", f"{found}; {admin.error}", "make /config_dump readable from this machine")
    elif state != "LIVE":
        ctx.check("envoy admin", "WARN", found, "wait until Envoy is LIVE (it is still starting or draining)")
    else:
        ctx.check("envoy admin", "OK", found)
    return admin


def check_egress(ctx: Context, config: MeshConfig) -> str | None:
    """``envoy egress``: ``mesh.envoy_http`` accepts connections; the IP they came from, or None."""
    address = config.envoy_http
    try:
        source_ip, ctx.egress_ip = connect(address, ctx.timeout)
    except OSError as exc:
        failover = (
            "; meanwhile calls on the Envoy route fail over to HAProxy"
            if config.failover
            else "; with failover off, calls on the Envoy route fail"
        )
        ctx.check(
            "envoy egress",
            "FAIL",
            f"{address} (mesh.envoy_http) {why(exc, ctx.timeout)}{failover}",
            f"start the Envoy sidecar, or set mesh.envoy_http to the address its egress listener binds ({RENDER_HINT})",
        )
        return None
    ctx.check("envoy egress", "OK", f"{address} accepts connections (from {source_ip})")
    return source_ip


def check_vhosts(ctx: Context, config: MeshConfig, egress_up: bool, admin: Admin | None) -> dict[str, Reply]:
    """``envoy vhost NAME`` per HTTP service: does Envoy route its Host? Returns the upstream
    answers by service (the header and reporting checks judge by them)."""
    prefix = config.header_prefix
    names = envoy.header_names(prefix)
    routed: dict[str, Reply] = {}
    listener = egress_listener(admin, config, ctx.egress_ip)
    for svc in config.services.values():
        if svc.protocol != "http":
            continue
        name = f"envoy vhost {svc.name}"
        if not egress_up:
            ctx.check(name, "SKIP", "not checked: the Envoy egress address does not accept connections")
            continue
        headers = {
            "Host": svc.envoy_host,
            names.upstream_rq_timeout_ms: str(envoy.timeout_ms(ctx.timeout)),
            names.max_retries: "0",
        }
        try:
            reply = get(config.envoy_http, ctx.path, ctx.timeout + 0.5, headers, body_limit=local_reply_body(prefix))
        except (OSError, http.client.HTTPException) as exc:
            ctx.check(
                name,
                "FAIL",
                f"GET {ctx.path} with Host {svc.envoy_host}: {config.envoy_http} {why(exc, ctx.timeout + 0.5)}",
                "look at Envoy's log; is something else listening at mesh.envoy_http?",
            )
            continue
        if vhost_verdict(ctx, svc, name=name, reply=reply, prefix=prefix, listener=listener):
            routed[svc.name] = reply
    return routed


def vhost_verdict(
    ctx: Context, svc: ServiceConfig, *, name: str, reply: Reply, prefix: str, listener: dict[str, Any] | None
) -> bool:
    """The ``envoy vhost NAME`` result for Envoy's answer; True when the service itself answered."""
    what = f"GET {ctx.path} with Host {svc.envoy_host}"
    kind = envoy.classify_reply(reply.status, reply.headers, reply.body, prefix)
    took = f"{reply.elapsed * 1000:.0f} ms"
    if kind == "no_route":
        ctx.check(
            name,
            "FAIL",
            f"{what}: Envoy answered 404 with an empty body (no_route): no virtual host matches "
            f"{svc.envoy_host!r}{domains(listener)}",
            f"add {svc.envoy_host!r} to the domains of a virtual host on Envoy's egress listener, or set "
            f"services.{svc.name}.envoy_host to a domain Envoy routes",
        )
    elif kind == "no_cluster":
        ctx.check(
            name,
            "FAIL",
            f"{what}: Envoy answered 503 with an empty body (no_cluster): the route's cluster does not exist",
            f"add the cluster the {svc.envoy_host!r} route names to Envoy's config",
        )
    elif kind is not None and envoy.header_names(prefix).upstream_service_time not in reply.headers:
        if kind == "timeout":
            fix = f"the service took longer than {ctx.timeout:g} s: use a cheaper --path or a longer --timeout"
        elif kind in ("no_healthy_upstream", "connect_failure"):
            fix = (
                f"Envoy reaches no healthy instance of {svc.name}: check the service's instances (the "
                f"cluster's endpoints; services.{svc.name}.endpoints in a rendered bootstrap)"
            )
        else:
            fix = "see the envoy_error kinds in docs/routes.md"
        ctx.check(
            name, "WARN", f"{what}: Envoy routes it but answered {reply.status} itself ({kind}) after {took}", fix
        )
    else:
        upstream = envoy.upstream_service_time(reply.headers, prefix)
        spent = f", upstream {upstream * 1000:.0f} ms" if upstream is not None else ""
        ctx.check(name, "OK", f"{what}: the service answered {reply.status} in {took}{spent}")
        return True
    return False


def check_thrift(ctx: Context, config: MeshConfig) -> None:
    """``envoy thrift`` (only with Thrift services): the Thrift listener accepts connections."""
    thrift = [s.name for s in config.services.values() if s.protocol == "thrift"]
    if not thrift or config.envoy_thrift is None:
        return
    try:
        connect(config.envoy_thrift, ctx.timeout)
    except OSError as exc:
        ctx.check(
            "envoy thrift",
            "FAIL",
            f"{config.envoy_thrift} (mesh.envoy_thrift, for {', '.join(thrift)}) {why(exc, ctx.timeout)}",
            f"give Envoy a thrift_proxy listener at mesh.envoy_thrift ({RENDER_HINT})",
        )
        return
    ctx.check("envoy thrift", "OK", f"{config.envoy_thrift} accepts connections (for {', '.join(thrift)})")
