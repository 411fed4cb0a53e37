"""``mesh-client doctor MESH.toml``: does this machine's mesh match its registry?

Each check prints one line: a verdict, the check's name, what was found and, when the verdict is
not ``OK``, the fix. In order:

1. ``registry``: the registry loads (else the :class:`~mesh_client.ConfigError` message; nothing
   else is checked).
2. ``envoy admin`` (only with ``mesh.envoy_admin``): the admin endpoint answers; Envoy's version.
3. ``envoy egress``: the HTTP egress address ``mesh.envoy_http`` accepts connections.
4. ``envoy vhost NAME``, per HTTP service: a ``GET`` through Envoy with ``Host: <envoy_host>``
   reaches the service. Envoy's 404 with an empty body (``no_route``) means ``envoy_host`` matches
   none of Envoy's domains.
5. ``envoy headers``: Envoy honours the client's ``x-envoy-*`` headers (see below).
6. ``envoy reporting`` (with HTTP services): the virtual hosts of the HTTP services set
   ``include_attempt_count_in_response`` (without it ``call_info().attempts`` stays 1 and the retry
   budget charges every retryable answer all the retries Envoy was allowed) and
   ``include_request_attempt_count``, and the router filter does not set ``suppress_envoy_headers``;
   read from ``/config_dump`` (RDS route configurations included), else judged by whether Envoy's
   answers in check 4 carried ``x-envoy-attempt-count``. Missing settings are a ``WARN``.
   ``envoy variants`` (only with HTTP services that declare variants, and ``mesh.envoy_admin``):
   each variant's virtual host routes ``x-mesh-variant: VARIANT`` ahead of its default route (else
   calls steered to it by a routing override reach the main deployment: ``FAIL``).
7. ``envoy thrift`` (only with Thrift services): the Thrift listener accepts connections.
8. ``haproxy NAME``, per service: the service's HAProxy port accepts connections (and, for HTTP
   services, answers a ``GET``).
9. ``flags``: the flag source loads (the flag file is readable, valid JSON, and LaunchDarkly's file
   data source loaded it; or the LaunchDarkly client initialised within ``flags.start_wait``).
10. ``route NAME``, per service: what the flags decide now (:meth:`Mesh.route_for`), and why.

Verdicts: ``OK``; ``WARN`` (calls work, but something is off or could not be proven); ``FAIL``
(calls go wrong, or will); ``SKIP`` (not checked because a check it needs failed). The exit code
is 1 when any check failed, else 0. Every network step has a timeout (``--timeout``, default 2 s;
the LaunchDarkly client waits ``flags.start_wait``), so the command never hangs.

How the header check decides
----------------------------

Envoy applies ``x-envoy-*`` request headers only to requests it treats as internal; on other
requests it removes them silently, and calls lose their timeouts and retries without any error.
Two kinds of evidence:

- **The listener config** (with ``mesh.envoy_admin``; decisive): from ``GET /config_dump``, the
  listener bound to ``mesh.envoy_http`` must have an HTTP connection manager with
  ``use_remote_address: true`` and an ``internal_address_config`` whose ``cidr_ranges`` cover the
  address this machine connects from (127.0.0.1 for a loopback sidecar); Envoy's bootstrap
  ``header_prefix`` must equal ``mesh.header_prefix``.
- **Probes** through Envoy to one registered HTTP service (``GET --path``, default ``/``), which
  need no slow path on the service:

  - when the route reports attempt counts (``x-envoy-attempt-count`` in responses, as in the
    rendered bootstrap): ask Envoy to retry the very status the service just answered
    (``retry-on: retriable-status-codes`` with that status, ``max-retries: 1``). An answer after
    2 attempts proves the headers were honoured; after 1 attempt with the same status, that they
    were removed. This sends the ``GET`` to the service twice.
  - otherwise (or when that was inconclusive): up to 3 requests with
    ``upstream-rq-timeout-ms: 1`` and ``upstream-rq-timeout-alt-response: 204``. Envoy's own
    204 with no ``x-envoy-upstream-service-time`` proves both headers were honoured; Envoy's 504
    ``upstream request timeout`` proves the alternative response was ignored (so were the
    others). An answer from the service proves nothing when it took about 1 ms or less (a fast
    service beats the 1 ms timer); a much slower answer means the timeout was probably ignored.

  Limits: a probe proves what Envoy did with *this* request at *this* moment. It cannot tell a
  header removed by Envoy from one removed by a proxy in between, and Envoy versions before 1.36
  treated private addresses as internal even without ``internal_address_config``, so a probe may
  succeed there while the config check warns.

Both kinds together: any probe showing the headers were removed fails the check; a config
problem fails it unless a probe proved the headers honoured (then it warns); without the config
(no ``mesh.envoy_admin``) and without a conclusive probe, the check warns.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

from . import envoy, haproxy
from .errors import ConfigError
from .policy import MAX_SECONDS, Route
from .registry import Address, MeshConfig, ServiceConfig, load_file
from .sidecar.variant_routes import unrouted_variants

if TYPE_CHECKING:
    from .mesh import Mesh

__all__ = [
    "DEFAULT_TIMEOUT",
    "Check",
    "add_parser",
    "diagnose",
    "exit_code",
    "flag_source_problem",
    "quiet_flag_logs",
    "run",
    "seconds_arg",
]

#: Seconds each network step may take (``--timeout``).
DEFAULT_TIMEOUT: Final = 2.0
Verdict = Literal["OK", "WARN", "FAIL", "SKIP"]

_HCM_NAME: Final = "envoy.filters.network.http_connection_manager"
_MAX_ADMIN_BODY: Final = 64 * 1024 * 1024
_USER_AGENT: Final = "mesh-client-doctor"
_TIMEOUT_PROBES: Final = 3
#: an answer through Envoy that took this long despite a 1 ms timeout hints that the header was removed
_PROBABLY_IGNORED_MS: Final = 5
_RENDER_HINT: Final = "`mesh-client render envoy MESH.toml` prints a reference bootstrap"
_INTERNAL_FIX: Final = (
    "on the egress HTTP connection manager set use_remote_address: true and internal_address_config: "
    '{cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}, {address_prefix: "::1", prefix_len: 128}]} '
    f"({_RENDER_HINT}; docs/routes.md#envoy-settings-the-client-needs)"
)


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``verdict`` is ``OK``, ``WARN``, ``FAIL`` or ``SKIP``."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The check as the one line the command prints."""
        text = f"{self.verdict:<4}  {self.name:<20} {self.detail}"
        if self.fix and self.verdict != "OK":
            text += f" -> fix: {self.fix}"
        return text


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0."""
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0


# -- network helpers: every step bounded by a timeout -------------------------------------------


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"gave no answer within {self.seconds:g} s")
        return left


def _resolve(address: Address, timeout: float) -> str:
    """The IP to connect to for ``address``; name resolution is bounded too (in a helper thread)."""
    if address.is_ip:
        return address.host
    found: list[str] = []
    failed: list[OSError] = []

    def work() -> None:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            found.append(str(infos[0][4][0]))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=work, name="mesh-doctor-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError(f"could not be resolved within {timeout:g} s")
    return found[0]


def _why(exc: BaseException, timeout: float) -> str:
    """A short phrase for a failed network step."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused the connection (nothing listens there)"
    if isinstance(exc, TimeoutError):
        text = str(exc)
        mine = text.startswith(("gave no answer", "could not be resolved"))
        return text if mine else f"gave no answer within {timeout:g} s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror or exc})"
    if isinstance(exc, ConnectionError):
        return f"the connection broke ({type(exc).__name__})"
    if isinstance(exc, http.client.HTTPException):
        return f"answered something that is not HTTP ({type(exc).__name__}: {exc})"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _connect(address: Address, timeout: float) -> tuple[str, str]:
    """Open and close a TCP connection; return the local IP it came from and the IP it went to."""
    deadline = _Deadline(timeout)
    ip = _resolve(address, deadline.left())
    with socket.create_connection((ip, address.port), timeout=deadline.left()) as sock:
        return str(sock.getsockname()[0]), ip


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes | None
    elapsed: float


def _get(
    address: Address,
    path: str,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    *,
    body_limit: int | Callable[[int, Mapping[str, str]], int] = 0,
) -> _Reply:
    """One ``GET``; the body is read only up to ``body_limit`` bytes (a number, or a function of
    the status and headers), and all of it within ``timeout``."""
    deadline = _Deadline(timeout)
    started = time.monotonic()
    ip = _resolve(address, deadline.left())
    conn = http.client.HTTPConnection(ip, address.port, timeout=deadline.left())
    try:
        sent = {"Host": str(address), "User-Agent": _USER_AGENT, "Connection": "close", **(headers or {})}
        conn.request("GET", path, headers=sent)
        response = conn.getresponse()
        received: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            received[key] = f"{received[key]}, {value}" if key in received else value
        limit = body_limit(response.status, received) if callable(body_limit) else body_limit
        body: bytes | None = None
        if limit > 0:
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                if conn.sock is not None:
                    conn.sock.settimeout(deadline.left())
                chunk = response.read(min(65536, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            body = b"".join(chunks)
        return _Reply(response.status, response.reason, received, body, time.monotonic() - started)
    finally:
        conn.close()


# -- reading Envoy's admin endpoint --------------------------------------------------------------


@dataclass
class _Admin:
    """What the admin endpoint told (``error`` set when the listener config could not be read)."""

    version: str = ""
    listeners: list[dict[str, Any]] = field(default_factory=list)
    #: route configurations that came over RDS, by name (inline ones are in the listeners)
    route_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    header_prefix: str | None = None
    error: str = ""


def _admin_json(address: Address, path: str, timeout: float) -> Any:
    reply = _get(address, path, timeout, body_limit=_MAX_ADMIN_BODY)
    if reply.status != 200:
        raise ValueError(f"GET {path} answered {reply.status} {reply.reason}")
    try:
        return json.loads(reply.body or b"")
    except ValueError as exc:
        raise ValueError(f"GET {path} did not answer JSON ({exc})") from None


def _listeners(dump: Any) -> list[dict[str, Any]]:
    """The listeners of a ``/config_dump?resource=...`` answer (static, active and warming)."""
    found: list[dict[str, Any]] = []
    configs = dump.get("configs", []) if isinstance(dump, dict) else []
    for entry in configs if isinstance(configs, list) else []:
        if not isinstance(entry, dict):
            continue
        candidates = [entry.get("listener")]
        candidates += [entry.get(state, {}).get("listener") for state in ("active_state", "warming_state")]
        found += [c for c in candidates if isinstance(c, dict)]
    return found


def _socket_address(listener: Mapping[str, Any]) -> tuple[str, int] | None:
    sock = listener.get("address", {}).get("socket_address", {})
    if not isinstance(sock, dict) or "port_value" not in sock:
        return None
    return str(sock.get("address", "")), int(sock["port_value"])


def _listener_at(listeners: list[dict[str, Any]], address: Address, ip: str) -> dict[str, Any] | None:
    for listener in listeners:
        bound = _socket_address(listener)
        if bound is None or bound[1] != address.port:
            continue
        if bound[0] in (address.host, ip, "0.0.0.0", "::"):
            return listener
    return None


def _hcms(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The HTTP connection managers of every filter chain of ``listener``."""
    chains = list(listener.get("filter_chains", []))
    if isinstance(listener.get("default_filter_chain"), dict):
        chains.append(listener["default_filter_chain"])
    found = []
    for chain in chains:
        for flt in chain.get("filters", []) if isinstance(chain, dict) else []:
            typed = flt.get("typed_config", {}) if isinstance(flt, dict) else {}
            if flt.get("name") == _HCM_NAME or str(typed.get("@type", "")).endswith(".HttpConnectionManager"):
                found.append(typed)
    return found


def _covers(ranges: object, ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    for entry in ranges if isinstance(ranges, list) else []:
        if not isinstance(entry, dict):
            continue
        try:
            network = ipaddress.ip_network(f"{entry.get('address_prefix')}/{int(entry.get('prefix_len', 0))}", False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


def _hcm_problems(hcm: Mapping[str, Any], ips: list[str]) -> list[str]:
    problems = []
    if hcm.get("use_remote_address") is not True:
        problems.append("use_remote_address is not true")
    internal = hcm.get("internal_address_config")
    if not isinstance(internal, dict):
        problems.append("it has no internal_address_config")
    else:
        ranges = internal.get("cidr_ranges", [])
        shown = ", ".join(f"{r.get('address_prefix')}/{r.get('prefix_len', 0)}" for r in ranges if isinstance(r, dict))
        for ip in ips:
            if not _covers(ranges, ip):
                problems.append(f"internal_address_config does not cover {ip} (cidr_ranges: {shown or 'none'})")
    return problems


def _admin_address(config: MeshConfig) -> str:
    return str(config.envoy_admin) if config.envoy_admin is not None else "?"


def _domains(listener: Mapping[str, Any] | None) -> str:
    """Envoy's virtual host domains on the egress listener, for a ``no_route`` explanation."""
    if listener is None:
        return ""
    domains: list[str] = []
    for hcm in _hcms(listener):
        if "rds" in hcm:
            return f"; routes come from RDS ({hcm['rds'].get('route_config_name', '?')})"
        for vhost in hcm.get("route_config", {}).get("virtual_hosts", []):
            domains += [str(d) for d in vhost.get("domains", [])]
    return f"; Envoy's domains: {', '.join(domains)}" if domains else ""


def _route_configs(dump: Any) -> dict[str, dict[str, Any]]:
    """The route configurations of a ``/config_dump?resource=dynamic_route_configs`` answer, by name."""
    found: dict[str, dict[str, Any]] = {}
    configs = dump.get("configs", []) if isinstance(dump, dict) else []
    for entry in configs if isinstance(configs, list) else []:
        route_config = entry.get("route_config") if isinstance(entry, dict) else None
        if isinstance(route_config, dict):
            found[str(route_config.get("name", ""))] = route_config
    return found


def _virtual_host_for(route_config: Mapping[str, Any], host: str) -> dict[str, Any] | None:
    """The virtual host Envoy picks for ``Host: host``: an exact domain, else the longest suffix
    wildcard (``*.example.com``), else the longest prefix wildcard (``users.*``), else ``*``."""
    host = host.lower()
    best: dict[str, Any] | None = None
    best_rank = (-1, 0)
    for vhost in route_config.get("virtual_hosts", []):
        if not isinstance(vhost, dict):
            continue
        for domain in (str(d).lower() for d in vhost.get("domains", [])):
            if domain == host:
                return vhost
            if domain == "*":
                rank = (0, 0)
            elif domain.startswith("*") and len(host) >= len(domain) and host.endswith(domain[1:]):
                rank = (2, len(domain))
            elif domain.endswith("*") and len(host) >= len(domain) and host.startswith(domain[:-1]):
                rank = (1, len(domain))
            else:
                continue
            if rank > best_rank:
                best, best_rank = vhost, rank
    return best


def _route_config_of(hcm: Mapping[str, Any], admin: _Admin) -> dict[str, Any] | None:
    """An HTTP connection manager's route configuration: inline, or the one it names over RDS."""
    route_config = hcm.get("route_config")
    if route_config is None and isinstance(hcm.get("rds"), dict):
        route_config = admin.route_configs.get(str(hcm["rds"].get("route_config_name", "")))
    return route_config if isinstance(route_config, dict) else None


def _suppresses_envoy_headers(hcm: Mapping[str, Any]) -> bool:
    """Whether the connection manager's router filter sets ``suppress_envoy_headers``."""
    for flt in hcm.get("http_filters", []):
        typed = flt.get("typed_config", {}) if isinstance(flt, dict) else {}
        router = flt.get("name") == "envoy.filters.http.router" or str(typed.get("@type", "")).endswith(".Router")
        if router and isinstance(typed, dict) and typed.get("suppress_envoy_headers") is True:
            return True
    return False


#: Virtual host settings the client reads, and what goes missing without them.
ATTEMPT_COUNT_SETTINGS: Final = {
    "include_attempt_count_in_response": (
        "call_info().attempts stays 1, and the retry budget charges every retryable answer all the retries "
        "Envoy was allowed (it cannot see Envoy's retries that ended in a success)"
    ),
    "include_request_attempt_count": (
        "the service is not told which attempt a request is (no x-envoy-attempt-count on requests)"
    ),
}
_ATTEMPTS_DOC: Final = "docs/routes.md#envoy-settings-the-client-needs"


# -- probes of the header check ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Evidence:
    kind: Literal["honoured", "ignored", "inconclusive"]
    text: str


def _local_reply_body(prefix: str) -> Callable[[int, Mapping[str, str]], int]:
    return lambda status, headers: 1024 if envoy.may_be_local_reply(status, headers, prefix) else 0


@dataclass
class _Doctor:
    registry: str
    timeout: float
    path: str
    emit: Callable[[Check], None]
    checks: list[Check] = field(default_factory=list)
    #: the IP the egress address resolved to (for matching Envoy's listener)
    egress_ip: str = ""

    def check(self, name: str, verdict: Verdict, detail: str, fix: str = "") -> Check:
        result = Check(name, verdict, detail, fix)
        self.checks.append(result)
        self.emit(result)
        return result

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> list[Check]:
        config = self._registry()
        if config is None:
            return self.checks
        admin = self._admin(config)
        source_ip = self._egress(config)
        routed = self._vhosts(config, source_ip is not None, admin)
        self._headers(config, admin, source_ip, routed)
        self._reporting(config, admin, routed)
        self._variants(config, admin)
        self._thrift(config)
        self._haproxy(config)
        self._flags(config)
        return self.checks

    def _registry(self) -> MeshConfig | None:
        try:
            config = load_file(self.registry)
        except ConfigError as exc:
            if exc.key is not None:
                fix = f"correct {exc.key} in {self.registry} (docs/registry.md lists every key)"
            elif not os.access(self.registry, os.R_OK) or not Path(self.registry).is_file():
                fix = "pass the path of a registry TOML file this user can read (docs/registry.md)"
            else:
                fix = "correct the file where the message says (docs/registry.md describes the format)"
            self.check("registry", "FAIL", str(exc), fix)
            return None
        services = ", ".join(f"{s.name} ({s.protocol})" for s in config.services.values()) or "none"
        flags = config.flags
        source = {"file": f"flag file {flags.path}", "launchdarkly": "LaunchDarkly", "none": "none"}[flags.source]
        self.check(
            "registry", "OK", f"{self.registry}: caller {config.caller}; services {services}; flag source: {source}"
        )
        if not config.services:
            self.check("services", "WARN", "the registry has no [services.NAME] table", "add the services you call")
        return config

    def _admin(self, config: MeshConfig) -> _Admin | None:
        address = config.envoy_admin
        if address is None:
            return None
        admin = _Admin()
        try:
            info = _admin_json(address, "/server_info", self.timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            admin.error = str(exc) if isinstance(exc, ValueError) else _why(exc, self.timeout)
            self.check(
                "envoy admin",
                "WARN",
                f"{address} (mesh.envoy_admin): {admin.error}; doctor cannot read Envoy's listener config",
                "start the Envoy sidecar, or set mesh.envoy_admin to its admin address (or remove the key)",
            )
            return admin
        info = info if isinstance(info, dict) else {}
        version = str(info.get("version", "?"))
        admin.version = version.split("/")[1] if version.count("/") >= 2 else version
        state = str(info.get("state", "?"))
        try:
            for resource in ("static_listeners", "dynamic_listeners"):
                admin.listeners += _listeners(_admin_json(address, f"/config_dump?resource={resource}", self.timeout))
            if any("rds" in hcm for listener in admin.listeners for hcm in _hcms(listener)):
                dump = _admin_json(address, "/config_dump?resource=dynamic_route_configs", self.timeout)
                admin.route_configs = _route_configs(dump)
            bootstrap = _admin_json(address, "/config_dump?mask=bootstrap.header_prefix", self.timeout)
            for entry in bootstrap.get("configs", []) if isinstance(bootstrap, dict) else []:
                prefix = entry.get("bootstrap", {}).get("header_prefix") if isinstance(entry, dict) else None
                admin.header_prefix = str(prefix) if prefix else "x-envoy"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            admin.error = "GET /config_dump: " + (str(exc) if isinstance(exc, ValueError) else _why(exc, self.timeout))
        found = f"{address}: Envoy {admin.version}, {state}, {len(admin.listeners)} listener(s)"
        if admin.error:
            self.check("envoy admin", "WARN", f"{found}; {admin.error}", "make /config_dump readable from this machine")
        elif state != "LIVE":
            self.check("envoy admin", "WARN", found, "wait until Envoy is LIVE (it is still starting or draining)")
        else:
            self.check("envoy admin", "OK", found)
        return admin

    def _egress(self, config: MeshConfig) -> str | None:
        address = config.envoy_http
        try:
            source_ip, self.egress_ip = _connect(address, self.timeout)
        except OSError as exc:
            failover = (
                "; meanwhile calls on the Envoy route fail over to HAProxy"
                if config.failover
                else "; with failover off, calls on the Envoy route fail"
            )
            self.check(
                "envoy egress",
                "FAIL",
                f"{address} (mesh.envoy_http) {_why(exc, self.timeout)}{failover}",
                f"start the Envoy sidecar, or set mesh.envoy_http to the address its egress listener binds "
                f"({_RENDER_HINT})",
            )
            return None
        self.check("envoy egress", "OK", f"{address} accepts connections (from {source_ip})")
        return source_ip

    def _vhosts(self, config: MeshConfig, egress_up: bool, admin: _Admin | None) -> dict[str, _Reply]:
        """Per HTTP service: does Envoy route its Host? Returns the upstream answers by service."""
        prefix = config.header_prefix
        routed: dict[str, _Reply] = {}
        listener = None
        if admin is not None and not admin.error:
            listener = _listener_at(admin.listeners, config.envoy_http, self.egress_ip)
        for svc in config.services.values():
            if svc.protocol != "http":
                continue
            name = f"envoy vhost {svc.name}"
            if not egress_up:
                self.check(name, "SKIP", "not checked: the Envoy egress address does not accept connections")
                continue
            headers = {
                "Host": svc.envoy_host,
                f"{prefix}-upstream-rq-timeout-ms": str(envoy.timeout_ms(self.timeout)),
                f"{prefix}-max-retries": "0",
            }
            try:
                reply = _get(
                    config.envoy_http, self.path, self.timeout + 0.5, headers, body_limit=_local_reply_body(prefix)
                )
            except (OSError, http.client.HTTPException) as exc:
                self.check(
                    name,
                    "FAIL",
                    f"GET {self.path} with Host {svc.envoy_host}: {config.envoy_http} {_why(exc, self.timeout + 0.5)}",
                    "look at Envoy's log; is something else listening at mesh.envoy_http?",
                )
                continue
            self._vhost_verdict(svc, name=name, reply=reply, prefix=prefix, listener=listener, routed=routed)
        return routed

    def _vhost_verdict(
        self,
        svc: ServiceConfig,
        *,
        name: str,
        reply: _Reply,
        prefix: str,
        listener: dict[str, Any] | None,
        routed: dict[str, _Reply],
    ) -> None:
        what = f"GET {self.path} with Host {svc.envoy_host}"
        kind = envoy.classify_reply(reply.status, reply.headers, reply.body, prefix)
        took = f"{reply.elapsed * 1000:.0f} ms"
        if kind == "no_route":
            self.check(
                name,
                "FAIL",
                f"{what}: Envoy answered 404 with an empty body (no_route): no virtual host matches "
                f"{svc.envoy_host!r}{_domains(listener)}",
                f"add {svc.envoy_host!r} to the domains of a virtual host on Envoy's egress listener, or set "
                f"services.{svc.name}.envoy_host to a domain Envoy routes",
            )
        elif kind == "no_cluster":
            self.check(
                name,
                "FAIL",
                f"{what}: Envoy answered 503 with an empty body (no_cluster): the route's cluster does not exist",
                f"add the cluster the {svc.envoy_host!r} route names to Envoy's config",
            )
        elif kind is not None and f"{prefix}-upstream-service-time" not in reply.headers:
            if kind == "timeout":
                fix = f"the service took longer than {self.timeout:g} s: use a cheaper --path or a longer --timeout"
            elif kind in ("no_healthy_upstream", "connect_failure"):
                fix = (
                    f"Envoy reaches no healthy instance of {svc.name}: check the service's instances (the "
                    f"cluster's endpoints; services.{svc.name}.endpoints in a rendered bootstrap)"
                )
            else:
                fix = "see the envoy_error kinds in docs/routes.md"
            self.check(
                name, "WARN", f"{what}: Envoy routes it but answered {reply.status} itself ({kind}) after {took}", fix
            )
        else:
            upstream = envoy.upstream_service_time(reply.headers, prefix)
            spent = f", upstream {upstream * 1000:.0f} ms" if upstream is not None else ""
            routed[svc.name] = reply
            self.check(name, "OK", f"{what}: the service answered {reply.status} in {took}{spent}")

    # -- the header check ------------------------------------------------------------------------

    def _config_evidence(self, config: MeshConfig, admin: _Admin | None, ips: list[str]) -> tuple[str, str, str]:
        """("ok" | "bad" | "unknown", what was found, the fix when bad)."""
        if admin is None:
            return "unknown", "no mesh.envoy_admin, so the listener config was not read", ""
        if admin.error:
            return "unknown", f"the listener config could not be read ({admin.error})", ""
        listener = _listener_at(admin.listeners, config.envoy_http, self.egress_ip)
        if listener is None:
            bound = [
                f"{listener.get('name', '?')} at {addr[0]}:{addr[1]}"
                for listener in admin.listeners
                if (addr := _socket_address(listener)) is not None
            ]
            found = f"the Envoy at {_admin_address(config)} has no listener at {config.envoy_http}"
            return (
                "bad",
                f"{found} (its listeners: {', '.join(bound) or 'none'})",
                "mesh.envoy_http and mesh.envoy_admin must name the same Envoy: set mesh.envoy_http to the "
                "address of its egress HTTP listener",
            )
        label = f"listener {listener.get('name', '?')}"
        hcms = _hcms(listener)
        if not hcms:
            return "bad", f"{label} at {config.envoy_http} has no HTTP connection manager", _INTERNAL_FIX
        problems = list(dict.fromkeys(p for hcm in hcms for p in _hcm_problems(hcm, ips)))
        fix = _INTERNAL_FIX if problems else ""
        if admin.header_prefix is not None and admin.header_prefix != config.header_prefix:
            problems.append(
                f"Envoy's header_prefix is {admin.header_prefix!r} but mesh.header_prefix is {config.header_prefix!r}"
            )
            fix = (fix + "; " if fix else "") + f"set mesh.header_prefix = {admin.header_prefix!r} (Envoy's)"
        if problems:
            return "bad", f"{label}: " + "; ".join(problems), fix
        covered = ", ".join(ips)
        return "ok", f"{label}: use_remote_address true, internal_address_config covers {covered}", ""

    def _retry_probe(self, config: MeshConfig, svc: ServiceConfig, first: _Reply) -> _Evidence:
        prefix = config.header_prefix
        status = first.status
        headers = {
            "Host": svc.envoy_host,
            f"{prefix}-upstream-rq-timeout-ms": str(envoy.timeout_ms(self.timeout)),
            f"{prefix}-retry-on": "retriable-status-codes",
            f"{prefix}-retriable-status-codes": str(status),
            f"{prefix}-max-retries": "1",
        }
        try:
            reply = _get(config.envoy_http, self.path, self.timeout + 0.5, headers)
        except (OSError, http.client.HTTPException) as exc:
            return _Evidence("inconclusive", f"retry probe: {_why(exc, self.timeout + 0.5)}")
        attempts = envoy.attempt_count(reply.headers, prefix)
        asked = f"asked to retry status {status} once"
        if attempts is not None and attempts >= 2:
            return _Evidence("honoured", f"retry probe: {asked}, Envoy answered after {attempts} attempts")
        if attempts == 1 and reply.status == status:
            return _Evidence(
                "ignored",
                f"retry probe: {asked}, Envoy answered {status} after 1 attempt (the retry headers were removed)",
            )
        return _Evidence("inconclusive", f"retry probe: {asked}, got {reply.status} after {attempts or '?'} attempt(s)")

    def _timeout_probe(self, config: MeshConfig, svc: ServiceConfig) -> _Evidence:
        prefix = config.header_prefix
        headers = {
            "Host": svc.envoy_host,
            f"{prefix}-upstream-rq-timeout-ms": "1",
            f"{prefix}-upstream-rq-timeout-alt-response": "204",
            f"{prefix}-max-retries": "0",
        }
        slowest = -1.0
        for _ in range(_TIMEOUT_PROBES):
            try:
                reply = _get(
                    config.envoy_http, self.path, self.timeout + 0.5, headers, body_limit=_local_reply_body(prefix)
                )
            except (OSError, http.client.HTTPException) as exc:
                return _Evidence("inconclusive", f"timeout probe: {_why(exc, self.timeout + 0.5)}")
            upstream = envoy.upstream_service_time(reply.headers, prefix)
            if reply.status == 204 and upstream is None:
                return _Evidence(
                    "honoured",
                    "timeout probe: Envoy cut a request with a 1 ms timeout off with the 204 it was asked for",
                )
            if envoy.classify_reply(reply.status, reply.headers, reply.body, prefix) == "timeout":
                return _Evidence(
                    "ignored",
                    f"timeout probe: Envoy answered 504 upstream request timeout after {reply.elapsed * 1000:.0f} ms "
                    "instead of the 204 it was asked for (the header was removed; the route's own timeout fired)",
                )
            if upstream is not None:
                slowest = max(slowest, upstream)
        if slowest < 0:
            return _Evidence("inconclusive", "timeout probe: no answer from the service to judge by")
        took = f"{slowest * 1000:.0f} ms"
        if slowest * 1000 >= _PROBABLY_IGNORED_MS:
            return _Evidence(
                "inconclusive",
                f"timeout probe: Envoy let the service take {took} despite a 1 ms timeout (probably ignored)",
            )
        return _Evidence(
            "inconclusive", f"timeout probe: the service answered in {took}, too fast for a 1 ms timeout to tell"
        )

    def _headers(
        self, config: MeshConfig, admin: _Admin | None, source_ip: str | None, routed: dict[str, _Reply]
    ) -> None:
        name = "envoy headers"
        # the address Envoy sees this machine's calls come from (a loopback one for a local sidecar)
        ips = [source_ip or ("::1" if ":" in config.envoy_http.host else "127.0.0.1")]
        state, found, fix = self._config_evidence(config, admin, ips)
        findings = [found]
        evidence: list[_Evidence] = []
        if routed:
            svc = config.services[next(iter(routed))]
            first = routed[svc.name]
            if envoy.attempt_count(first.headers, config.header_prefix) is not None:
                evidence.append(self._retry_probe(config, svc, first))
            if not evidence or evidence[-1].kind == "inconclusive":
                evidence.append(self._timeout_probe(config, svc))
            findings += [f"via {svc.name}: {e.text}" for e in evidence]
        elif source_ip is None:
            findings.append("no probe (Envoy's egress does not accept connections)")
        else:
            findings.append("no probe (no HTTP service answered through Envoy)")
        kinds = {e.kind for e in evidence}
        detail = "; ".join(findings)
        if "ignored" in kinds:
            if state != "bad":
                fix = (
                    _INTERNAL_FIX
                    if state == "unknown"
                    else (
                        "the listener config looks right, so find what removes them: a proxy in front of Envoy, "
                        "or another process listening at mesh.envoy_http"
                    )
                )
            self.check(name, "FAIL", "Envoy ignores the client's x-envoy-* headers: " + detail, fix)
        elif state == "bad":
            if "honoured" in kinds:
                self.check(name, "WARN", "honoured now, but Envoy's config does not guarantee it: " + detail, fix)
            else:
                self.check(name, "FAIL", "Envoy will ignore the client's x-envoy-* headers: " + detail, fix)
        elif state == "ok" or "honoured" in kinds:
            self.check(name, "OK", "Envoy honours the client's x-envoy-* headers: " + detail)
        elif source_ip is None:
            self.check(name, "SKIP", "not checked: " + detail)
        else:
            self.check(
                name,
                "WARN",
                "cannot tell whether Envoy honours the client's x-envoy-* headers: " + detail,
                "set mesh.envoy_admin to the sidecar's admin address so doctor can read the listener config"
                if admin is None
                else "make Envoy's admin endpoint (mesh.envoy_admin) readable from this machine",
            )

    # -- what Envoy reports back ------------------------------------------------------------------

    def _reporting(self, config: MeshConfig, admin: _Admin | None, routed: dict[str, _Reply]) -> None:
        """Which settings that make Envoy report attempts (and its timings) the running config
        lacks, per virtual host of the HTTP services; from the answers alone without the config."""
        name = "envoy reporting"
        http = [svc for svc in config.services.values() if svc.protocol == "http"]
        if not http:
            return
        listener = None
        if admin is not None and not admin.error:
            listener = _listener_at(admin.listeners, config.envoy_http, self.egress_ip)
        if listener is None:
            self._reporting_from_answers(config, routed)
            return
        assert admin is not None
        missing: dict[str, list[str]] = {setting: [] for setting in ATTEMPT_COUNT_SETTINGS}
        seen: list[str] = []
        suppressed = False
        for hcm in _hcms(listener):
            suppressed = suppressed or _suppresses_envoy_headers(hcm)
            route_config = _route_config_of(hcm, admin)
            for svc in http:
                vhost = _virtual_host_for(route_config, svc.envoy_host) if route_config is not None else None
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
                f"{config.header_prefix}-expected-rq-timeout-ms (its middleware sees no deadline), "
                "call_info().upstream_service_time stays None, and Envoy's overload signal no longer reaches the client"
            )
        if not seen:
            names = ", ".join(svc.envoy_host for svc in http)
            if any(c.name.startswith("envoy vhost ") and c.verdict == "FAIL" for c in self.checks):
                self.check(name, "SKIP", f"not checked: no virtual host routes {names} (see the envoy vhost checks)")
            else:
                self.check(
                    name,
                    "WARN",
                    f"cannot tell: the virtual hosts for {names} are not in the route configuration doctor read "
                    f"from listener {listener.get('name', '?')} (scoped routes?)",
                    f"check include_attempt_count_in_response and include_request_attempt_count by hand "
                    f"({_ATTEMPTS_DOC})",
                )
            return
        if problems:
            settings = [f"{setting}: true" for setting, hosts in missing.items() if hosts]
            fixes = [f"set {' and '.join(settings)} on the virtual hosts named"] if settings else []
            if suppressed:
                fixes.append("remove suppress_envoy_headers from the router filter")
            self.check(name, "WARN", "; ".join(problems), f"{'; '.join(fixes)} ({_RENDER_HINT}; {_ATTEMPTS_DOC})")
            return
        self.check(
            name,
            "OK",
            f"virtual host {', '.join(dict.fromkeys(seen))}: include_attempt_count_in_response and "
            "include_request_attempt_count set",
        )

    def _variants(self, config: MeshConfig, admin: _Admin | None) -> None:
        """The running Envoy routes ``x-mesh-variant`` to each declared variant of the HTTP
        services, ahead of their default routes (see docs/overrides.md)."""
        services = [svc for svc in config.services.values() if svc.protocol == "http" and svc.variants]
        if not services:
            return
        name = "envoy variants"
        listener = None
        if admin is not None and not admin.error:
            listener = _listener_at(admin.listeners, config.envoy_http, self.egress_ip)
        if listener is None:
            why = "no mesh.envoy_admin" if admin is None else admin.error or f"no listener at {config.envoy_http}"
            self.check(name, "SKIP", f"not checked: {why}, so the route config was not read")
            return
        assert admin is not None
        found, missing = [], []
        for svc in services:
            configs = [rc for rc in (_route_config_of(hcm, admin) for hcm in _hcms(listener)) if rc is not None]
            vhost = next((v for v in (_virtual_host_for(rc, svc.envoy_host) for rc in configs) if v), None)
            unrouted = list(svc.variants) if vhost is None else unrouted_variants(vhost, svc)
            found += [f"{svc.name}:{v}" for v in svc.variants if v not in unrouted]
            missing += [f"{svc.name}:{v}" for v in unrouted]
        if missing:
            self.check(
                name,
                "FAIL",
                f"no route for x-mesh-variant ahead of the default route for {', '.join(missing)}: calls steered "
                "to them reach the main deployment",
                f"add a route matching the header x-mesh-variant: VARIANT, before the service's catch-all, to the "
                f"cluster SERVICE:VARIANT ({_RENDER_HINT}; docs/overrides.md)",
            )
            return
        self.check(name, "OK", f"x-mesh-variant routed ahead of the default route for {', '.join(found)}")

    def _reporting_from_answers(self, config: MeshConfig, routed: dict[str, _Reply]) -> None:
        """The ``envoy reporting`` check without Envoy's config: whether its answers carried the count."""
        name = "envoy reporting"
        if not routed:
            self.check(name, "SKIP", "not checked: Envoy's config was not read and no HTTP service answered through it")
            return
        prefix = config.header_prefix
        without = [svc for svc, reply in routed.items() if envoy.attempt_count(reply.headers, prefix) is None]
        if without:
            consequence = ATTEMPT_COUNT_SETTINGS["include_attempt_count_in_response"]
            self.check(
                name,
                "WARN",
                f"Envoy's answers via {', '.join(without)} carry no {prefix}-attempt-count, so "
                f"include_attempt_count_in_response is not set: {consequence}",
                f"set include_attempt_count_in_response: true on the virtual hosts ({_ATTEMPTS_DOC})",
            )
            return
        self.check(
            name,
            "OK",
            f"Envoy's answers via {', '.join(routed)} carry {prefix}-attempt-count "
            "(include_request_attempt_count was not checked: Envoy's config was not read)",
        )

    # -- the rest --------------------------------------------------------------------------------

    def _thrift(self, config: MeshConfig) -> None:
        thrift = [s.name for s in config.services.values() if s.protocol == "thrift"]
        if not thrift or config.envoy_thrift is None:
            return
        try:
            _connect(config.envoy_thrift, self.timeout)
        except OSError as exc:
            self.check(
                "envoy thrift",
                "FAIL",
                f"{config.envoy_thrift} (mesh.envoy_thrift, for {', '.join(thrift)}) {_why(exc, self.timeout)}",
                f"give Envoy a thrift_proxy listener at mesh.envoy_thrift ({_RENDER_HINT})",
            )
            return
        self.check("envoy thrift", "OK", f"{config.envoy_thrift} accepts connections (for {', '.join(thrift)})")

    def _haproxy(self, config: MeshConfig) -> None:
        for svc in config.services.values():
            name = f"haproxy {svc.name}"
            fix = (
                f"start HAProxy (SmartStack) for this machine, or set services.{svc.name}.haproxy to the port "
                "it binds for the service (`mesh-client render haproxy MESH.toml` prints a reference config)"
            )
            try:
                _connect(svc.haproxy, self.timeout)
            except OSError as exc:
                self.check(name, "FAIL", f"{svc.haproxy} {_why(exc, self.timeout)}", fix)
                continue
            if svc.protocol != "http":
                self.check(name, "OK", f"{svc.haproxy} accepts connections")
                continue
            try:
                reply = _get(
                    svc.haproxy, self.path, self.timeout, {"Host": svc.envoy_host}, body_limit=_haproxy_error_page
                )
            except (OSError, http.client.HTTPException) as exc:
                self.check(
                    name,
                    "WARN",
                    f"{svc.haproxy} accepts connections, but GET {self.path}: it {_why(exc, self.timeout)}",
                    "check HAProxy's backend for the service",
                )
                continue
            kind = haproxy.classify_reply(reply.status, reply.body)
            if kind is not None:
                self.check(
                    name,
                    "WARN",
                    f"{svc.haproxy} accepts connections, but HAProxy answered {reply.status} itself ({kind})",
                    f"HAProxy reaches no healthy instance of {svc.name}: check its servers (SmartStack registrations)",
                )
            else:
                took = f"{reply.elapsed * 1000:.0f} ms"
                self.check(
                    name, "OK", f"{svc.haproxy} accepts connections; GET {self.path} answered {reply.status} in {took}"
                )

    def _flags(self, config: MeshConfig) -> None:
        flags = config.flags
        summary = ""
        if flags.source == "file":
            problem, summary, warning = _read_flag_file(config)
            if problem:
                fix = f"write it (mesh_client.routing.write_flag_file) or correct flags.path in {self.registry}"
                self.check(
                    "flags", "FAIL", f"{problem}; every call uses default_route {config.default_route.value}", fix
                )
                self._routes(config, None)
                return
        from .mesh import Mesh

        started = time.monotonic()
        with quiet_flag_logs() as messages:
            mesh = Mesh(config)  # the LaunchDarkly client waits at most flags.start_wait
        try:
            took = time.monotonic() - started
            client = mesh.flag_client
            problem = flag_source_problem(config, mesh, messages)
            if flags.source == "none":
                self.check(
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
                self.check("flags", "FAIL", f"{problem}; calls use default_route {config.default_route.value}", fix)
            elif flags.source == "file" and warning:
                self.check("flags", "WARN", f"{summary}; {warning}", ROLLOUT_FIX)
            elif flags.source == "file":
                self.check("flags", "OK", f"{summary}; the LaunchDarkly client loaded it in {took:.2f} s")
            else:
                self.check("flags", "OK", f"the LaunchDarkly client initialised in {took:.2f} s")
            loaded = flags.source == "none" or (client is not None and client.is_initialized())
            self._routes(config, mesh if loaded else None)
        finally:
            with quiet_flag_logs():
                mesh.close()

    def _routes(self, config: MeshConfig, mesh: Mesh | None) -> None:
        failed = {c.name for c in self.checks if c.verdict == "FAIL"}
        for svc in config.services.values():
            name = f"route {svc.name}"
            key = config.flags.key_for(svc.name)
            if mesh is None:
                route = config.default_route
                detail = f"{route.value}: the flag source did not load, so default_route applies"
                self.check(name, "WARN", detail + _failed_note(svc, route, failed), "fix the flags check above")
                continue
            with quiet_flag_logs():
                decision = mesh.route_for(svc.name)
            detail = f"{decision.route.value}: {decision.reason}" + _failed_note(svc, decision.route, failed)
            if config.flags.source == "none" or decision.flag_value in ("envoy", "haproxy"):
                self.check(name, "OK", detail)
            elif decision.flag_value is None:
                fix = (
                    f"create the string flag {key} with the value 'envoy' or 'haproxy' (routing.route_flag writes one)"
                )
                self.check(name, "WARN", detail, fix)
            else:
                self.check(name, "WARN", detail, f"make the variations of {key} 'envoy' and 'haproxy'")


def _read_flag_file(config: MeshConfig) -> tuple[str, str, str]:
    """(problem, summary, warning) about the flag file; an empty problem when it is usable."""
    path = config.flags.path
    assert path is not None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read flag file {path}: {exc.strerror or exc}", "", ""
    except UnicodeDecodeError as exc:
        return f"flag file {path} is not UTF-8 text ({exc})", "", ""
    except ValueError as exc:
        return f"flag file {path} is not valid JSON ({exc})", "", ""
    flags = data.get("flags", {}) if isinstance(data, dict) else None
    values = data.get("flagValues", {}) if isinstance(data, dict) else None
    if not isinstance(flags, dict) or not isinstance(values, dict):
        return f'flag file {path} is not LaunchDarkly flag data (an object with "flags" or "flagValues")', "", ""
    keys = set(flags) | set(values)
    ours = [config.flags.key_for(s) for s in config.services]
    found = [k for k in ours if k in keys]
    summary = (
        f"flag file {path}: valid JSON, {len(keys)} flag(s), route flags for {len(found)} of {len(ours)} service(s)"
    )
    bad = [k for k in found if k in flags and _rollout_without_kind(flags[k])]
    warning = (
        f'{", ".join(bad)}: a rollout without "contextKind": "service" (every caller lands in the same bucket)'
        if bad
        else ""
    )
    return "", summary, warning


def flag_source_problem(config: MeshConfig, mesh: Mesh, said: list[str] | None = None) -> str:
    """Why ``mesh``'s flag source did not load, in a few words ('' when it loaded, or when the
    registry has none); ``said`` holds the SDK's error messages from :func:`quiet_flag_logs`."""
    flags = config.flags
    if flags.source == "none":
        return ""
    if flags.source == "launchdarkly" and not os.environ.get(flags.sdk_key_env):
        return f"flags.source is 'launchdarkly' but ${flags.sdk_key_env} is empty"
    client = mesh.flag_client
    if client is not None and client.is_initialized():
        return ""
    if flags.source == "file":
        problem = _read_flag_file(config)[0]
        if problem:
            return problem
    where = f"flag file {flags.path}" if flags.source == "file" else "LaunchDarkly"
    text = f"the LaunchDarkly client did not initialise from {where} within flags.start_wait ({flags.start_wait:g} s)"
    return text + (f" ({said[0]})" if said else "")


def _failed_note(svc: ServiceConfig, route: Route, failed: set[str]) -> str:
    """Which failed checks stand in the way of ``svc``'s calls on ``route``."""
    if route is Route.ENVOY:
        needed = ["envoy egress", f"envoy vhost {svc.name}", "envoy headers"]
        if svc.protocol == "thrift":
            needed = ["envoy thrift"]
    else:
        needed = [f"haproxy {svc.name}"]
    hit = [n for n in needed if n in failed]
    return f" (but {' and '.join(hit)} failed above)" if hit else ""


ROLLOUT_FIX: Final = 'add "contextKind": "service" to the rollout (mesh_client.routing.rollout_flag writes it)'


def _haproxy_error_page(status: int, headers: Mapping[str, str]) -> int:
    return 1024 if haproxy.may_be_local_reply(status, headers) else 0


def _rollout_without_kind(flag: object) -> bool:
    if not isinstance(flag, dict):
        return False
    rollouts = [flag.get("fallthrough", {}).get("rollout")]
    rollouts += [rule.get("rollout") for rule in flag.get("rules", []) if isinstance(rule, dict)]
    return any(isinstance(r, dict) and r.get("contextKind") != "service" for r in rollouts)


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ldclient") and record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_flag_logs() -> Iterator[list[str]]:
    """Doctor reports flag trouble itself: keep the library's and the SDK's log lines (and the
    tracebacks the SDK prints) out of its output; yields the SDK's error messages."""
    handler = _Captured()
    saved = []
    for name in ("mesh_client", "ldclient"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.propagate = False
        if lg.level == logging.NOTSET or lg.level > logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield handler.messages
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


def diagnose(
    registry: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    path: str = "/",
    emit: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check on the registry at ``registry``; ``emit`` sees each result as it is made."""
    doctor = _Doctor(str(registry), timeout, path, emit or (lambda check: None))
    return doctor.run()


# -- the command ---------------------------------------------------------------------------------


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, got {text!r}")
    if value > MAX_SECONDS:  # what the library accepts (sockets refuse far less than infinity)
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS} seconds (a day), got {text!r}")
    return value


def _probe_path(text: str) -> str:
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be a path starting with '/' and without spaces, got {text!r}")
    return text


DESCRIPTION = """\
Checks that this machine's mesh matches the registry: the registry loads; Envoy's admin
endpoint answers (with mesh.envoy_admin); Envoy's HTTP egress accepts connections; every HTTP
service's virtual host routes (GET --path with Host: envoy_host); Envoy honours the client's
x-envoy-* headers (the listener config from /config_dump, and probes through Envoy); which
settings that make Envoy report attempts are missing (include_attempt_count_in_response,
include_request_attempt_count); Envoy's Thrift listener accepts connections (with Thrift
services); every service's HAProxy port accepts connections; the flag source loads; and what
each service routes to now.
One line per check: OK, WARN, FAIL or SKIP (not checked because a check it needs failed),
and the fix when it is not OK.
"""

EPILOG = """\
the header probes send GET --path to one HTTP service through Envoy (up to 3 times with a 1 ms
timeout; twice when Envoy reports attempt counts, to ask for one retry): use a path that is
cheap and safe to call.

exit codes:
  0    no check failed (warnings allowed)
  1    at least one check failed (an invalid registry is a failed check)
  2    bad arguments
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``doctor`` on the ``mesh-client`` sub-command parsers."""
    p = subparsers.add_parser(
        "doctor",
        help="check that Envoy, HAProxy and the flags on this machine match a registry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("registry", metavar="MESH.toml", help="the registry TOML file")
    p.add_argument(
        "--timeout",
        type=seconds_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds each network step may take (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--path",
        type=_probe_path,
        default="/",
        help="the path to GET through Envoy and HAProxy (default /); it must be safe to call",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``mesh-client doctor``: print one line per check and a summary; 1 if any check failed."""
    stream = out or sys.stdout

    def emit(check: Check) -> None:
        print(check.line(), file=stream, flush=True)

    print(f"mesh-client doctor {args.registry} (timeout {args.timeout:g} s per step)", file=stream, flush=True)
    checks = diagnose(args.registry, timeout=args.timeout, path=args.path, emit=emit)
    counts = {v: sum(c.verdict == v for c in checks) for v in ("OK", "WARN", "FAIL", "SKIP")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n or v != "SKIP")
    code = exit_code(checks)
    verdict = "FAILED" if code else "healthy" if not counts["WARN"] else "working, with warnings"
    noun = "check" if len(checks) == 1 else "checks"
    print(f"{len(checks)} {noun}: {summary}: {verdict}", file=stream, flush=True)
    return code
