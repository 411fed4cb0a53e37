"""``[services.NAME.shadow]``: defaults, values and every documented error (docs/registry.md)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

from mesh_client import ConfigError
from mesh_client.registry import load_mapping
from mesh_client.shadow.config import DEFAULT_SHADOW, ShadowConfig


def registry(shadow: Any = None, *, protocol: str = "http") -> dict[str, Any]:
    service: dict[str, Any] = {"haproxy": "127.0.0.1:20001"}
    if protocol != "http":
        service["protocol"] = protocol
    if shadow is not None:
        service["shadow"] = shadow
    return {
        "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001", "envoy_thrift": "127.0.0.1:9002"},
        "services": {"users": service},
    }


def test_defaults() -> None:
    config = load_mapping(registry()).service("users").shadow
    assert config == DEFAULT_SHADOW == ShadowConfig(sample=0.1, max_in_flight=4, ignore_json=(), compare_headers=())


def test_every_key() -> None:
    table = {
        "sample": 1,
        "max_in_flight": 16,
        "ignore_json": ["generated_at", "items[].etag", "generated_at"],
        "compare_headers": ["ETag", "cache-control"],
    }
    config = load_mapping(registry(table)).service("users").shadow
    assert config.sample == 1.0
    assert isinstance(config.sample, float)
    assert config.max_in_flight == 16
    assert config.ignore_json == ("generated_at", "items[].etag")  # duplicates dropped
    assert config.compare_headers == ("etag", "cache-control")  # lower-cased


def test_the_registry_with_shadow_settings_pickles_and_compares_equal() -> None:
    config = load_mapping(registry({"sample": 0.5, "ignore_json": ["a"]}))
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize(
    ("shadow", "key", "message"),
    [
        ("on", "services.users.shadow", "must be a table, got 'on'"),
        (
            {"samples": 1},
            "services.users.shadow.samples",
            "unknown key (known keys: compare_headers, ignore_json, max_in_flight, sample)",
        ),
        (
            {"sample": 1.5},
            "services.users.shadow.sample",
            "must be a number from 0 to 1 (the share of calls copied), got 1.5",
        ),
        ({"sample": -0.1}, "services.users.shadow.sample", "must be a number from 0 to 1"),
        ({"sample": math.nan}, "services.users.shadow.sample", "must be a number from 0 to 1"),
        ({"sample": "10%"}, "services.users.shadow.sample", "must be a number from 0 to 1"),
        ({"sample": True}, "services.users.shadow.sample", "must be a number from 0 to 1"),
        ({"max_in_flight": 0}, "services.users.shadow.max_in_flight", "must be a whole number from 1 to 1024, got 0"),
        ({"max_in_flight": 2.5}, "services.users.shadow.max_in_flight", "must be a whole number from 1 to 1024"),
        ({"max_in_flight": 5000}, "services.users.shadow.max_in_flight", "must be a whole number from 1 to 1024"),
        (
            {"ignore_json": "generated_at"},
            "services.users.shadow.ignore_json",
            "must be a list of JSON paths like 'generated_at' or 'items[].etag', got 'generated_at'",
        ),
        (
            {"ignore_json": ["items[.etag"]},
            "services.users.shadow.ignore_json",
            "'items[.etag' is not a JSON path (member names joined by '.', '[]' after a name for every item of a "
            "list, e.g. 'items[].etag')",
        ),
        ({"ignore_json": [1]}, "services.users.shadow.ignore_json", "1 is not a JSON path"),
        ({"compare_headers": "etag"}, "services.users.shadow.compare_headers", "must be a list of header names"),
        ({"compare_headers": ["e tag"]}, "services.users.shadow.compare_headers", "'e tag' is not a header name"),
    ],
)
def test_errors_name_the_key(shadow: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_mapping(registry(shadow), source="mesh.toml")
    assert caught.value.key == key
    assert message in str(caught.value)
    assert "mesh.toml" in str(caught.value)


@pytest.mark.parametrize("key", ["ignore_json", "compare_headers"])
def test_http_only_keys_on_a_thrift_service(key: str) -> None:
    message = f"services.users.shadow.{key}: only applies to services with protocol 'http'"
    with pytest.raises(ConfigError, match=message):
        load_mapping(registry({key: []}, protocol="thrift"))
    # sample and max_in_flight apply to Thrift services too
    assert load_mapping(registry({"sample": 1.0}, protocol="thrift")).service("users").shadow.sample == 1.0
