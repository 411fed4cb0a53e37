"""The mesh registry: one TOML file (or the same data as a dict) validated into frozen objects.

Every problem raises :class:`~mesh_client.ConfigError` naming the dotted key and the file. See
``docs/registry.md`` for every key, its default and its errors.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from .budget import DEFAULT_BUDGET, RetryBudgetConfig
from .context import check_header_name
from .errors import ConfigError, UnknownService
from .policy import (
    DEFAULT_IDEMPOTENT_METHODS,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_ON,
    DEFAULT_TIMEOUT,
    CallPolicy,
    Route,
    check_methods,
    check_retries,
    check_retry_on,
    check_seconds,
    check_status_codes,
)
from .shadow.config import DEFAULT_SHADOW, ShadowConfig, parse_shadow
from .variants import DEFAULT_OVERRIDES, NO_VARIANTS, OverridesConfig, Variants, parse_overrides_table, parse_variants

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Address", "FlagsConfig", "MeshConfig", "ServiceConfig", "load_file", "load_mapping"]

FlagSource = Literal["file", "launchdarkly", "none"]
ServiceProtocol = Literal["http", "thrift"]
#: deprecated alias of :data:`ServiceProtocol` (it shadowed ``typing.Protocol``)
Protocol = ServiceProtocol
ThriftTransport = Literal["framed", "header"]

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_DOTTED = re.compile(r"^[0-9.]+$")
_HEADER_PREFIX = re.compile(r"^x-[a-z0-9-]*[a-z0-9]$")
_HTTP_METHOD = re.compile(r"^[A-Z]+$")
_THRIFT_METHOD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_FLAG_KEY: Final = "mesh-route-{service}"


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Address:
    """A ``host:port`` a proxy listens on."""

    host: str
    port: int
    #: ``http://host:port`` (made once: a wrapper puts it in front of every attempt's path)
    base_url: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", f"http://{self}")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IP address (not a name to resolve)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @classmethod
    def parse(cls, value: object) -> Address:
        """Parse ``"127.0.0.1:9001"``, ``"localhost:9001"`` or ``"[::1]:9001"``."""
        if not isinstance(value, str):
            raise ValueError(f"must be a 'host:port' string, got {value!r}")
        host, sep, port_text = value.rpartition(":")
        if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"{value!r} is not a 'host:port' address")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{value!r}: port must be between 1 and 65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
        elif not _HOSTNAME.match(host) or (_DOTTED.match(host) and not _is_ipv4(host)):
            raise ValueError(f"{value!r}: {host!r} is not a host name or IPv4 address")
        return cls(host, port)


@dataclass(frozen=True, slots=True)
class FlagsConfig:
    """Where route flags come from (the ``[flags]`` table)."""

    source: FlagSource = "none"
    path: Path | None = None
    sdk_key_env: str = "LD_SDK_KEY"
    flag_key: str = DEFAULT_FLAG_KEY
    poll_interval: float = 0.5
    start_wait: float = 1.0

    def key_for(self, service: str) -> str:
        return self.flag_key.replace("{service}", service)


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One upstream service (a ``[services.NAME]`` table)."""

    name: str
    haproxy: Address
    protocol: ServiceProtocol = "http"
    envoy_host: str = ""
    policy: CallPolicy = field(default_factory=CallPolicy)
    endpoints: tuple[Address, ...] = ()
    transport: ThriftTransport = "framed"
    retry_budget: RetryBudgetConfig = DEFAULT_BUDGET
    variants: Variants = NO_VARIANTS
    shadow: ShadowConfig = DEFAULT_SHADOW


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The whole registry (immutable)."""

    caller: str
    envoy_http: Address
    services: Mapping[str, ServiceConfig]
    envoy_thrift: Address | None = None
    envoy_admin: Address | None = None
    default_route: Route = Route.HAPROXY
    failover: bool = True
    header_prefix: str = "x-envoy"
    context_headers: tuple[str, ...] = ()
    flags: FlagsConfig = field(default_factory=FlagsConfig)
    source: str = "<dict>"
    overrides: OverridesConfig = DEFAULT_OVERRIDES

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise UnknownService(f"no service {name!r} in the registry {self.source} (services: {known})") from None

    def __reduce__(self) -> tuple[Any, ...]:
        # (a mappingproxy does not pickle: the services travel as a dict)
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        fields["services"] = dict(self.services)
        return (_unpickle_config, (fields,))


def _unpickle_config(fields: dict[str, Any]) -> MeshConfig:
    return MeshConfig(**{**fields, "services": MappingProxyType(dict(fields["services"]))})


_MESH_KEYS: Final = {
    "caller",
    "envoy_http",
    "envoy_thrift",
    "envoy_admin",
    "default_route",
    "failover",
    "header_prefix",
    "context_headers",
}
_FLAG_KEYS: Final = {"source", "path", "sdk_key_env", "flag_key", "poll_interval", "start_wait"}
_SERVICE_KEYS: Final = {
    "protocol",
    "haproxy",
    "envoy_host",
    "timeout",
    "per_try_timeout",
    "retries",
    "retry_on",
    "retriable_status_codes",
    "idempotent_methods",
    "endpoints",
    "transport",
    "retry_budget",
    "variants",
    "shadow",
}


class _Reader:
    """Reads one table, turning every problem into a ConfigError with the dotted key."""

    def __init__(self, table: object, prefix: str, source: str, allowed: set[str] | frozenset[str]) -> None:
        self.prefix = prefix
        self.source = source
        if not isinstance(table, Mapping):
            raise ConfigError(f"must be a table, got {table!r}", key=prefix, source=source)
        self.table: Mapping[str, Any] = table
        for key in table:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(f"unknown key (known keys: {known})", key=self.key(str(key)), source=source)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, key=self.key(name), source=self.source)

    def has(self, name: str) -> bool:
        return name in self.table

    def required(self, name: str) -> Any:
        if name not in self.table:
            raise self.fail(name, "is required")
        return self.table[name]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.required(name) if required else self.table.get(name, default)
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.table.get(name, default)
        if value not in choices:
            raise self.fail(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value

    def address(self, name: str, *, required: bool = False) -> Address | None:
        if name not in self.table:
            if required:
                raise self.fail(name, "is required")
            return None
        address: Address = self.convert(name, Address.parse, self.table[name])
        return address

    def convert(self, name: str, check: Any, value: object, *args: object) -> Any:
        try:
            return check(value, *args)
        except ValueError as exc:
            message = str(exc)
            # the checks name their field ("timeout must be ..."); the key is named already
            for lead in (f"{name}: ", f"{name} "):
                if message.startswith(lead):
                    message = message[len(lead) :]
            raise self.fail(name, message) from None


def load_file(path: str | Path) -> MeshConfig:
    """Read and validate a registry TOML file."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the registry: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the registry is not UTF-8 text: {exc}", source=source) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    return load_mapping(data, source=source, base_dir=path.resolve().parent)


def load_mapping(data: Mapping[str, Any], *, source: str = "<dict>", base_dir: Path | None = None) -> MeshConfig:
    """Validate registry data (the parsed TOML) into a :class:`MeshConfig`."""
    root = _Reader(data, "", source, {"mesh", "flags", "services", "overrides"})
    if not root.has("mesh"):
        raise root.fail("mesh", "the [mesh] table is required")
    mesh = _Reader(data["mesh"], "mesh", source, _MESH_KEYS)
    caller = mesh.string("caller", required=True)
    if not _NAME.match(caller):
        raise mesh.fail("caller", f"{caller!r} is not a valid service name (lowercase letters, digits, '.', '-', '_')")
    header_prefix = mesh.string("header_prefix", "x-envoy").lower()
    if not _HEADER_PREFIX.match(header_prefix):
        raise mesh.fail("header_prefix", f"{header_prefix!r} is not a header prefix like 'x-envoy'")

    services_table = data.get("services", {})
    services_reader = _Reader(
        services_table, "services", source, set(services_table) if isinstance(services_table, Mapping) else set()
    )
    services = {name: _service(name, table, source) for name, table in services_reader.table.items()}
    envoy_thrift = mesh.address("envoy_thrift")
    if envoy_thrift is None:
        for svc in services.values():
            if svc.protocol == "thrift":
                raise mesh.fail("envoy_thrift", f"is required because service {svc.name!r} uses protocol 'thrift'")

    flags = _flags(data.get("flags"), source, base_dir)
    context_headers = mesh.table.get("context_headers", [])
    if not isinstance(context_headers, list):
        raise mesh.fail("context_headers", f"must be a list of header names, got {context_headers!r}")
    context_names = tuple(
        dict.fromkeys(
            mesh.convert("context_headers", check_header_name, h) if isinstance(h, str) else _not_a_name(mesh, h)
            for h in context_headers
        )
    )
    for name in context_names:
        if name.startswith(header_prefix + "-"):
            raise mesh.fail("context_headers", f"{name!r} carries the Envoy header prefix and must never be forwarded")
    return MeshConfig(
        caller=caller,
        envoy_http=mesh.address("envoy_http", required=True),  # type: ignore[arg-type]
        envoy_thrift=envoy_thrift,
        envoy_admin=mesh.address("envoy_admin"),
        default_route=Route(mesh.choice("default_route", ("haproxy", "envoy"), "haproxy")),
        failover=mesh.boolean("failover", True),
        header_prefix=header_prefix,
        context_headers=context_names,
        services=MappingProxyType(services),
        flags=flags,
        source=source,
        overrides=parse_overrides_table(data.get("overrides"), source=source),
    )


def _not_a_name(reader: _Reader, value: object) -> str:
    raise reader.fail("context_headers", f"{value!r} is not a header name")


def _flags(table: object, source: str, base_dir: Path | None) -> FlagsConfig:
    if table is None:
        return FlagsConfig()
    r = _Reader(table, "flags", source, _FLAG_KEYS)
    kind = r.choice("source", ("file", "launchdarkly", "none"), "none")
    path: Path | None = None
    if kind == "file":
        path = Path(r.string("path", required=True))
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
    elif r.has("path"):
        path = Path(r.string("path"))
    flag_key = r.string("flag_key", DEFAULT_FLAG_KEY)
    leftover = flag_key.replace("{service}", "")
    if "{" in leftover or "}" in leftover or not re.match(r"^[A-Za-z0-9._-]*$", leftover):
        raise r.fail(
            "flag_key", f"{flag_key!r}: only the placeholder {{service}}, letters, digits, '.', '-' and '_' are allowed"
        )
    return FlagsConfig(
        source=kind,  # type: ignore[arg-type]
        path=path,
        sdk_key_env=r.string("sdk_key_env", "LD_SDK_KEY"),
        flag_key=flag_key,
        poll_interval=r.convert("poll_interval", check_seconds, r.table.get("poll_interval", 0.5), "poll_interval"),
        start_wait=r.convert("start_wait", check_seconds, r.table.get("start_wait", 1.0), "start_wait"),
    )


def _optional_seconds(value: object, what: str) -> float | None:
    return check_seconds(value, what, allow_none=True)


def _service(name: str, table: object, source: str) -> ServiceConfig:
    prefix = f"services.{name}"
    if not isinstance(name, str) or not _NAME.match(name):  # (a dict given to load_mapping may have any keys)
        raise ConfigError(
            "is not a valid service name (lowercase letters, digits, '.', '-', '_'; it is used as a host name)",
            key=prefix,
            source=source,
        )
    r = _Reader(table, prefix, source, _SERVICE_KEYS)
    protocol = r.choice("protocol", ("http", "thrift"), "http")
    if protocol == "http" and r.has("transport"):
        raise r.fail("transport", "only applies to services with protocol 'thrift'")
    transport = r.choice("transport", ("framed", "header"), "framed")
    envoy_host = r.string("envoy_host", name)
    if not _HOSTNAME.match(envoy_host):
        if "envoy_host" not in r.table:  # derived from the name, which may hold '_'
            raise r.fail(
                "envoy_host",
                f"the service name {name!r} is not a valid host name, so it cannot be the Host header; "
                f"set envoy_host (letters, digits, '.', '-'), e.g. {name.replace('_', '-')!r}",
            )
        raise r.fail("envoy_host", f"{envoy_host!r} is not a valid host name")

    timeout = r.convert("timeout", check_seconds, r.table.get("timeout", DEFAULT_TIMEOUT), "timeout")
    per_try = r.convert("per_try_timeout", _optional_seconds, r.table.get("per_try_timeout"), "per_try_timeout")
    if per_try is not None and per_try >= timeout:
        raise r.fail("per_try_timeout", f"must be less than timeout ({per_try} >= {timeout})")
    default_methods = DEFAULT_IDEMPOTENT_METHODS if protocol == "http" else frozenset()
    methods = r.convert("idempotent_methods", check_methods, r.table.get("idempotent_methods", default_methods))
    pattern = _HTTP_METHOD if protocol == "http" else _THRIFT_METHOD
    for method in sorted(methods):
        if not pattern.match(method):
            kind = "an upper-case HTTP method" if protocol == "http" else "a Thrift method name"
            raise r.fail("idempotent_methods", f"{method!r} is not {kind}")
    endpoints_value = r.table.get("endpoints", [])
    if not isinstance(endpoints_value, list):
        raise r.fail("endpoints", f"must be a list of 'host:port' strings, got {endpoints_value!r}")
    policy = CallPolicy(
        timeout=timeout,
        per_try_timeout=per_try,
        retries=r.convert("retries", check_retries, r.table.get("retries", DEFAULT_RETRIES)),
        retry_on=r.convert("retry_on", check_retry_on, r.table.get("retry_on", list(DEFAULT_RETRY_ON))),
        retriable_status_codes=r.convert(
            "retriable_status_codes", check_status_codes, r.table.get("retriable_status_codes", [])
        ),
        idempotent_methods=methods,
    )
    budget_reader = _Reader(
        r.table.get("retry_budget", {}), f"{prefix}.retry_budget", source, {"percent", "min_per_second", "ttl"}
    )
    try:
        budget = RetryBudgetConfig(**budget_reader.table)
    except ValueError as exc:
        raise r.fail("retry_budget", str(exc).removeprefix("retry_budget.")) from None
    return ServiceConfig(
        name=name,
        protocol=protocol,  # type: ignore[arg-type]
        haproxy=r.address("haproxy", required=True),  # type: ignore[arg-type]
        envoy_host=envoy_host,
        policy=policy,
        endpoints=tuple(r.convert("endpoints", Address.parse, e) for e in endpoints_value),
        transport=transport,  # type: ignore[arg-type]
        retry_budget=budget,
        variants=parse_variants(
            r.table.get("variants", {}), prefix=f"{prefix}.variants", source=source, address=Address.parse
        ),
        shadow=parse_shadow(r.table.get("shadow", {}), prefix=f"{prefix}.shadow", source=source, protocol=protocol),
    )
