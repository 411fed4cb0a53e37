"""Doctor's ``flags`` check (the flag source loads) and ``route NAME`` per service (what the
flags decide now, and which failed checks stand in the way of that route)."""

from __future__ import annotations

import time
from typing import Final

from ...mesh import Mesh
from ...policy import Route
from ...registry import MeshConfig, ServiceConfig
from .._flags import flag_source_problem, quiet_flag_logs, read_flag_file
from .context import Context

__all__ = ["ROLLOUT_FIX", "check_flags", "check_routes", "failed_note"]

ROLLOUT_FIX: Final = 'add "contextKind": "service" to the rollout (mesh_client.routing.rollout_flag writes it)'


def check_flags(ctx: Context, config: MeshConfig) -> None:
    """``flags``, then ``route NAME`` per service (with the flags' decision when they loaded)."""
    flags = config.flags
    summary = ""
    if flags.source == "file":
        problem, summary, warning = read_flag_file(config)
        if problem:
            fix = f"write it (mesh_client.routing.write_flag_file) or correct flags.path in {ctx.registry}"
            ctx.check("flags", "FAIL", f"{problem}; every call uses default_route {config.default_route.value}", fix)
            check_routes(ctx, config, None)
            return
    started = time.monotonic()
    with quiet_flag_logs() as messages:
        mesh = Mesh(config)  # the LaunchDarkly client waits at most flags.start_wait
    try:
        took = time.monotonic() - started
        client = mesh.flag_client
        problem = flag_source_problem(config, mesh, messages)
        if flags.source == "none":
            ctx.check(
                "flags",
                "OK",
                f"no flag source (flags.source = 'none'): calls use default_route {config.default_route.value}",
            )
        elif problem:
            if flags.source == "launchdarkly" and client is None:  # no SDK key
                fix = f"export {flags.sdk_key_env}=<the LaunchDarkly server-side SDK key>"
            elif flags.source == "launchdarkly":
                fix = "check network access to LaunchDarkly and the SDK key, or raise flags.start_wait"
            else:
                fix = "check that the file is LaunchDarkly flag data (docs/registry.md)"
            ctx.check("flags", "FAIL", f"{problem}; calls use default_route {config.default_route.value}", fix)
        elif flags.source == "file" and warning:
            ctx.check("flags", "WARN", f"{summary}; {warning}", ROLLOUT_FIX)
        elif flags.source == "file":
            ctx.check("flags", "OK", f"{summary}; the LaunchDarkly client loaded it in {took:.2f} s")
        else:
            ctx.check("flags", "OK", f"the LaunchDarkly client initialised in {took:.2f} s")
        loaded = flags.source == "none" or (client is not None and client.is_initialized())
        check_routes(ctx, config, mesh if loaded else None)
    finally:
        with quiet_flag_logs():
            mesh.close()


def check_routes(ctx: Context, config: MeshConfig, mesh: Mesh | None) -> None:
    """``route NAME`` per service: the flags' decision (``mesh`` None: the flag source did not load)."""
    failed = ctx.failed()
    for svc in config.services.values():
        name = f"route {svc.name}"
        key = config.flags.key_for(svc.name)
        if mesh is None:
            route = config.default_route
            detail = f"{route.value}: the flag source did not load, so default_route applies"
            ctx.check(name, "WARN", detail + failed_note(svc, route, failed), "fix the flags check above")
            continue
        with quiet_flag_logs():
            decision = mesh.route_for(svc.name)
        detail = f"{decision.route.value}: {decision.reason}" + failed_note(svc, decision.route, failed)
        if config.flags.source == "none" or decision.flag_value in ("envoy", "haproxy"):
            ctx.check(name, "OK", detail)
        elif decision.flag_value is None:
            fix = f"create the string flag {key} with the value 'envoy' or 'haproxy' (routing.route_flag writes one)"
            ctx.check(name, "WARN", detail, fix)
        else:
            ctx.check(name, "WARN", detail, f"make the variations of {key} 'envoy' and 'haproxy'")


def failed_note(svc: ServiceConfig, route: Route, failed: set[str]) -> str:
    """Which failed checks stand in the way of ``svc``'s calls on ``route``."""
    if route is Route.ENVOY:
        needed = ["envoy egress", f"envoy vhost {svc.name}", "envoy headers"]
        if svc.protocol == "thrift":
            needed = ["envoy thrift"]
    else:
        needed = [f"haproxy {svc.name}"]
    hit = [n for n in needed if n in failed]
    return f" (but {' and '.join(hit)} failed above)" if hit else ""
