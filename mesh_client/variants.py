"""Variants of a service (``[services.NAME.variants.VARIANT]``) and the ``[overrides]`` table.

A variant is a named deployment of a service besides its main one (a canary, a preview of a pull
request). A request steers its calls to one with a routing override (:mod:`mesh_client.overrides`);
this module holds the registry side: the frozen configs and their validation (every problem a
:class:`~mesh_client.ConfigError` naming the key). The choice of the variant each call goes to is
:mod:`mesh_client.steering`'s. See docs/overrides.md and docs/registry.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .errors import ConfigError

if TYPE_CHECKING:
    from .registry import Address

__all__ = [
    "DEFAULT_OVERRIDES",
    "NAME_PATTERN",
    "NO_VARIANTS",
    "OverridesConfig",
    "VariantConfig",
    "Variants",
    "framed_service_name",
    "parse_overrides_table",
    "parse_variants",
    "variant_cluster",
]

#: What a service or variant name may be: 1-63 characters, lower-case letters, digits, ``.``, ``-``
#: and ``_``, starting and ending with a letter or digit (the registry's rule for service names).
NAME_PATTERN: Final = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$")
_VARIANT_KEYS: Final = ("endpoints", "haproxy")
_OVERRIDES_KEYS: Final = ("accept_inbound", "secret_env")
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class VariantConfig:
    """One variant of a service (immutable).

    - ``name``: the variant's name (the ``VARIANT`` in ``[services.NAME.variants.VARIANT]``).
    - ``haproxy``: its own SmartStack port for the HAProxy route, or None (then a call to it on
      the HAProxy route goes via Envoy).
    - ``endpoints``: where its instances listen; read only to render local sidecar configs.
    """

    name: str
    haproxy: Address | None = None
    endpoints: tuple[Address, ...] = ()


@dataclass(frozen=True, slots=True)
class OverridesConfig:
    """The ``[overrides]`` table: whether inbound ``x-mesh-override`` headers are honoured, and
    the environment variable holding the key they must be signed with (None: unsigned ones are
    accepted too)."""

    accept_inbound: bool = False
    secret_env: str | None = None


class Variants(Mapping[str, VariantConfig]):
    """A service's variants by name: read-only, hashable and picklable (a ``ServiceConfig``
    travels to worker processes)."""

    __slots__ = ("_by_name",)

    def __init__(self, variants: Iterable[VariantConfig] = ()) -> None:
        self._by_name = {v.name: v for v in variants}

    def __getitem__(self, name: str) -> VariantConfig:
        return self._by_name[name]

    def get(self, name: str, default: Any = None) -> Any:  # (a dict's get: once per call with an override)
        return self._by_name.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.values()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Variants, (tuple(self._by_name.values()),))

    def __repr__(self) -> str:
        return f"Variants({list(self._by_name.values())!r})"


NO_VARIANTS: Final = Variants()
#: no ``[overrides]`` table: inbound overrides are dropped
DEFAULT_OVERRIDES: Final = OverridesConfig()


def variant_cluster(service: str, variant: str) -> str:
    """The name of a variant's cluster in the rendered Envoy config and of its proxies in the
    rendered HAProxy config (``users:canary``: a ``:`` is in no service or variant name)."""
    return f"{service}:{variant}"


def framed_service_name(service: str, variant: str) -> str:
    """The service prefix of a framed Thrift call to a variant through Envoy (``users~canary``, as
    in ``users~canary:get``): Envoy's thrift_proxy routes framed calls on that prefix."""
    return f"{service}~{variant}"


def parse_variants(table: object, *, prefix: str, source: str, address: Callable[[object], Address]) -> Variants:
    """Validate ``[services.NAME.variants]`` (``prefix`` is ``services.NAME.variants``);
    ``address`` parses a ``host:port`` (:meth:`mesh_client.registry.Address.parse`)."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, source=source)

    if not isinstance(table, Mapping):
        raise fail(prefix, f"must be a table of variants ([{prefix}.NAME]), got {table!r}")
    variants = []
    for name, body in table.items():
        key = f"{prefix}.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise fail(key, "is not a valid variant name (lowercase letters, digits, '.', '-', '_'; at most 63)")
        if not isinstance(body, Mapping):
            raise fail(key, f"must be a table, got {body!r}")
        for field in body:
            if field not in _VARIANT_KEYS:
                raise fail(f"{key}.{field}", f"unknown key (known keys: {', '.join(_VARIANT_KEYS)})")

        def parsed(field: str, value: object, key: str = key) -> Address:
            try:
                return address(value)
            except ValueError as exc:
                raise fail(f"{key}.{field}", str(exc)) from None

        endpoints = body.get("endpoints", [])
        if not isinstance(endpoints, list):
            raise fail(f"{key}.endpoints", f"must be a list of 'host:port' strings, got {endpoints!r}")
        haproxy = parsed("haproxy", body["haproxy"]) if "haproxy" in body else None
        variants.append(VariantConfig(name, haproxy, tuple(parsed("endpoints", e) for e in endpoints)))
    return Variants(variants) if variants else NO_VARIANTS


def parse_overrides_table(table: object, *, source: str) -> OverridesConfig:
    """Validate the ``[overrides]`` table (absent: inbound overrides are dropped)."""
    if table is None:
        return OverridesConfig()
    if not isinstance(table, Mapping):
        raise ConfigError(f"must be a table, got {table!r}", key="overrides", source=source)
    for key in table:
        if key not in _OVERRIDES_KEYS:
            raise ConfigError(
                f"unknown key (known keys: {', '.join(_OVERRIDES_KEYS)})", key=f"overrides.{key}", source=source
            )
    accept = table.get("accept_inbound", False)
    if not isinstance(accept, bool):
        raise ConfigError(f"must be true or false, got {accept!r}", key="overrides.accept_inbound", source=source)
    secret_env = table.get("secret_env")
    if secret_env is not None and (not isinstance(secret_env, str) or not _ENV_NAME.match(secret_env)):
        raise ConfigError(
            f"must be the name of an environment variable (letters, digits, '_'), got {secret_env!r}",
            key="overrides.secret_env",
            source=source,
        )
    return OverridesConfig(accept_inbound=accept, secret_env=secret_env)
