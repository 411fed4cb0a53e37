"""The mesh registry: loading, documented defaults and every documented error.

``Mesh.from_dict`` / ``Mesh.from_file`` start a flag client, so these tests go through the
validation layer they use, ``mesh_client.registry.load_mapping`` and ``load_file``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mesh_client
from mesh_client import ConfigError, Mesh, MeshError, Route
from mesh_client.errors import InvalidServiceURL, UnknownService
from mesh_client.registry import Address, MeshConfig, load_file, load_mapping

FULL_REGISTRY = """\
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:9001"
envoy_thrift = "127.0.0.1:9002"
envoy_admin = "[::1]:9901"
default_route = "envoy"
failover = false
header_prefix = "x-foo"

[flags]
source = "file"
path = "flags.json"
sdk_key_env = "MY_LD_KEY"
flag_key = "route-{service}-v2"

[services.users]
protocol = "http"
haproxy = "127.0.0.1:20001"
envoy_host = "users.internal"
timeout = 2.5
per_try_timeout = 0.3
retries = 2
retry_on = ["connect-failure", "refused-stream", "gateway-error"]
idempotent_methods = ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]
endpoints = ["127.0.0.1:8081", "localhost:8082"]

[services.users-thrift]
protocol = "thrift"
haproxy = "127.0.0.1:20002"
transport = "header"
timeout = 0.5
idempotent_methods = ["get"]
"""

MINIMAL: dict[str, Any] = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001"},
    "services": {"users": {"haproxy": "127.0.0.1:20001"}},
}


def _toml_value(value: object) -> str:
    """``value`` as TOML (inline tables for dicts); enough for the registries in this file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _to_toml(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {_toml_value(value)}\n" for key, value in data.items())


DELETE = object()


def _with(base: dict[str, Any], changes: dict[tuple[str, ...], object]) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted path set to a value (or removed with DELETE)."""
    data = copy.deepcopy(base)
    for path, value in changes.items():
        table = data
        for part in path[:-1]:
            table = table.setdefault(part, {})
        if value is DELETE:
            del table[path[-1]]
        else:
            table[path[-1]] = copy.deepcopy(value)
    return data


Load = Callable[[dict[str, Any]], MeshConfig]


@pytest.fixture(params=["load_mapping", "load_file"])
def loader(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Load, str]:
    """A way to load registry data, and the source name its errors must mention."""
    if request.param == "load_mapping":
        source = "registry-under-test.toml"

        def load_dict(data: dict[str, Any]) -> MeshConfig:
            return load_mapping(data, source=source)

        return load_dict, source

    path = tmp_path / "mesh.toml"

    def load_toml(data: dict[str, Any]) -> MeshConfig:
        path.write_text(_to_toml(data), encoding="utf-8")
        return load_file(path)

    return load_toml, str(path)


# ---------------------------------------------------------------------------------------------
# Valid registries


def test_full_registry_loads_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "conf" / "mesh.toml"
    path.parent.mkdir()
    path.write_text(FULL_REGISTRY, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load_file(path)

    assert cfg.source == str(path)
    assert cfg.caller == "checkout"
    assert cfg.envoy_http == Address("127.0.0.1", 9001)
    assert cfg.envoy_thrift == Address("127.0.0.1", 9002)
    assert cfg.envoy_admin == Address("::1", 9901)
    assert str(cfg.envoy_admin) == "[::1]:9901"
    assert cfg.default_route is Route.ENVOY
    assert cfg.failover is False
    assert cfg.header_prefix == "x-foo"

    assert cfg.flags.source == "file"
    assert cfg.flags.path == tmp_path.resolve() / "conf" / "flags.json"
    assert cfg.flags.sdk_key_env == "MY_LD_KEY"
    assert cfg.flags.flag_key == "route-{service}-v2"
    assert cfg.flags.key_for("users") == "route-users-v2"

    assert set(cfg.services) == {"users", "users-thrift"}
    users = cfg.service("users")
    assert users.name == "users"
    assert users.protocol == "http"
    assert users.haproxy == Address("127.0.0.1", 20001)
    assert users.envoy_host == "users.internal"
    assert users.endpoints == (Address("127.0.0.1", 8081), Address("localhost", 8082))
    assert users.policy.timeout == 2.5
    assert users.policy.per_try_timeout == 0.3
    assert users.policy.retries == 2
    assert users.policy.retry_on == ("connect-failure", "refused-stream", "gateway-error")
    assert users.policy.idempotent_methods == {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}

    thrift = cfg.service("users-thrift")
    assert thrift.protocol == "thrift"
    assert thrift.haproxy == Address("127.0.0.1", 20002)
    assert thrift.transport == "header"
    assert thrift.policy.timeout == 0.5
    assert thrift.policy.idempotent_methods == {"get"}


def test_every_documented_default_is_applied() -> None:
    data = _with(
        MINIMAL,
        {
            ("mesh", "envoy_thrift"): "127.0.0.1:9002",
            ("services", "users-thrift"): {"protocol": "thrift", "haproxy": "127.0.0.1:20002"},
        },
    )

    cfg = load_mapping(data, source="defaults.toml")

    assert cfg.source == "defaults.toml"
    assert cfg.envoy_admin is None
    assert cfg.default_route is Route.HAPROXY
    assert cfg.failover is True
    assert cfg.header_prefix == "x-envoy"
    assert cfg.flags.source == "none"
    assert cfg.flags.flag_key == "mesh-route-{service}"
    assert cfg.flags.key_for("users") == "mesh-route-users"
    assert cfg.flags.sdk_key_env == "LD_SDK_KEY"

    users = cfg.service("users")
    assert users.protocol == "http"
    assert users.envoy_host == "users"
    assert users.endpoints == ()
    assert users.policy.timeout == 1.0
    assert users.policy.per_try_timeout is None
    assert users.policy.retries == 1
    assert users.policy.retry_on == ("connect-failure", "refused-stream", "reset-before-request")
    assert users.policy.retriable_status_codes == ()
    assert users.policy.idempotent_methods == {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}

    thrift = cfg.service("users-thrift")
    assert thrift.envoy_host == "users-thrift"
    assert thrift.transport == "framed"
    assert thrift.policy.timeout == 1.0
    assert thrift.policy.retries == 1
    assert thrift.policy.retry_on == ("connect-failure", "refused-stream", "reset-before-request")
    assert thrift.policy.idempotent_methods == frozenset()


def test_flags_table_without_keys_uses_the_defaults() -> None:
    cfg = load_mapping(_with(MINIMAL, {("flags",): {}}))

    assert cfg.flags.source == "none"
    assert cfg.flags.flag_key == "mesh-route-{service}"
    assert cfg.flags.sdk_key_env == "LD_SDK_KEY"


def test_launchdarkly_flags_need_no_path() -> None:
    cfg = load_mapping(_with(MINIMAL, {("flags",): {"source": "launchdarkly"}}))

    assert cfg.flags.source == "launchdarkly"
    assert cfg.flags.sdk_key_env == "LD_SDK_KEY"


def test_flags_path_is_relative_to_the_toml_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "deploy" / "mesh.toml"
    registry.parent.mkdir()
    registry.write_text(_to_toml(_with(MINIMAL, {("flags",): {"source": "file", "path": "data/flags.json"}})))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    cfg = load_file(registry)

    assert cfg.flags.path == tmp_path.resolve() / "deploy" / "data" / "flags.json"


def test_absolute_flags_path_is_kept(tmp_path: Path) -> None:
    flags = tmp_path / "abs" / "flags.json"
    registry = tmp_path / "mesh.toml"
    registry.write_text(_to_toml(_with(MINIMAL, {("flags",): {"source": "file", "path": str(flags)}})))

    assert load_file(registry).flags.path == flags


def test_load_file_accepts_a_string_path(tmp_path: Path) -> None:
    registry = tmp_path / "mesh.toml"
    registry.write_text(_to_toml(MINIMAL))

    cfg = load_file(str(registry))

    assert cfg.source == str(registry)
    assert cfg.service("users").haproxy == Address("127.0.0.1", 20001)


def test_base_registry_of_the_error_cases_is_valid(loader: tuple[Load, str]) -> None:
    load, source = loader

    cfg = load(MINIMAL)

    assert cfg.source == source
    assert set(cfg.services) == {"users"}


def test_unknown_service_lookup_names_the_registry() -> None:
    cfg = load_mapping(MINIMAL, source="named.toml")

    with pytest.raises(KeyError, match=r"orders.*named\.toml") as raised:
        cfg.service("orders")
    # a MeshError too (every error mesh_client raises is one), with a plain message, that pickles
    assert isinstance(raised.value, UnknownService)
    assert isinstance(raised.value, MeshError)
    assert str(raised.value) == "no service 'orders' in the registry named.toml (services: users)"
    again = pickle.loads(pickle.dumps(raised.value))
    assert type(again) is UnknownService
    assert str(again) == str(raised.value)


def test_a_mesh_names_an_unknown_service_with_the_same_error() -> None:
    with Mesh(load_mapping(MINIMAL, source="named.toml")) as mesh:
        for call in (lambda: mesh.route_for("orders"), lambda: mesh.shadow_stats("orders")):
            with pytest.raises(UnknownService, match="no service 'orders'"):
                call()
        with pytest.raises(InvalidServiceURL, match="service 'users' has protocol 'http'; use the HTTP clients"):
            mesh.thrift_client(object(), "users")


def test_the_protocol_type_no_longer_shadows_typing_protocol() -> None:
    from mesh_client import registry

    assert registry.ServiceProtocol is registry.Protocol  # (kept as a deprecated alias)
    assert registry.ServiceConfig.__annotations__["protocol"] == "ServiceProtocol"


# ---------------------------------------------------------------------------------------------
# Invalid registries

THRIFT_SERVICE = {"protocol": "thrift", "haproxy": "127.0.0.1:20002"}
WITH_THRIFT = {("mesh", "envoy_thrift"): "127.0.0.1:9002", ("services", "t"): THRIFT_SERVICE}


def _bad(changes: dict[tuple[str, ...], object], key: str, case_id: str) -> Any:
    return pytest.param(changes, key, id=case_id)


BAD_REGISTRIES = [
    # unknown keys, at every level
    _bad({("bogus",): 1}, "bogus", "unknown-top-level-key"),
    _bad({("mesh", "envoy"): "127.0.0.1:9001"}, "mesh.envoy", "unknown-mesh-key"),
    _bad({("flags",): {"source": "none", "sdk_key": "X"}}, "flags.sdk_key", "unknown-flags-key"),
    _bad({("services", "users", "timout"): 1.0}, "services.users.timout", "unknown-service-key"),
    # missing required keys
    _bad({("mesh",): DELETE}, "mesh", "missing-mesh-table"),
    _bad({("mesh", "caller"): DELETE}, "mesh.caller", "missing-caller"),
    _bad({("mesh", "envoy_http"): DELETE}, "mesh.envoy_http", "missing-envoy-http"),
    _bad({("services", "users", "haproxy"): DELETE}, "services.users.haproxy", "missing-haproxy"),
    _bad({("services", "t"): THRIFT_SERVICE}, "mesh.envoy_thrift", "missing-envoy-thrift-with-thrift-service"),
    _bad({("flags",): {"source": "file"}}, "flags.path", "missing-flags-path-for-file-source"),
    # wrong shapes
    _bad({("mesh",): "checkout"}, "mesh", "mesh-not-a-table"),
    _bad({("services",): ["users"]}, "services", "services-not-a-table"),
    _bad({("services", "users"): "127.0.0.1:20001"}, "services.users", "service-not-a-table"),
    _bad({("services", "Users"): {"haproxy": "127.0.0.1:20001"}}, "services.Users", "service-name-not-a-host-name"),
    _bad({("mesh", "caller"): ""}, "mesh.caller", "empty-caller"),
    # addresses
    _bad({("mesh", "envoy_http"): "127.0.0.1"}, "mesh.envoy_http", "address-without-port"),
    _bad({("mesh", "envoy_http"): "127.0.0.1:"}, "mesh.envoy_http", "address-with-empty-port"),
    _bad({("mesh", "envoy_http"): ":9001"}, "mesh.envoy_http", "address-without-host"),
    _bad({("mesh", "envoy_http"): "127.0.0.1:0"}, "mesh.envoy_http", "address-port-0"),
    _bad({("mesh", "envoy_http"): "127.0.0.1:70000"}, "mesh.envoy_http", "address-port-70000"),
    _bad({("mesh", "envoy_http"): "127.0.0.1:-1"}, "mesh.envoy_http", "address-negative-port"),
    _bad({("mesh", "envoy_http"): "127.0.0.1:http"}, "mesh.envoy_http", "address-named-port"),
    _bad({("mesh", "envoy_http"): "not a host!:9001"}, "mesh.envoy_http", "address-garbage-host"),
    _bad({("mesh", "envoy_http"): "-envoy:9001"}, "mesh.envoy_http", "address-host-starts-with-dash"),
    _bad({("mesh", "envoy_http"): "::1:9001"}, "mesh.envoy_http", "address-ipv6-without-brackets"),
    _bad({("mesh", "envoy_http"): "[::zz]:9001"}, "mesh.envoy_http", "address-bad-ipv6"),
    _bad({("mesh", "envoy_http"): 9001}, "mesh.envoy_http", "address-not-a-string"),
    _bad({("mesh", "envoy_http"): ["127.0.0.1", 9001]}, "mesh.envoy_http", "address-list"),
    _bad({("mesh", "envoy_admin"): "127.0.0.1:99999"}, "mesh.envoy_admin", "bad-envoy-admin"),
    _bad(
        {("mesh", "envoy_thrift"): "127.0.0.1", ("services", "t"): THRIFT_SERVICE},
        "mesh.envoy_thrift",
        "bad-envoy-thrift",
    ),
    _bad({("services", "users", "haproxy"): "127.0.0.1:0"}, "services.users.haproxy", "bad-haproxy"),
    _bad({("services", "users", "endpoints"): ["127.0.0.1"]}, "services.users.endpoints", "bad-endpoint"),
    _bad({("services", "users", "endpoints"): "127.0.0.1:8081"}, "services.users.endpoints", "endpoints-not-a-list"),
    # timeouts
    _bad({("services", "users", "timeout"): -1.0}, "services.users.timeout", "negative-timeout"),
    _bad({("services", "users", "timeout"): 0}, "services.users.timeout", "zero-timeout"),
    _bad({("services", "users", "timeout"): 0.0}, "services.users.timeout", "zero-float-timeout"),
    _bad({("services", "users", "timeout"): math.nan}, "services.users.timeout", "nan-timeout"),
    _bad({("services", "users", "timeout"): math.inf}, "services.users.timeout", "inf-timeout"),
    _bad({("services", "users", "timeout"): -math.inf}, "services.users.timeout", "minus-inf-timeout"),
    _bad({("services", "users", "timeout"): "1s"}, "services.users.timeout", "string-timeout"),
    _bad({("services", "users", "timeout"): True}, "services.users.timeout", "bool-timeout"),
    _bad({("services", "users", "per_try_timeout"): -0.1}, "services.users.per_try_timeout", "negative-per-try"),
    _bad({("services", "users", "per_try_timeout"): 0}, "services.users.per_try_timeout", "zero-per-try"),
    _bad({("services", "users", "per_try_timeout"): math.nan}, "services.users.per_try_timeout", "nan-per-try"),
    _bad({("services", "users", "per_try_timeout"): "0.3"}, "services.users.per_try_timeout", "string-per-try"),
    _bad(
        {("services", "users", "timeout"): 0.5, ("services", "users", "per_try_timeout"): 0.5},
        "services.users.per_try_timeout",
        "per-try-equal-to-timeout",
    ),
    _bad(
        {("services", "users", "timeout"): 0.5, ("services", "users", "per_try_timeout"): 0.8},
        "services.users.per_try_timeout",
        "per-try-above-timeout",
    ),
    _bad(
        {("services", "users", "per_try_timeout"): 1.5},
        "services.users.per_try_timeout",
        "per-try-above-default-timeout",
    ),
    # retries
    _bad(
        {("services", "users", "retry_on"): ["connect-failure", "sometimes"]},
        "services.users.retry_on",
        "unknown-token",
    ),
    _bad({("services", "users", "retry_on"): ["5XX"]}, "services.users.retry_on", "upper-case-token"),
    _bad({("services", "users", "retry_on"): ["retriable-headers"]}, "services.users.retry_on", "unsupported-token"),
    _bad({("services", "users", "retry_on"): [503]}, "services.users.retry_on", "non-string-token"),
    _bad({("services", "users", "retry_on"): True}, "services.users.retry_on", "retry-on-not-a-list"),
    _bad({("services", "users", "retries"): -1}, "services.users.retries", "negative-retries"),
    _bad({("services", "users", "retries"): True}, "services.users.retries", "bool-retries"),
    _bad({("services", "users", "retries"): 11}, "services.users.retries", "too-many-retries"),
    _bad({("services", "users", "retries"): 1000}, "services.users.retries", "far-too-many-retries"),
    _bad({("services", "users", "retries"): 1.5}, "services.users.retries", "fractional-retries"),
    _bad({("services", "users", "retries"): "2"}, "services.users.retries", "string-retries"),
    _bad(
        {("services", "users", "retriable_status_codes"): [42]},
        "services.users.retriable_status_codes",
        "bad-status-code",
    ),
    # mesh choices
    _bad({("mesh", "default_route"): "istio"}, "mesh.default_route", "unknown-default-route"),
    _bad({("mesh", "default_route"): "Envoy"}, "mesh.default_route", "capitalised-default-route"),
    _bad({("mesh", "default_route"): 1}, "mesh.default_route", "numeric-default-route"),
    _bad({("mesh", "failover"): "yes"}, "mesh.failover", "string-failover"),
    _bad({("mesh", "failover"): 1}, "mesh.failover", "integer-failover"),
    _bad({("mesh", "header_prefix"): "envoy"}, "mesh.header_prefix", "header-prefix-without-x"),
    _bad({("flags",): {"source": "consul"}}, "flags.source", "unknown-flags-source"),
    _bad({("flags",): {"flag_key": "route-{name}"}}, "flags.flag_key", "unknown-flag-key-placeholder"),
    # protocols and transports
    _bad({("services", "users", "protocol"): "grpc"}, "services.users.protocol", "unknown-protocol"),
    _bad({("services", "users", "protocol"): "HTTP"}, "services.users.protocol", "upper-case-protocol"),
    _bad({("services", "users", "transport"): "framed"}, "services.users.transport", "transport-on-http-service"),
    _bad(
        {**WITH_THRIFT, ("services", "t", "transport"): "buffered"},
        "services.t.transport",
        "unknown-thrift-transport",
    ),
    # idempotent methods
    _bad(
        {("services", "users", "idempotent_methods"): ["get"]},
        "services.users.idempotent_methods",
        "lower-case-http-method",
    ),
    _bad(
        {("services", "users", "idempotent_methods"): ["GET", "PO ST"]},
        "services.users.idempotent_methods",
        "http-method-with-space",
    ),
    _bad(
        {("services", "users", "idempotent_methods"): [""]},
        "services.users.idempotent_methods",
        "empty-method",
    ),
    _bad(
        {("services", "users", "idempotent_methods"): [1]},
        "services.users.idempotent_methods",
        "non-string-method",
    ),
    _bad(
        {("services", "users", "idempotent_methods"): "GET"},
        "services.users.idempotent_methods",
        "methods-not-a-list",
    ),
    _bad(
        {**WITH_THRIFT, ("services", "t", "idempotent_methods"): ["get-user"]},
        "services.t.idempotent_methods",
        "bad-thrift-method-name",
    ),
]


@pytest.mark.parametrize(("changes", "key"), BAD_REGISTRIES)
def test_invalid_registry_raises_config_error_naming_key_and_file(
    loader: tuple[Load, str], changes: dict[tuple[str, ...], object], key: str
) -> None:
    load, source = loader
    data = _with(MINIMAL, changes)

    with pytest.raises(ConfigError) as excinfo:
        load(data)

    error = excinfo.value
    assert error.key == key
    assert error.source == source
    message = str(error)
    assert key in message
    assert source in message


def test_config_error_is_a_value_error_and_a_mesh_error() -> None:
    assert mesh_client.ConfigError is ConfigError

    with pytest.raises(ConfigError) as excinfo:
        load_mapping(_with(MINIMAL, {("services", "users", "timeout"): -1}), source="x.toml")

    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, MeshError)
    assert excinfo.value.key == "services.users.timeout"


def test_load_mapping_names_a_dict_source_by_default() -> None:
    with pytest.raises(ConfigError, match=r"mesh\.caller.*<dict>"):
        load_mapping(_with(MINIMAL, {("mesh", "caller"): DELETE}))


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text('[mesh]\ncaller = "checkout\n', encoding="utf-8")

    with pytest.raises(ConfigError) as excinfo:
        load_file(path)

    assert str(path) in str(excinfo.value)
    assert excinfo.value.source == str(path)


def test_duplicate_toml_table_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(_to_toml(MINIMAL) + '[mesh]\ncaller = "again"\n', encoding="utf-8")

    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_file(path)


@pytest.mark.parametrize("name", [pytest.param("missing.toml", id="missing-file"), pytest.param(".", id="directory")])
def test_unreadable_file_names_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name

    with pytest.raises(ConfigError) as excinfo:
        load_file(path)

    assert str(path) in str(excinfo.value)
    assert excinfo.value.source == str(path)


def test_registry_that_is_not_utf8_raises_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_bytes("# caf\xe9 team\n".encode("latin-1") + _to_toml(MINIMAL).encode())

    with pytest.raises(ConfigError) as excinfo:
        load_file(path)

    assert str(path) in str(excinfo.value)
    assert excinfo.value.source == str(path)


def test_impossible_ipv4_address_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"mesh\.envoy_http"):
        load_mapping(_with(MINIMAL, {("mesh", "envoy_http"): "999.1.1.1:9001"}))


# ---------------------------------------------------------------------------------------------
# Immutability


def test_config_objects_are_frozen() -> None:
    cfg = load_mapping(MINIMAL)
    users = cfg.service("users")

    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.caller = "someone-else"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.flags.source = "file"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        users.haproxy = Address("127.0.0.1", 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        users.haproxy.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        users.policy.timeout = 30.0  # type: ignore[misc]
    assert cfg.caller == "checkout"
    assert users.policy.timeout == 1.0


def test_services_mapping_cannot_be_changed() -> None:
    cfg = load_mapping(MINIMAL)

    with pytest.raises(TypeError):
        cfg.services["intruder"] = cfg.service("users")  # type: ignore[index]
    assert set(cfg.services) == {"users"}


def test_a_service_name_with_an_underscore_needs_an_envoy_host() -> None:
    svc: dict[str, Any] = {"haproxy": "127.0.0.1:16001"}
    data: dict[str, Any] = {
        "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:15001"},
        "services": {"user_store": svc},
    }
    with pytest.raises(ConfigError, match=r"set envoy_host .* e\.g\. 'user-store'") as caught:
        load_mapping(data)
    assert caught.value.key == "services.user_store.envoy_host"
    data["services"]["user_store"] = {**svc, "envoy_host": "user-store"}
    assert load_mapping(data).services["user_store"].envoy_host == "user-store"


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:9001"), ("::1", "http://[::1]:9001"), ("envoy.local", "http://envoy.local:9001")],
)
def test_an_address_base_url_is_made_once_and_survives_copies(host: str, url: str) -> None:
    import copy
    import dataclasses
    import pickle

    address = Address(host, 9001)
    assert address.base_url == url
    assert pickle.loads(pickle.dumps(address)).base_url == url
    assert copy.copy(address).base_url == url
    assert dataclasses.replace(address, port=9002).base_url == url.replace("9001", "9002")
    assert address == Address(host, 9001)
    assert repr(address) == f"Address(host={host!r}, port=9001)"
