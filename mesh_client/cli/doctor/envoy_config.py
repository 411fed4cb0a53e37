"""Reading Envoy's running config from its admin endpoint (``/server_info``, ``/config_dump``)
and finding in it what the checks need: the egress listener, its HTTP connection managers, their
route configurations and virtual hosts. Apart from the two readers, pure functions over JSON."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ...envoy import DEFAULT_PREFIX
from ...registry import Address, MeshConfig
from .network import get

__all__ = [
    "Admin",
    "covers",
    "domains",
    "egress_listener",
    "hcm_problems",
    "hcms",
    "listener_at",
    "listeners",
    "read_config",
    "read_server_info",
    "route_config_of",
    "route_configs",
    "socket_address",
    "suppresses_envoy_headers",
    "virtual_host_for",
]

_HCM_NAME: Final = "envoy.filters.network.http_connection_manager"
_MAX_ADMIN_BODY: Final = 64 * 1024 * 1024


@dataclass
class Admin:
    """What the admin endpoint told (``error`` set when the listener config could not be read)."""

    version: str = ""
    listeners: list[dict[str, Any]] = field(default_factory=list)
    #: route configurations that came over RDS, by name (inline ones are in the listeners)
    route_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    header_prefix: str | None = None
    error: str = ""


def _admin_json(address: Address, path: str, timeout: float) -> Any:
    reply = get(address, path, timeout, body_limit=_MAX_ADMIN_BODY)
    if reply.status != 200:
        raise ValueError(f"GET {path} answered {reply.status} {reply.reason}")
    try:
        return json.loads(reply.body or b"")
    except ValueError as exc:
        raise ValueError(f"GET {path} did not answer JSON ({exc})") from None


def read_server_info(admin: Admin, address: Address, timeout: float) -> str:
    """Envoy's version into ``admin``; returns its state (``LIVE``...). Raises ``OSError``,
    ``ValueError`` (an answer that is not 200 JSON) or ``HTTPException``."""
    info = _admin_json(address, "/server_info", timeout)
    info = info if isinstance(info, dict) else {}
    version = str(info.get("version", "?"))
    admin.version = version.split("/")[1] if version.count("/") >= 2 else version
    return str(info.get("state", "?"))


def read_config(admin: Admin, address: Address, timeout: float) -> None:
    """The listeners, the RDS route configurations and the bootstrap's ``header_prefix`` into
    ``admin``; raises as :func:`read_server_info`, keeping what was read until then."""
    for resource in ("static_listeners", "dynamic_listeners"):
        admin.listeners += listeners(_admin_json(address, f"/config_dump?resource={resource}", timeout))
    if any("rds" in hcm for listener in admin.listeners for hcm in hcms(listener)):
        dump = _admin_json(address, "/config_dump?resource=dynamic_route_configs", timeout)
        admin.route_configs = route_configs(dump)
    bootstrap = _admin_json(address, "/config_dump?mask=bootstrap.header_prefix", timeout)
    for entry in bootstrap.get("configs", []) if isinstance(bootstrap, dict) else []:
        prefix = entry.get("bootstrap", {}).get("header_prefix") if isinstance(entry, dict) else None
        admin.header_prefix = str(prefix) if prefix else DEFAULT_PREFIX


def listeners(dump: Any) -> list[dict[str, Any]]:
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


def socket_address(listener: Mapping[str, Any]) -> tuple[str, int] | None:
    """The (host, port) a listener binds, or None when its config names no port."""
    sock = listener.get("address", {}).get("socket_address", {})
    if not isinstance(sock, dict) or "port_value" not in sock:
        return None
    return str(sock.get("address", "")), int(sock["port_value"])


def listener_at(found: list[dict[str, Any]], address: Address, ip: str) -> dict[str, Any] | None:
    """The listener bound to ``address`` (by name, resolved ``ip`` or a wildcard), or None."""
    for listener in found:
        bound = socket_address(listener)
        if bound is None or bound[1] != address.port:
            continue
        if bound[0] in (address.host, ip, "0.0.0.0", "::"):
            return listener
    return None


def egress_listener(admin: Admin | None, config: MeshConfig, ip: str) -> dict[str, Any] | None:
    """The listener at ``mesh.envoy_http`` in the config ``admin`` read (None when it was not read)."""
    if admin is None or admin.error:
        return None
    return listener_at(admin.listeners, config.envoy_http, ip)


def hcms(listener: Mapping[str, Any]) -> list[dict[str, Any]]:
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


def covers(ranges: object, ip: str) -> bool:
    """Whether ``cidr_ranges`` (as in ``internal_address_config``) hold ``ip``."""
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


def hcm_problems(hcm: Mapping[str, Any], ips: list[str]) -> list[str]:
    """Why Envoy would not treat requests from ``ips`` as internal (and so remove the client's
    ``x-envoy-*`` headers), one phrase each; empty when it would."""
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
            if not covers(ranges, ip):
                problems.append(f"internal_address_config does not cover {ip} (cidr_ranges: {shown or 'none'})")
    return problems


def domains(listener: Mapping[str, Any] | None) -> str:
    """Envoy's virtual host domains on the egress listener, for a ``no_route`` explanation."""
    if listener is None:
        return ""
    found: list[str] = []
    for hcm in hcms(listener):
        if "rds" in hcm:
            return f"; routes come from RDS ({hcm['rds'].get('route_config_name', '?')})"
        for vhost in hcm.get("route_config", {}).get("virtual_hosts", []):
            found += [str(d) for d in vhost.get("domains", [])]
    return f"; Envoy's domains: {', '.join(found)}" if found else ""


def route_configs(dump: Any) -> dict[str, dict[str, Any]]:
    """The route configurations of a ``/config_dump?resource=dynamic_route_configs`` answer, by name."""
    found: dict[str, dict[str, Any]] = {}
    configs = dump.get("configs", []) if isinstance(dump, dict) else []
    for entry in configs if isinstance(configs, list) else []:
        route_config = entry.get("route_config") if isinstance(entry, dict) else None
        if isinstance(route_config, dict):
            found[str(route_config.get("name", ""))] = route_config
    return found


def virtual_host_for(route_config: Mapping[str, Any], host: str) -> dict[str, Any] | None:
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


def route_config_of(hcm: Mapping[str, Any], admin: Admin) -> dict[str, Any] | None:
    """An HTTP connection manager's route configuration: inline, or the one it names over RDS."""
    route_config = hcm.get("route_config")
    if route_config is None and isinstance(hcm.get("rds"), dict):
        route_config = admin.route_configs.get(str(hcm["rds"].get("route_config_name", "")))
    return route_config if isinstance(route_config, dict) else None


def suppresses_envoy_headers(hcm: Mapping[str, Any]) -> bool:
    """Whether the connection manager's router filter sets ``suppress_envoy_headers``."""
    for flt in hcm.get("http_filters", []):
        typed = flt.get("typed_config", {}) if isinstance(flt, dict) else {}
        router = flt.get("name") == "envoy.filters.http.router" or str(typed.get("@type", "")).endswith(".Router")
        if router and isinstance(typed, dict) and typed.get("suppress_envoy_headers") is True:
            return True
    return False
