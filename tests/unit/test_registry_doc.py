"""docs/registry.md, checked against the code: every error message it documents is raised as
written (by the input the table below gives it), no message is documented without a row here,
and every default in its key tables is the value a minimal registry loads."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mesh_client import ConfigError
from mesh_client.registry import MeshConfig, load_file, load_mapping
from mesh_client.sidecar import envoy_bootstrap

from .test_registry import DELETE, MINIMAL, _with

DOC = Path(__file__).parents[2] / "docs" / "registry.md"

THRIFT = {
    ("mesh", "envoy_thrift"): "127.0.0.1:9002",
    ("services", "t"): {"protocol": "thrift", "haproxy": "127.0.0.1:2"},
}


def changed(changes: dict[tuple[str, ...], object]) -> dict[str, Any]:
    """The minimal registry with ``changes`` (test_registry's one, shared)."""
    return _with(MINIMAL, changes)


def loads(changes: dict[tuple[str, ...], object]) -> Callable[[Path], object]:
    return lambda _tmp: load_mapping(changed(changes))


def toml(text: str | None) -> Callable[[Path], object]:
    def load(tmp: Path) -> object:
        path = tmp / "mesh.toml"
        if text is not None:
            path.write_text(text)
        return load_file(path)

    return load


def users(key: str, value: object) -> Callable[[Path], object]:
    return loads({("services", "users", key): value})


def shadow(key: str, value: object, service: str = "users") -> Callable[[Path], object]:
    extra = THRIFT if service == "t" else {}
    return loads({**extra, ("services", service, "shadow", key): value})


def bootstrap_without_admin(_tmp: Path) -> object:
    return envoy_bootstrap(load_mapping(MINIMAL))


#: documented message (``...`` stands for any text) -> the input that must raise it, and its key
MESSAGES: dict[str, tuple[Callable[[Path], object], str | None]] = {
    "unknown key (known keys: ...)": (loads({("mesh", "envoy"): "127.0.0.1:1"}), "mesh.envoy"),
    "is required": (loads({("mesh", "caller"): DELETE}), "mesh.caller"),
    "the [mesh] table is required": (loads({("mesh",): DELETE}), "mesh"),
    "must be a table, got ...": (loads({("flags",): 1}), "flags"),
    "cannot read the registry: No such file or directory": (toml(None), None),
    "not valid TOML: ...": (toml("[mesh\n"), None),
    "must be a 'host:port' string, got 9001": (loads({("mesh", "envoy_http"): 9001}), "mesh.envoy_http"),
    "'9001' is not a 'host:port' address": (loads({("mesh", "envoy_http"): "9001"}), "mesh.envoy_http"),
    "'localhost:99999': port must be between 1 and 65535": (
        loads({("mesh", "envoy_http"): "localhost:99999"}),
        "mesh.envoy_http",
    ),
    "'[zz]:9001': 'zz' is not an IPv6 address": (loads({("mesh", "envoy_http"): "[zz]:9001"}), "mesh.envoy_http"),
    "services.users.timeout: must be a number of seconds, got '1s'": (users("timeout", "1s"), "services.users.timeout"),
    "services.users.timeout: must be a finite number of seconds, got nan": (
        users("timeout", float("nan")),
        "services.users.timeout",
    ),
    "services.users.timeout: must be greater than 0 seconds, got 0": (users("timeout", 0), "services.users.timeout"),
    "services.users.timeout: must be at most 86400 seconds (a day), got 10000000000.0": (
        users("timeout", 1e10),
        "services.users.timeout",
    ),
    "'Checkout' is not a valid service name (lowercase letters, digits, '.', '-', '_')": (
        loads({("mesh", "caller"): "Checkout"}),
        "mesh.caller",
    ),
    "is required because service 'users-thrift' uses protocol 'thrift'": (
        loads({("services", "users-thrift"): {"protocol": "thrift", "haproxy": "127.0.0.1:20002"}}),
        "mesh.envoy_thrift",
    ),
    "mesh.envoy_admin: is required to render an Envoy bootstrap": (bootstrap_without_admin, "mesh.envoy_admin"),
    "must be one of 'haproxy', 'envoy', got 'direct'": (
        loads({("mesh", "default_route"): "direct"}),
        "mesh.default_route",
    ),
    "must be true or false, got 'yes'": (loads({("mesh", "failover"): "yes"}), "mesh.failover"),
    "'envoy' is not a header prefix like 'x-envoy'": (
        loads({("mesh", "header_prefix"): "envoy"}),
        "mesh.header_prefix",
    ),
    "mesh.context_headers: 'x-envoy-max-retries' must never be forwarded between services": (
        loads({("mesh", "context_headers"): ["x-envoy-max-retries"]}),
        "mesh.context_headers",
    ),
    "must be one of 'file', 'launchdarkly', 'none', got 'ld'": (loads({("flags", "source"): "ld"}), "flags.source"),
    "'route-{svc}': only the placeholder {service}, letters, digits, '.', '-' and '_' are allowed": (
        loads({("flags", "flag_key"): "route-{svc}"}),
        "flags.flag_key",
    ),
    (
        "services.Users: is not a valid service name (lowercase letters, digits, '.', '-', '_'; "
        "it is used as a host name)"
    ): (
        loads({("services", "Users"): {"haproxy": "127.0.0.1:20002"}}),
        "services.Users",
    ),
    "'users_svc' is not a valid host name": (users("envoy_host", "users_svc"), "services.users.envoy_host"),
    (
        "the service name 'user_store' is not a valid host name, so it cannot be the Host header; "
        "set envoy_host (letters, digits, '.', '-'), e.g. 'user-store'"
    ): (loads({("services", "user_store"): {"haproxy": "127.0.0.1:20002"}}), "services.user_store.envoy_host"),
    "must be less than timeout (1.0 >= 1.0)": (users("per_try_timeout", 1.0), "services.users.per_try_timeout"),
    "services.users.retries: must be a whole number, got 1.5": (users("retries", 1.5), "services.users.retries"),
    "services.users.retries: must be between 0 and 10, got 11": (users("retries", 11), "services.users.retries"),
    "services.users.retry_on: unknown retry-on token 'retriable-headers' (known: ...)": (
        users("retry_on", ["retriable-headers"]),
        "services.users.retry_on",
    ),
    "services.users.retriable_status_codes: 600 is not an HTTP status code": (
        users("retriable_status_codes", [600]),
        "services.users.retriable_status_codes",
    ),
    "'get' is not an upper-case HTTP method": (
        users("idempotent_methods", ["get"]),
        "services.users.idempotent_methods",
    ),
    "must be a list of 'host:port' strings, got '127.0.0.1:1'": (
        users("endpoints", "127.0.0.1:1"),
        "services.users.endpoints",
    ),
    "services.users.retry_budget: percent must be a finite number >= 0, got -1": (
        users("retry_budget", {"percent": -1}),
        "services.users.retry_budget",
    ),
    "services.users.retry_budget: ttl must be between 1 and 60 seconds, got 0": (
        users("retry_budget", {"ttl": 0}),
        "services.users.retry_budget",
    ),
    "only applies to services with protocol 'thrift'": (users("transport", "header"), "services.users.transport"),
    "services.users.shadow.sample: must be a number from 0 to 1 (the share of calls copied), got 2": (
        shadow("sample", 2),
        "services.users.shadow.sample",
    ),
    "services.users.shadow.max_in_flight: must be a whole number from 1 to 1024, got 0": (
        shadow("max_in_flight", 0),
        "services.users.shadow.max_in_flight",
    ),
    "must be a list of JSON paths like 'generated_at' or 'items[].etag', got 'x'": (
        shadow("ignore_json", "x"),
        "services.users.shadow.ignore_json",
    ),
    (
        "'items..x' is not a JSON path (member names joined by '.', '[]' after a name for every item of a "
        "list, e.g. 'items[].etag')"
    ): (shadow("ignore_json", ["items..x"]), "services.users.shadow.ignore_json"),
    "must be a list of header names, got 'etag'": (
        shadow("compare_headers", "etag"),
        "services.users.shadow.compare_headers",
    ),
    "'bad header' is not a header name": (
        shadow("compare_headers", ["bad header"]),
        "services.users.shadow.compare_headers",
    ),
    "unknown key (known keys: compare_headers, ignore_json, max_in_flight, sample)": (
        shadow("bogus", 1),
        "services.users.shadow.bogus",
    ),
    "only applies to services with protocol 'http'": (
        shadow("ignore_json", ["a"], "t"),
        "services.t.shadow.ignore_json",
    ),
    (
        "services.users.variants.Canary: is not a valid variant name (lowercase letters, digits, '.', '-', '_'; "
        "at most 63)"
    ): (users("variants", {"Canary": {}}), "services.users.variants.Canary"),
    "must be a list of 'host:port' strings, got ...": (
        users("variants", {"canary": {"endpoints": "127.0.0.1:1"}}),
        "services.users.variants.canary.endpoints",
    ),
    "unknown key (known keys: endpoints, haproxy)": (
        users("variants", {"canary": {"bogus": 1}}),
        "services.users.variants.canary.bogus",
    ),
    "services.users.variants: must be a table of variants ([services.users.variants.NAME]), got ...": (
        users("variants", 1),
        "services.users.variants",
    ),
    "overrides.accept_inbound: must be true or false, got 'yes'": (
        loads({("overrides", "accept_inbound"): "yes"}),
        "overrides.accept_inbound",
    ),
    ("overrides.secret_env: must be the name of an environment variable (letters, digits, '_'), got 'MESH SECRET'"): (
        loads({("overrides", "secret_env"): "MESH SECRET"}),
        "overrides.secret_env",
    ),
    "overrides.accept: unknown key (known keys: accept_inbound, secret_env)": (
        loads({("overrides", "accept"): True}),
        "overrides.accept",
    ),
    "overrides: must be a table, got ...": (loads({("overrides",): 1}), "overrides"),
}

#: backquoted texts of the page with a space in them that are not error messages
NOT_MESSAGES = {
    "KEY: PROBLEM (in SOURCE)",
    "KEY: ",
    'protocol = "thrift"',
    'source = "file"',
    'source = "launchdarkly"',
    '"contextKind": "service"',
    'mesh_client.route_overrides({"users": "canary"})',
    "x-mesh-variant: canary",
    'bucketBy: "key"',
    'bucketBy: "host"',
    '["connect-failure", "refused-stream", "reset-before-request"]',
    "{percent = 20, min_per_second = 10, ttl = 10}",
    # a warning of the flag client, logged (docs/registry.md "Fallback order"), not raised
    "mesh_client: flag mesh-route-billing has no value (ERROR FLAG_NOT_FOUND) from flag file /srv/flags.json; "
    "using the default_route haproxy",
}


def documented_texts() -> list[str]:
    text = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S).replace("\n", " ")
    return list(dict.fromkeys(re.findall(r"`([^`]+)`", text)))


def test_every_documented_message_has_a_row() -> None:
    """A message added to the page needs a row in MESSAGES; a row must quote the page."""
    documented = {t for t in documented_texts() if " " in t} - NOT_MESSAGES
    assert documented == set(MESSAGES)


def _matches(documented: str, message: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in documented.split("..."))
    return re.fullmatch(pattern, message) is not None


@pytest.mark.parametrize("documented", list(MESSAGES))
def test_each_documented_message_is_raised_as_written(documented: str, tmp_path: Path) -> None:
    load, key = MESSAGES[documented]
    with pytest.raises(ConfigError) as raised:
        load(tmp_path)
    error = raised.value
    assert error.key == key
    # the message has the form `KEY: PROBLEM (in SOURCE)`; the page quotes PROBLEM, or KEY: PROBLEM
    text = str(error)
    assert error.source is not None
    assert text.endswith(f" (in {error.source})")
    text = text.removesuffix(f" (in {error.source})")
    problem = text.removeprefix(f"{key}: ") if key is not None else text
    assert _matches(documented, problem) or _matches(documented, text), text


# -- the defaults of the page's key tables -----------------------------------------------------------


def _variant() -> Any:
    """The variant ``canary`` of a registry that declares it with no keys."""
    config = load_mapping(changed({("services", "users", "variants"): {"canary": {}}}))
    return config.service("users").variants["canary"]


def _flags_minimal() -> MeshConfig:
    return load_mapping(changed({("flags",): {"source": "file", "path": "flags.json"}}))


#: (table, key) -> how to read the loaded value of a minimal registry (HTTP service ``users``)
DEFAULT_OF: dict[tuple[str, str], Callable[[MeshConfig], object]] = {
    ("mesh", "envoy_thrift"): lambda c: c.envoy_thrift,
    ("mesh", "envoy_admin"): lambda c: c.envoy_admin,
    ("mesh", "default_route"): lambda c: c.default_route.value,
    ("mesh", "failover"): lambda c: c.failover,
    ("mesh", "header_prefix"): lambda c: c.header_prefix,
    ("mesh", "context_headers"): lambda c: list(c.context_headers),
    ("flags", "source"): lambda c: c.flags.source,
    ("flags", "sdk_key_env"): lambda c: c.flags.sdk_key_env,
    ("flags", "flag_key"): lambda c: c.flags.flag_key,
    ("flags", "poll_interval"): lambda c: _flags_minimal().flags.poll_interval,
    ("flags", "start_wait"): lambda c: _flags_minimal().flags.start_wait,
    ("services", "protocol"): lambda c: c.service("users").protocol,
    ("services", "envoy_host"): lambda c: c.service("users").envoy_host,
    ("services", "timeout"): lambda c: c.service("users").policy.timeout,
    ("services", "per_try_timeout"): lambda c: c.service("users").policy.per_try_timeout,
    ("services", "retries"): lambda c: c.service("users").policy.retries,
    ("services", "retry_on"): lambda c: list(c.service("users").policy.retry_on),
    ("services", "retriable_status_codes"): lambda c: list(c.service("users").policy.retriable_status_codes),
    ("services", "endpoints"): lambda c: list(c.service("users").endpoints),
    ("services", "transport"): lambda c: load_mapping(changed(THRIFT)).service("t").transport,
    ("services", "retry_budget"): lambda c: vars_of(c.service("users").retry_budget),
    ("shadow", "sample"): lambda c: c.service("users").shadow.sample,
    ("shadow", "max_in_flight"): lambda c: c.service("users").shadow.max_in_flight,
    ("shadow", "ignore_json"): lambda c: list(c.service("users").shadow.ignore_json),
    ("shadow", "compare_headers"): lambda c: list(c.service("users").shadow.compare_headers),
    ("services", "variants"): lambda c: dict(c.service("users").variants) or None,
    ("variants", "haproxy"): lambda c: _variant().haproxy,
    ("variants", "endpoints"): lambda c: list(_variant().endpoints),
    ("overrides", "accept_inbound"): lambda c: c.overrides.accept_inbound,
    ("overrides", "secret_env"): lambda c: c.overrides.secret_env,
}
#: documented defaults that are words, not values
NO_VALUE = {"—", "see below"}
WORDS = {"none": None, "the table name": "users"}


def vars_of(budget: Any) -> dict[str, float]:
    return {"percent": budget.percent, "min_per_second": budget.min_per_second, "ttl": budget.ttl}


def documented_defaults() -> dict[tuple[str, str], str]:
    """(table, key) -> the default column of each key row of the page's tables."""
    found, table = {}, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("#"):
            heading = re.match(r"#+ `\[(?:services\.NAME\.)?(\w+)(?:\.NAME|\.VARIANT)?\]`", line)
            table = heading.group(1) if heading else ""
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if table and len(cells) >= 4 and re.fullmatch(r"`\w+`", cells[0]):
            found[(table, cells[0].strip("`"))] = cells[2]
    return found


def parse_default(text: str) -> object:
    """A default cell as a value: a backquoted TOML-like literal, a number, or a word."""
    if text in WORDS:
        return WORDS[text]
    literal = text.strip("`")
    if literal.startswith("{"):  # {percent = 20, min_per_second = 10, ttl = 10}
        pairs = (item.split("=") for item in literal.strip("{}").split(","))
        return {k.strip(): float(v) for k, v in pairs}
    if literal in ("true", "false"):
        return literal == "true"
    if literal.startswith(("[", '"')):
        import json

        return json.loads(literal)
    return float(literal)


def test_every_key_row_with_a_default_is_checked() -> None:
    rows = {k for k, v in documented_defaults().items() if v not in NO_VALUE and "HTTP:" not in v}
    assert rows == set(DEFAULT_OF)


@pytest.mark.parametrize("row", sorted(DEFAULT_OF), ids="-".join)
def test_each_documented_default_is_what_loads(row: tuple[str, str]) -> None:
    documented = parse_default(documented_defaults()[row])
    assert DEFAULT_OF[row](load_mapping(MINIMAL)) == documented
