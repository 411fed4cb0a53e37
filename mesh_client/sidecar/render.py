"""Render the sidecar configs a registry implies.

- :func:`envoy_bootstrap`: an Envoy bootstrap with the egress HTTP listener at ``mesh.envoy_http``
  (one virtual host per HTTP service, matched on its ``envoy_host`` with or without a port) and
  one cluster per service built from ``endpoints``; each variant of a service gets its own cluster
  (``users:canary``) and a route matching ``x-mesh-variant: canary`` ahead of the service's own.
  The listener sets ``use_remote_address`` and ``internal_address_config`` for loopback: without
  them Envoy ignores every ``x-envoy-*`` header the client sends.
- :func:`haproxy_config`: SmartStack-style HAProxy: one local port per service, ``mode http``
  for HTTP services and ``mode tcp`` for Thrift services; one more per variant with a ``haproxy``
  port.
"""

from __future__ import annotations

import json
from typing import Any

from ..context import MESH_SERVICE_HEADER
from ..errors import ConfigError
from ..overrides import VARIANT_HEADER
from ..registry import Address, MeshConfig, ServiceConfig
from ..variants import framed_service_name, variant_cluster

__all__ = ["envoy_bootstrap", "envoy_bootstrap_json", "haproxy_config"]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_THRIFT = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.ThriftProxy"
_THRIFT_OPTIONS = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.ThriftProtocolOptions"
_THRIFT_ROUTER = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.router.v3.Router"

#: Envoy's connect timeout to an upstream instance.
CONNECT_TIMEOUT = "0.25s"


def _socket(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def _cluster(svc: ServiceConfig, name: str = "", endpoints: tuple[Address, ...] | None = None) -> dict[str, Any]:
    """The cluster of ``svc`` (or of one of its variants: ``name`` and ``endpoints``)."""
    name = name or svc.name
    addresses = svc.endpoints if endpoints is None else endpoints
    static = all(a.is_ip for a in addresses)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": CONNECT_TIMEOUT,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(a)}} for a in addresses]}],
        },
    }
    if svc.protocol == "thrift":
        # the instances speak the service's own framing (HAProxy passes it through unchanged)
        options = {"@type": _THRIFT_OPTIONS, "transport": svc.transport.upper(), "protocol": "BINARY"}
        cluster["typed_extension_protocol_options"] = {"envoy.filters.network.thrift_proxy": options}
    return cluster


def _clusters(svc: ServiceConfig) -> list[dict[str, Any]]:
    """The service's cluster, then one per variant (``users:canary``)."""
    variants = [_cluster(svc, variant_cluster(svc.name, v.name), v.endpoints) for v in svc.variants.values()]
    return [_cluster(svc), *variants]


def _variant_match(name: str) -> dict[str, Any]:
    return {"name": VARIANT_HEADER, "string_match": {"exact": name}}


def _thrift_routes(svc: ServiceConfig) -> list[dict[str, Any]]:
    """The service's routes: one per variant first, then its own."""
    routes = []
    if svc.transport == "header":
        # THeader calls name their service in a header; the server sees the plain method name
        header = {"name": MESH_SERVICE_HEADER, "string_match": {"exact": svc.name}}
        for v in svc.variants.values():
            match = {"method_name": "", "headers": [header, _variant_match(v.name)]}
            routes.append({"match": match, "route": {"cluster": variant_cluster(svc.name, v.name)}})
        return [*routes, {"match": {"method_name": "", "headers": [header]}, "route": {"cluster": svc.name}}]
    # framed calls carry "<service>:<method>" ("<service>~<variant>:<method>" for a variant);
    # Envoy strips the prefix before the server sees it
    for v in svc.variants.values():
        cluster = variant_cluster(svc.name, v.name)
        match = {"service_name": framed_service_name(svc.name, v.name)}
        routes.append({"match": match, "route": {"cluster": cluster, "strip_service_name": True}})
    return [*routes, {"match": {"service_name": svc.name}, "route": {"cluster": svc.name, "strip_service_name": True}}]


def _thrift_listener(config: MeshConfig, services: list[ServiceConfig]) -> dict[str, Any]:
    assert config.envoy_thrift is not None
    proxy = {
        "@type": _THRIFT,
        "stat_prefix": "egress_thrift",
        "transport": "AUTO_TRANSPORT",  # framed and THeader callers on one port
        "protocol": "BINARY",
        "route_config": {"name": "mesh_thrift", "routes": [r for s in services for r in _thrift_routes(s)]},
        "thrift_filters": [{"name": "envoy.filters.thrift.router", "typed_config": {"@type": _THRIFT_ROUTER}}],
    }
    return {
        "name": "egress_thrift",
        "address": _socket(config.envoy_thrift),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.thrift_proxy", "typed_config": proxy}]}],
    }


def _virtual_host(svc: ServiceConfig) -> dict[str, Any]:
    # the route's own timeout serves callers that send no x-envoy-upstream-rq-timeout-ms
    timeout = f"{svc.policy.timeout:g}s"
    # a call to a variant carries x-mesh-variant: matched before the service's default route
    variants = [
        {
            "match": {"prefix": "/", "headers": [_variant_match(v.name)]},
            "route": {"cluster": variant_cluster(svc.name, v.name), "timeout": timeout},
        }
        for v in svc.variants.values()
    ]
    return {
        "name": svc.name,
        "domains": [svc.envoy_host, f"{svc.envoy_host}:*"],
        "include_request_attempt_count": True,
        "include_attempt_count_in_response": True,
        "routes": [*variants, {"match": {"prefix": "/"}, "route": {"cluster": svc.name, "timeout": timeout}}],
    }


def envoy_bootstrap(config: MeshConfig) -> dict[str, Any]:
    """The Envoy bootstrap (as a dict): the HTTP egress listener and, when the registry has Thrift
    services, the Thrift egress listener at ``mesh.envoy_thrift``."""
    if config.envoy_admin is None:
        raise ConfigError("is required to render an Envoy bootstrap", key="mesh.envoy_admin", source=config.source)
    http = [svc for svc in config.services.values() if svc.protocol == "http"]
    thrift = [svc for svc in config.services.values() if svc.protocol == "thrift"]
    hcm = {
        "@type": _HCM,
        "stat_prefix": "egress_http",
        # Both are needed for Envoy to honour the client's x-envoy-* headers: the peer address
        # decides, and since Envoy 1.36 no address is internal unless listed here.
        "use_remote_address": True,
        "internal_address_config": {
            "cidr_ranges": [
                {"address_prefix": "127.0.0.0", "prefix_len": 8},
                {"address_prefix": "::1", "prefix_len": 128},
            ]
        },
        "route_config": {"name": "mesh_egress", "virtual_hosts": [_virtual_host(s) for s in http]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    bootstrap: dict[str, Any] = {
        "admin": {"address": _socket(config.envoy_admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "egress_http",
                    "address": _socket(config.envoy_http),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [c for s in [*http, *thrift] for c in _clusters(s)],
        },
    }
    if thrift:
        bootstrap["static_resources"]["listeners"].append(_thrift_listener(config, thrift))
    if config.header_prefix != "x-envoy":
        bootstrap["header_prefix"] = config.header_prefix
    return bootstrap


def envoy_bootstrap_json(config: MeshConfig) -> str:
    """:func:`envoy_bootstrap` as JSON (Envoy reads JSON bootstraps as YAML)."""
    return json.dumps(envoy_bootstrap(config), indent=2) + "\n"


def haproxy_config(config: MeshConfig) -> str:
    """A SmartStack-style HAProxy config: one local port per service."""
    lines = [
        f"# SmartStack-style HAProxy for caller {config.caller!r}, rendered by mesh_client from {config.source}",
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 250ms",
        "    timeout client 30s",
        "    timeout server 30s",
        "    retries 1",
    ]
    for svc in config.services.values():
        lines += _haproxy_proxies(svc, svc.name, svc.haproxy, svc.endpoints)
        for v in svc.variants.values():
            if v.haproxy is not None:  # (a variant without a port is reached via Envoy)
                lines += _haproxy_proxies(svc, variant_cluster(svc.name, v.name), v.haproxy, v.endpoints)
    return "\n".join(lines) + "\n"


def _haproxy_proxies(svc: ServiceConfig, name: str, bind: Address, endpoints: tuple[Address, ...]) -> list[str]:
    """The HAProxy sections of ``svc`` (or of one of its variants: ``name``, ``bind``, ``endpoints``)."""
    servers = [f"    server {name}-{i} {a}" for i, a in enumerate(endpoints, 1)]
    if svc.protocol == "thrift":
        return ["", f"listen {name}", "    mode tcp", f"    bind {bind}", *servers]
    return ["", f"frontend {name}", f"    bind {bind}", f"    default_backend {name}", "", f"backend {name}", *servers]
