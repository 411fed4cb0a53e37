"""The sidecar configs a registry implies."""

from __future__ import annotations

from typing import Any

import pytest

from mesh_client import ConfigError
from mesh_client.registry import load_mapping
from mesh_client.sidecar.render import envoy_bootstrap, haproxy_config

REGISTRY: dict[str, Any] = {
    "mesh": {
        "caller": "checkout",
        "envoy_http": "127.0.0.1:9001",
        "envoy_thrift": "127.0.0.1:9002",
        "envoy_admin": "127.0.0.1:9901",
    },
    "services": {
        "users": {"haproxy": "127.0.0.1:20001", "endpoints": ["127.0.0.1:8081"], "timeout": 2.5},
        "users-thrift": {"protocol": "thrift", "haproxy": "127.0.0.1:20002", "endpoints": ["127.0.0.1:8082"]},
        "users-header": {"protocol": "thrift", "transport": "header", "haproxy": "127.0.0.1:20003"},
    },
}


def listeners(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return {
        ls["name"]: ls["filter_chains"][0]["filters"][0]["typed_config"]
        for ls in bootstrap["static_resources"]["listeners"]
    }


def test_thrift_listener_routes_framed_by_prefix_and_header_by_header() -> None:
    proxy = listeners(envoy_bootstrap(load_mapping(REGISTRY)))["egress_thrift"]
    assert proxy["transport"] == "AUTO_TRANSPORT"
    routes = proxy["route_config"]["routes"]
    assert routes[0] == {
        "match": {"service_name": "users-thrift"},
        "route": {"cluster": "users-thrift", "strip_service_name": True},
    }
    assert routes[1]["match"]["headers"] == [{"name": "x-mesh-service", "string_match": {"exact": "users-header"}}]


def test_thrift_clusters_speak_the_service_framing() -> None:
    clusters = {c["name"]: c for c in envoy_bootstrap(load_mapping(REGISTRY))["static_resources"]["clusters"]}
    options = clusters["users-header"]["typed_extension_protocol_options"]["envoy.filters.network.thrift_proxy"]
    assert options["transport"] == "HEADER"
    assert "typed_extension_protocol_options" not in clusters["users"]
    assert clusters["users-header"]["load_assignment"]["endpoints"] == [{"lb_endpoints": []}]


def test_http_route_timeout_is_the_registry_timeout() -> None:
    hcm = listeners(envoy_bootstrap(load_mapping(REGISTRY)))["egress_http"]
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    assert vhost["routes"][0]["route"]["timeout"] == "2.5s"
    assert vhost["include_attempt_count_in_response"] is True


def test_custom_header_prefix_reaches_the_bootstrap() -> None:
    data = {**REGISTRY, "mesh": {**REGISTRY["mesh"], "header_prefix": "x-foo"}}
    assert envoy_bootstrap(load_mapping(data))["header_prefix"] == "x-foo"


def test_haproxy_thrift_services_are_tcp() -> None:
    text = haproxy_config(load_mapping(REGISTRY))
    assert "listen users-thrift\n    mode tcp\n    bind 127.0.0.1:20002" in text


def test_admin_address_is_needed_to_render_envoy() -> None:
    data = {**REGISTRY, "mesh": {k: v for k, v in REGISTRY["mesh"].items() if k != "envoy_admin"}}
    with pytest.raises(ConfigError, match=r"mesh\.envoy_admin"):
        envoy_bootstrap(load_mapping(data))
