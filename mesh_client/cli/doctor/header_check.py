"""Doctor's ``envoy headers`` check: does Envoy honour the client's ``x-envoy-*`` headers?

Two kinds of evidence (the doctor's module docstring says how they are weighed): the listener
config read from ``/config_dump`` (:func:`config_evidence`), and probes through Envoy to one HTTP
service (:func:`retry_probe`, :func:`timeout_probe`, run in the order :func:`probe_evidence`
gives). :func:`weigh_headers` turns both into the check's result without any I/O.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from ... import envoy
from ...registry import MeshConfig, ServiceConfig
from .context import RENDER_HINT, Check, Context
from .envoy_config import Admin, hcm_problems, hcms, listener_at, socket_address
from .network import Reply, get, local_reply_body, why

__all__ = [
    "INTERNAL_FIX",
    "ConfigEvidence",
    "Evidence",
    "check_headers",
    "config_evidence",
    "probe_evidence",
    "retry_probe",
    "timeout_probe",
    "weigh_headers",
]

_TIMEOUT_PROBES: Final = 3
#: an answer through Envoy that took this long despite a 1 ms timeout hints that the header was removed
_PROBABLY_IGNORED_MS: Final = 5
INTERNAL_FIX: Final = (
    "on the egress HTTP connection manager set use_remote_address: true and internal_address_config: "
    '{cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}, {address_prefix: "::1", prefix_len: 128}]} '
    f"({RENDER_HINT}; docs/routes.md#envoy-settings-the-client-needs)"
)


class ConfigEvidence(NamedTuple):
    """What the listener config says: ``state`` ``ok``, ``bad`` or ``unknown``; the fix when bad."""

    state: Literal["ok", "bad", "unknown"]
    found: str
    fix: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one probe showed."""

    kind: Literal["honoured", "ignored", "inconclusive"]
    text: str


def _admin_address(config: MeshConfig) -> str:
    return str(config.envoy_admin) if config.envoy_admin is not None else "?"


def config_evidence(ctx: Context, config: MeshConfig, admin: Admin | None, ips: list[str]) -> ConfigEvidence:
    """Whether the egress listener in Envoy's config treats requests from ``ips`` as internal and
    Envoy's ``header_prefix`` is the registry's."""
    if admin is None:
        return ConfigEvidence("unknown", "no mesh.envoy_admin, so the listener config was not read", "")
    if admin.error:
        return ConfigEvidence("unknown", f"the listener config could not be read ({admin.error})", "")
    listener = listener_at(admin.listeners, config.envoy_http, ctx.egress_ip)
    if listener is None:
        bound = [
            f"{listener.get('name', '?')} at {addr[0]}:{addr[1]}"
            for listener in admin.listeners
            if (addr := socket_address(listener)) is not None
        ]
        found = f"the Envoy at {_admin_address(config)} has no listener at {config.envoy_http}"
        return ConfigEvidence(
            "bad",
            f"{found} (its listeners: {', '.join(bound) or 'none'})",
            "mesh.envoy_http and mesh.envoy_admin must name the same Envoy: set mesh.envoy_http to the "
            "address of its egress HTTP listener",
        )
    label = f"listener {listener.get('name', '?')}"
    managers = hcms(listener)
    if not managers:
        return ConfigEvidence("bad", f"{label} at {config.envoy_http} has no HTTP connection manager", INTERNAL_FIX)
    problems = list(dict.fromkeys(p for hcm in managers for p in hcm_problems(hcm, ips)))
    fix = INTERNAL_FIX if problems else ""
    if admin.header_prefix is not None and admin.header_prefix != config.header_prefix:
        problems.append(
            f"Envoy's header_prefix is {admin.header_prefix!r} but mesh.header_prefix is {config.header_prefix!r}"
        )
        fix = (fix + "; " if fix else "") + f"set mesh.header_prefix = {admin.header_prefix!r} (Envoy's)"
    if problems:
        return ConfigEvidence("bad", f"{label}: " + "; ".join(problems), fix)
    covered = ", ".join(ips)
    return ConfigEvidence("ok", f"{label}: use_remote_address true, internal_address_config covers {covered}", "")


def retry_probe(ctx: Context, config: MeshConfig, svc: ServiceConfig, first: Reply) -> Evidence:
    """Ask Envoy to retry the very status the service just answered, once: 2 attempts reported
    prove the headers were honoured; 1 attempt with the same status, that they were removed."""
    prefix = config.header_prefix
    names = envoy.header_names(prefix)
    status = first.status
    headers = {
        "Host": svc.envoy_host,
        names.upstream_rq_timeout_ms: str(envoy.timeout_ms(ctx.timeout)),
        names.retry_on: "retriable-status-codes",
        names.retriable_status_codes: str(status),
        names.max_retries: "1",
    }
    try:
        reply = get(config.envoy_http, ctx.path, ctx.timeout + 0.5, headers)
    except (OSError, http.client.HTTPException) as exc:
        return Evidence("inconclusive", f"retry probe: {why(exc, ctx.timeout + 0.5)}")
    attempts = envoy.attempt_count(reply.headers, prefix)
    asked = f"asked to retry status {status} once"
    if attempts is not None and attempts >= 2:
        return Evidence("honoured", f"retry probe: {asked}, Envoy answered after {attempts} attempts")
    if attempts == 1 and reply.status == status:
        return Evidence(
            "ignored",
            f"retry probe: {asked}, Envoy answered {status} after 1 attempt (the retry headers were removed)",
        )
    return Evidence("inconclusive", f"retry probe: {asked}, got {reply.status} after {attempts or '?'} attempt(s)")


def timeout_probe(ctx: Context, config: MeshConfig, svc: ServiceConfig) -> Evidence:
    """Up to 3 requests with a 1 ms timeout and a 204 alternative response: Envoy's own 204
    proves the headers honoured, its 504 that they were removed; a service's answer proves
    nothing when it took about 1 ms or less."""
    prefix = config.header_prefix
    names = envoy.header_names(prefix)
    headers = {
        "Host": svc.envoy_host,
        names.upstream_rq_timeout_ms: "1",
        names.upstream_rq_timeout_alt_response: "204",
        names.max_retries: "0",
    }
    slowest = -1.0
    for _ in range(_TIMEOUT_PROBES):
        try:
            reply = get(config.envoy_http, ctx.path, ctx.timeout + 0.5, headers, body_limit=local_reply_body(prefix))
        except (OSError, http.client.HTTPException) as exc:
            return Evidence("inconclusive", f"timeout probe: {why(exc, ctx.timeout + 0.5)}")
        upstream = envoy.upstream_service_time(reply.headers, prefix)
        if reply.status == 204 and upstream is None:
            return Evidence(
                "honoured",
                "timeout probe: Envoy cut a request with a 1 ms timeout off with the 204 it was asked for",
            )
        if envoy.classify_reply(reply.status, reply.headers, reply.body, prefix) == "timeout":
            return Evidence(
                "ignored",
                f"timeout probe: Envoy answered 504 upstream request timeout after {reply.elapsed * 1000:.0f} ms "
                "instead of the 204 it was asked for (the header was removed; the route's own timeout fired)",
            )
        if upstream is not None:
            slowest = max(slowest, upstream)
    if slowest < 0:
        return Evidence("inconclusive", "timeout probe: no answer from the service to judge by")
    took = f"{slowest * 1000:.0f} ms"
    if slowest * 1000 >= _PROBABLY_IGNORED_MS:
        return Evidence(
            "inconclusive",
            f"timeout probe: Envoy let the service take {took} despite a 1 ms timeout (probably ignored)",
        )
    return Evidence(
        "inconclusive", f"timeout probe: the service answered in {took}, too fast for a 1 ms timeout to tell"
    )


def probe_evidence(
    attempts_reported: bool, retry: Callable[[], Evidence], timeout: Callable[[], Evidence]
) -> list[Evidence]:
    """The probes, in order: the retry probe when Envoy reports attempt counts, then the timeout
    probe unless the retry probe was conclusive."""
    evidence = []
    if attempts_reported:
        evidence.append(retry())
    if not evidence or evidence[-1].kind == "inconclusive":
        evidence.append(timeout())
    return evidence


def weigh_headers(
    found: ConfigEvidence, probes: list[str], evidence: list[Evidence], *, egress_up: bool, admin_configured: bool
) -> Check:
    """The ``envoy headers`` result from the config evidence and the probes (``probes``: what
    each showed, or why there was none, as printed)."""
    name = "envoy headers"
    state, fix = found.state, found.fix
    kinds = {e.kind for e in evidence}
    detail = "; ".join([found.found, *probes])
    if "ignored" in kinds:
        if state != "bad":
            fix = (
                INTERNAL_FIX
                if state == "unknown"
                else (
                    "the listener config looks right, so find what removes them: a proxy in front of Envoy, "
                    "or another process listening at mesh.envoy_http"
                )
            )
        return Check(name, "FAIL", "Envoy ignores the client's x-envoy-* headers: " + detail, fix)
    if state == "bad":
        if "honoured" in kinds:
            return Check(name, "WARN", "honoured now, but Envoy's config does not guarantee it: " + detail, fix)
        return Check(name, "FAIL", "Envoy will ignore the client's x-envoy-* headers: " + detail, fix)
    if state == "ok" or "honoured" in kinds:
        return Check(name, "OK", "Envoy honours the client's x-envoy-* headers: " + detail)
    if not egress_up:
        return Check(name, "SKIP", "not checked: " + detail)
    return Check(
        name,
        "WARN",
        "cannot tell whether Envoy honours the client's x-envoy-* headers: " + detail,
        "make Envoy's admin endpoint (mesh.envoy_admin) readable from this machine"
        if admin_configured
        else "set mesh.envoy_admin to the sidecar's admin address so doctor can read the listener config",
    )


def check_headers(
    ctx: Context, config: MeshConfig, admin: Admin | None, source_ip: str | None, routed: dict[str, Reply]
) -> None:
    """``envoy headers``: the config evidence and the probes through the first service that answered."""
    # the address Envoy sees this machine's calls come from (a loopback one for a local sidecar)
    ips = [source_ip or ("::1" if ":" in config.envoy_http.host else "127.0.0.1")]
    found = config_evidence(ctx, config, admin, ips)
    evidence: list[Evidence] = []
    if routed:
        svc = config.services[next(iter(routed))]
        first = routed[svc.name]
        evidence = probe_evidence(
            envoy.attempt_count(first.headers, config.header_prefix) is not None,
            lambda: retry_probe(ctx, config, svc, first),
            lambda: timeout_probe(ctx, config, svc),
        )
        probes = [f"via {svc.name}: {e.text}" for e in evidence]
    elif source_ip is None:
        probes = ["no probe (Envoy's egress does not accept connections)"]
    else:
        probes = ["no probe (no HTTP service answered through Envoy)"]
    result = weigh_headers(found, probes, evidence, egress_up=source_ip is not None, admin_configured=admin is not None)
    ctx.add(result)
