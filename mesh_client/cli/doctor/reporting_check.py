"""Doctor's ``envoy reporting`` check: the settings that make Envoy report attempts (and its
timings) back to the client, read from the running config, else judged by Envoy's answers."""

from __future__ import annotations

from typing import Final

from ... import envoy
from ...registry import MeshConfig
from .context import RENDER_HINT, Context
from .envoy_config import Admin, egress_listener, hcms, route_config_of, suppresses_envoy_headers, virtual_host_for
from .network import Reply

__all__ = ["ATTEMPT_COUNT_SETTINGS", "check_reporting", "reporting_from_answers"]

#: Virtual host settings the client reads, and what goes missing without them.
ATTEMPT_COUNT_SETTINGS: Final = {
    "include_attempt_count_in_response": (
        "call_info().attempts stays 1, and the retry budget charges every retryable answer all the retries "
        "Envoy was allowed (it cannot see Envoy's retries that ended in a success)"
    ),
    "include_request_attempt_count": (
        "the service is not told which attempt a request is "
        f"(no {envoy.header_names(envoy.DEFAULT_PREFIX).attempt_count} on requests)"
    ),
}
_ATTEMPTS_DOC: Final = "docs/routes.md#envoy-settings-the-client-needs"
_NAME: Final = "envoy reporting"


def check_reporting(ctx: Context, config: MeshConfig, admin: Admin | None, routed: dict[str, Reply]) -> None:
    """Which settings that make Envoy report attempts (and its timings) the running config
    lacks, per virtual host of the HTTP services; from the answers alone without the config."""
    http = [svc for svc in config.services.values() if svc.protocol == "http"]
    if not http:
        return
    listener = egress_listener(admin, config, ctx.egress_ip)
    if listener is None:
        reporting_from_answers(ctx, config, routed)
        return
    assert admin is not None
    missing: dict[str, list[str]] = {setting: [] for setting in ATTEMPT_COUNT_SETTINGS}
    seen: list[str] = []
    suppressed = False
    for hcm in hcms(listener):
        suppressed = suppressed or suppresses_envoy_headers(hcm)
        route_config = route_config_of(hcm, admin)
        for svc in http:
            vhost = virtual_host_for(route_config, svc.envoy_host) if route_config is not None else None
            if vhost is None:
                continue  # (the envoy vhost check says whether Envoy routes it)
            label = str(vhost.get("name", "?"))
            label = label if label == svc.name else f"{label} (for {svc.name})"
            seen.append(label)
            for setting, hosts in missing.items():
                if vhost.get(setting) is not True:
                    hosts.append(label)
    problems = [
        f"{setting} is not set on virtual host {', '.join(dict.fromkeys(hosts))}: {ATTEMPT_COUNT_SETTINGS[setting]}"
        for setting, hosts in missing.items()
        if hosts
    ]
    if suppressed:
        problems.append(
            "the router filter sets suppress_envoy_headers: the called service gets no "
            f"{envoy.header_names(config.header_prefix).expected_rq_timeout_ms} (its middleware sees no deadline), "
            "call_info().upstream_service_time stays None, and Envoy's overload signal no longer reaches the client"
        )
    if not seen:
        names = ", ".join(svc.envoy_host for svc in http)
        if any(c.name.startswith("envoy vhost ") and c.verdict == "FAIL" for c in ctx.checks):
            ctx.check(_NAME, "SKIP", f"not checked: no virtual host routes {names} (see the envoy vhost checks)")
        else:
            ctx.check(
                _NAME,
                "WARN",
                f"cannot tell: the virtual hosts for {names} are not in the route configuration doctor read "
                f"from listener {listener.get('name', '?')} (scoped routes?)",
                f"check include_attempt_count_in_response and include_request_attempt_count by hand ({_ATTEMPTS_DOC})",
            )
        return
    if problems:
        settings = [f"{setting}: true" for setting, hosts in missing.items() if hosts]
        fixes = [f"set {' and '.join(settings)} on the virtual hosts named"] if settings else []
        if suppressed:
            fixes.append("remove suppress_envoy_headers from the router filter")
        ctx.check(_NAME, "WARN", "; ".join(problems), f"{'; '.join(fixes)} ({RENDER_HINT}; {_ATTEMPTS_DOC})")
        return
    ctx.check(
        _NAME,
        "OK",
        f"virtual host {', '.join(dict.fromkeys(seen))}: include_attempt_count_in_response and "
        "include_request_attempt_count set",
    )


def reporting_from_answers(ctx: Context, config: MeshConfig, routed: dict[str, Reply]) -> None:
    """The ``envoy reporting`` check without Envoy's config: whether its answers carried the count."""
    if not routed:
        ctx.check(_NAME, "SKIP", "not checked: Envoy's config was not read and no HTTP service answered through it")
        return
    prefix = config.header_prefix
    without = [svc for svc, reply in routed.items() if envoy.attempt_count(reply.headers, prefix) is None]
    attempt_count = envoy.header_names(prefix).attempt_count
    if without:
        consequence = ATTEMPT_COUNT_SETTINGS["include_attempt_count_in_response"]
        ctx.check(
            _NAME,
            "WARN",
            f"Envoy's answers via {', '.join(without)} carry no {attempt_count}, so "
            f"include_attempt_count_in_response is not set: {consequence}",
            f"set include_attempt_count_in_response: true on the virtual hosts ({_ATTEMPTS_DOC})",
        )
        return
    ctx.check(
        _NAME,
        "OK",
        f"Envoy's answers via {', '.join(routed)} carry {attempt_count} "
        "(include_request_attempt_count was not checked: Envoy's config was not read)",
    )
