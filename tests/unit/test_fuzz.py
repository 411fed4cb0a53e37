"""Fuzzing what reads untrusted or hand-written input: the registry loader, the inbound context
(headers any caller can send) and the readers of proxy replies (headers and bodies any upstream can
send). Hypothesis runs stay small for CI (100 to 500 examples each); the atheris harness in
``tests/fuzz/`` runs for a bounded number of inputs here when atheris is installed (it is skipped where
atheris cannot be installed: macOS, Windows, Python 3.13 and later).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import platform
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mesh_client
from mesh_client import ConfigError, Mesh, Route, registry
from mesh_client.context import MAX_INBOUND_TIMEOUT_MS, begin_request, check_header_value, current_inbound, read_inbound
from mesh_client.core import Attempt, Broken, CallRun, Done, Fail, Failure, Responded, ServicePlan, parse_retry_after
from mesh_client.envoy import ENVOY_ERROR_KINDS
from mesh_client.overrides import MAX_OVERRIDES, parse_override_header
from mesh_client.registry import MeshConfig, load_file, load_mapping
from mesh_client.testing.plugin import in_ci
from mesh_client.variants import NAME_PATTERN, OverridesConfig

from ..fuzz.registry_checks import use

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
FEW: Any = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the registry loader: anything in, a MeshConfig or a ConfigError out ---------------------------

# every key the loader knows, sorted so that generated examples are reproducible
MESH_KEYS = sorted(registry._MESH_KEYS)
FLAG_KEYS = sorted(registry._FLAG_KEYS)
SERVICE_KEYS = sorted(registry._SERVICE_KEYS)
#: plausible values, so that generated registries often get past the first checks
GOOD: dict[str, list[Any]] = {
    "caller": ["checkout", "a", "b-2.c_d"],
    "envoy_http": ["127.0.0.1:9001", "localhost:1", "[::1]:65535"],
    "envoy_thrift": ["127.0.0.1:9002"],
    "envoy_admin": ["127.0.0.1:9901"],
    "haproxy": ["127.0.0.1:20001", "host-1.example:8080"],
    "endpoints": [["127.0.0.1:8081"], ["localhost:1", "[::1]:2"], []],
    "default_route": ["envoy", "haproxy"],
    "failover": [True, False],
    "header_prefix": ["x-envoy", "x-foo", "X-Envoy"],
    "context_headers": [["x-tenant"], ["authorization", "x-tenant"], []],
    "source": ["none", "file", "launchdarkly"],
    "path": ["flags.json", "/tmp/flags.json"],
    "sdk_key_env": ["LD_SDK_KEY"],
    "flag_key": ["mesh-route-{service}", "route.{service}", "{service}{service}"],
    "poll_interval": [0.1, 1],
    "start_wait": [0.5],
    "protocol": ["http", "thrift"],
    "envoy_host": ["users", "users.internal"],
    "timeout": [1.0, 0.3, 30, 1e-9],
    "per_try_timeout": [0.1, 0.3, None],
    "retries": [0, 2, 10],
    "retry_on": [["5xx"], ["gateway-error", "retriable-status-codes"], "5xx,reset", []],
    "retriable_status_codes": [[409], [500, 503]],
    "idempotent_methods": [["GET"], ["get_user"], []],
    "transport": ["framed", "header"],
    "retry_budget": [{"percent": 20}, {"min_per_second": 0, "ttl": 1}, {}],
    "shadow": [{"sample": 1.0, "ignore_json": ["items[].etag"]}, {"max_in_flight": 1, "compare_headers": ["etag"]}, {}],
    "variants": [{"canary": {"haproxy": "127.0.0.1:20011"}}, {"pr-12": {"endpoints": ["127.0.0.1:8091"]}, "b": {}}, {}],
    "accept_inbound": [True, False],
    "secret_env": ["MESH_OVERRIDE_SECRET", "1BAD"],
}
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan, inf, -0.0, subnormals
    st.text(max_size=20),
    st.sampled_from([v for values in GOOD.values() for v in values if not isinstance(v, (list, dict))]),
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
    ),
    max_leaves=10,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], odds: int = 10) -> st.SearchStrategy[Any]:
    """``good``, except one time in ``odds``: ``bad``."""
    return st.integers(1, odds).flatmap(lambda n: bad if n == 1 else good)


def field(name: str) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(GOOD[name]), anything, odds=20)


def table(required: list[str], optional: list[str]) -> st.SearchStrategy[Any]:
    """Mostly a table with the ``required`` keys and some ``optional`` ones (plausible values,
    now and then an arbitrary one); otherwise one with any of them, an unknown key, or no table."""
    fields = {k: field(k) for k in required + optional}
    usual = st.fixed_dictionaries({k: fields[k] for k in required}, optional={k: fields[k] for k in optional})
    extra = st.dictionaries(st.text(max_size=10) | st.integers(), anything, min_size=1, max_size=1)
    odd = st.one_of(
        st.fixed_dictionaries({}, optional=fields),
        st.builds(lambda t, e: {**t, **e}, usual, extra),
        anything,
    )
    return mostly(usual, odd)


service_names = mostly(
    st.sampled_from(["users", "users-thrift", "b", "a.b_c-d"]),
    st.one_of(st.sampled_from(["Users", "", "-a", "a" * 64]), st.text(max_size=8), st.integers()),
)
registries = st.builds(
    lambda mesh, flags, services, overrides, extra: {
        **({} if mesh is None else {"mesh": mesh}),
        **({} if flags is None else {"flags": flags}),
        **({} if services is None else {"services": services}),
        **({} if overrides is None else {"overrides": overrides}),
        **extra,
    },
    mostly(table(["caller", "envoy_http"], [k for k in MESH_KEYS if k not in ("caller", "envoy_http")]), st.none()),
    st.none() | table([], FLAG_KEYS),
    mostly(
        st.dictionaries(service_names, table(["haproxy"], [k for k in SERVICE_KEYS if k != "haproxy"]), max_size=3),
        st.none() | anything,
    ),
    st.none() | table([], ["accept_inbound", "secret_env"]),
    mostly(st.just({}), st.dictionaries(st.text(max_size=8), anything, max_size=1)),
)


@FEW
@given(data=registries)
def test_any_registry_data_loads_or_raises_config_error(data: dict[str, Any]) -> None:
    try:
        config = load_mapping(data)
    except ConfigError:
        return
    assert isinstance(config, MeshConfig)
    use(config)


def test_fuzzed_registries_do_load_sometimes() -> None:
    """The generator is worth running: a fair share of what it builds is a valid registry."""
    loaded = 0

    @settings(max_examples=300, deadline=None, database=None)
    @given(data=registries)
    def count(data: dict[str, Any]) -> None:
        nonlocal loaded
        try:
            load_mapping(data)
        except ConfigError:
            return
        loaded += 1

    count()
    assert loaded >= 10


TOML_VALUES = [
    '"127.0.0.1:9001"',
    '"users"',
    '"envoy"',
    "1.0",
    "0",
    "-1",
    "10",
    "inf",
    "-inf",
    "nan",
    "1e400",
    "0x10",
    "1_000",
    "true",
    "[]",
    '["5xx", "reset"]',
    "[409, 600]",
    '["GET", "get"]',
    "{ percent = 20, ttl = 0 }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "'literal \\ string'",
    '"""multi\nline"""',
    '"\\u00e9\\n"',
    '"\\uD800"',
    '"a\x00b"',
]
TOML_HEADERS = [
    "[mesh]",
    "[flags]",
    "[services]",
    "[services.users]",
    "[services.users-thrift]",
    "[services.users.retry_budget]",
    "[[services]]",
    "[mesh.failover]",
    '[services."a b"]',
]
toml_keys = st.one_of(st.sampled_from(MESH_KEYS + FLAG_KEYS + SERVICE_KEYS + ["percent", "ttl"]), st.text(max_size=10))
toml_lines = st.one_of(
    st.builds(
        lambda k, v: f"{k} = {v}",
        toml_keys,
        st.one_of(st.sampled_from(TOML_VALUES), st.text(max_size=20).map(json.dumps), st.text(max_size=12)),
    ),
    st.sampled_from(TOML_HEADERS),
    st.text(max_size=30),
)
toml_documents = st.lists(toml_lines, max_size=30).map("\n".join)
SEED = (FUZZ / "corpus" / "registry" / "full.toml").read_text()


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry") / "mesh.toml"


@FEW
@given(text=st.one_of(toml_documents, st.builds(lambda extra: SEED + "\n" + extra, toml_documents)))
def test_any_registry_file_loads_or_raises_config_error(registry_file: Path, text: str) -> None:
    registry_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    error: ConfigError | None = None
    try:
        config = load_file(registry_file)
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert str(registry_file) in str(error)  # it names the file
        return
    use(config)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200))
def test_a_registry_file_that_is_not_utf8_text_is_a_config_error(registry_file: Path, raw: bytes) -> None:
    registry_file.write_bytes(raw)
    with contextlib.suppress(ConfigError):
        load_file(registry_file)


def test_fuzz_findings_are_config_errors() -> None:
    """Inputs the fuzzers found, fixed: they used to crash with another error."""
    base = {"mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001"}}
    with pytest.raises(ConfigError, match="not a valid service name"):  # was TypeError
        load_mapping({**base, "services": {1: {"haproxy": "127.0.0.1:20001"}}})
    budget = {"haproxy": "127.0.0.1:20001", "retry_budget": {"min_per_second": math.inf}}
    with pytest.raises(ConfigError, match="min_per_second must be a finite number"):  # was OverflowError per call
        load_mapping({**base, "services": {"users": budget}})


def test_a_timeout_no_socket_can_take_is_refused_when_loaded() -> None:
    with pytest.raises(ConfigError, match=r"services\.users\.timeout: .*must be at most 86400 seconds \(a day\)"):
        load_mapping(
            {
                "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001"},
                "services": {"users": {"haproxy": "127.0.0.1:20001", "timeout": 1e10}},
            }
        )


# -- the inbound context: any header a caller sends --------------------------------------------------

INBOUND_NAMES = [
    "x-envoy-expected-rq-timeout-ms",
    "x-mesh-timeout-ms",
    "grpc-timeout",
    "x-request-id",
    "x-tenant",
    "traceparent",
    "tracestate",
    "baggage",
    "x-mesh-override",
    "x-mesh-override-signature",
]
NASTY_VALUES = [
    "users=canary",
    " users=canary ; search=pr-12 ",
    "users=canary;",
    "users=canary;users=main",
    ";".join(f"s{i}=v" for i in range(17)),
    "exp=99999999999;v1=" + "0" * 64,
    "",
    " ",
    "\r\n",
    "a\r\nx-envoy-max-retries: 100",
    "\x00",
    "1500\n",
    " 1500 ",
    "+1500",
    "1_500",
    "\u0661\u0665\u0660\u0660",  # Arabic-Indic digits: str.isdigit() says yes
    "99999999999999999999",
    "9" * 5000,
    "5S",
    "99999999H",
    "1n",
    "0",
    "-1",
    "\u2028",
    "é",
    "\udc80",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-0000000000000000-01",
    "k=v,k2=" + "v" * 9000,
]
header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY_VALUES),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1000, 70_000)),  # huge values
)
header_names = st.one_of(st.sampled_from(INBOUND_NAMES), st.text(max_size=30))
inbound_headers = st.dictionaries(header_names, header_values, max_size=8)
_PRINTABLE_ID = re.compile(r"[\x21-\x7e]{1,200}")


@FEW
@given(headers=inbound_headers, prefix=st.sampled_from(["x-envoy", "x-foo"]))
def test_read_inbound_keeps_only_what_it_trusts(headers: dict[str, str], prefix: str) -> None:
    inbound = read_inbound(headers, header_prefix=prefix, context_headers=("x-tenant", "traceparent"))
    assert _PRINTABLE_ID.fullmatch(inbound.request_id)
    if inbound.replaced_request_id:
        assert uuid.UUID(inbound.request_id).version == 4
    assert inbound.timeout is None or 0 < inbound.timeout <= MAX_INBOUND_TIMEOUT_MS / 1000
    for name, value in inbound.context_headers:
        assert name in ("x-tenant", "traceparent")
        check_header_value(name, value)


@FEW
@given(headers=inbound_headers, signed=st.booleans())
def test_inbound_overrides_are_well_formed_or_dropped(headers: dict[str, str], signed: bool) -> None:
    config = OverridesConfig(accept_inbound=True, secret_env="FUZZ_UNSET_OVERRIDE_SECRET" if signed else None)
    overrides = read_inbound(headers, header_prefix="x-envoy", context_headers=(), overrides=config).overrides
    if overrides is None:
        return
    assert not signed  # (the key's variable is unset: nothing is admitted)
    assert 1 <= len(overrides.mapping) <= MAX_OVERRIDES
    assert all(NAME_PATTERN.match(s) and NAME_PATTERN.match(v) for s, v in overrides.mapping.items())
    assert parse_override_header(overrides.header) == overrides.mapping
    check_header_value("x-mesh-override", overrides.header)


@FEW
@given(headers=inbound_headers)
def test_begin_request_never_raises_and_ends_cleanly(headers: dict[str, str]) -> None:
    lower = {name.lower(): value for name, value in headers.items()}
    end = begin_request(lower, header_prefix="x-envoy", context_headers=("x-tenant",))
    try:
        assert current_inbound() is not None
    finally:
        end()
    assert current_inbound() is None
    assert mesh_client.time_left() is None


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    data = {
        "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001", "context_headers": ["x-tenant"]},
        "services": {"users": {"haproxy": "127.0.0.1:20001"}},
    }
    with Mesh.from_dict(data) as m:
        yield m


asgi_entries = st.one_of(
    st.tuples(st.binary(max_size=30), st.binary(max_size=60)),
    st.tuples(
        st.sampled_from([n.encode() for n in INBOUND_NAMES]),
        st.sampled_from(NASTY_VALUES).map(lambda v: v.encode("utf-8", "surrogatepass")),
    ),
    st.tuples(st.text(max_size=10), st.text(max_size=10)),  # str, not bytes: a misbehaving server
    st.lists(st.binary(max_size=5), max_size=3),
    st.none(),
    st.integers(),
)


@FEW
@given(entries=st.lists(asgi_entries, max_size=8), kind=st.sampled_from(["http", "websocket"]))
def test_asgi_middleware_survives_any_header_list(mesh: Mesh, entries: list[Any], kind: str) -> None:
    seen: list[str | None] = []

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        seen.append(mesh_client.current_request_id())

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    middleware = mesh_client.asgi.MeshMiddleware(app, mesh)
    asyncio.run(middleware({"type": kind, "headers": entries}, receive, send))
    assert len(seen) == 1
    assert seen[0] is not None
    assert _PRINTABLE_ID.fullmatch(seen[0])


environ_values = st.one_of(header_values, st.binary(max_size=10), st.none(), st.integers())


@FEW
@given(extra=st.dictionaries(st.text(max_size=20).map(lambda s: "HTTP_" + s), environ_values, max_size=8))
def test_wsgi_middleware_survives_any_environ(mesh: Mesh, extra: dict[str, Any]) -> None:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None, **extra}
    seen: list[str | None] = []

    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(mesh_client.current_request_id())
        start_response("200 OK", [])
        return [b"ok"]

    result = mesh_client.wsgi.MeshMiddleware(app, mesh)(environ, lambda *args: None)
    assert list(result) == [b"ok"]
    result.close()  # type: ignore[attr-defined]
    assert seen[0] is not None
    assert current_inbound() is None


# -- the readers of proxy replies: any status, headers and body an upstream can send ---------------

REPLY_NAMES = [
    "x-envoy-overloaded",
    "x-envoy-drop-overload",
    "x-envoy-ratelimited",
    "x-envoy-upstream-service-time",
    "x-envoy-attempt-count",
    "x-foo-upstream-service-time",
    "content-length",
    "content-type",
    "retry-after",
]
REPLY_VALUES = [
    "9" * 400,  # more digits than a float holds
    "-5",
    "0",
    "1",
    "text/html",
    "text/html; charset=utf-8",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Sun, 06 Nov 1994 08:49:37",  # no zone
    "Mon, 32 Foo 2020 99:99:99 +9999",
]
REPLY_BODIES = [
    b"upstream request timeout",
    b"no healthy upstream",
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    b"upstream connect error or disconnect/reset before headers. reset reason:",
    b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>",
    b"<h1>502 Bad Gateway</h1>",
    b"<h1>504 Gateway Time-out</h1>",
    b"invalid header 'x'",
    b"\xff\xfe\x00",
]
reply_headers = st.dictionaries(
    st.one_of(st.sampled_from(REPLY_NAMES), st.text(max_size=20).map(str.lower)),
    st.one_of(st.sampled_from(REPLY_VALUES), st.text(max_size=30)),
    max_size=6,
)
reply_bodies = st.one_of(st.none(), st.sampled_from(REPLY_BODIES), st.binary(max_size=3000))
statuses = st.one_of(st.sampled_from([200, 204, 400, 404, 408, 409, 429, 502, 503, 504, 507]), st.integers(-10, 10_000))


@settings(max_examples=500, deadline=None)
@given(status=statuses, headers=reply_headers, body=reply_bodies, prefix=st.sampled_from(["x-envoy", "x-foo"]))
def test_reply_readers_never_raise(status: int, headers: dict[str, str], body: bytes | None, prefix: str) -> None:
    from mesh_client import envoy, haproxy

    assert envoy.classify_reply(status, headers, body, prefix) in ENVOY_ERROR_KINDS | {None}
    assert isinstance(envoy.may_be_local_reply(status, headers, prefix), bool)
    seconds = envoy.upstream_service_time(headers, prefix)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
    count = envoy.attempt_count(headers, prefix)
    assert count is None or count >= 1
    assert haproxy.classify_reply(status, body) in {None, "connect_failure", "upstream_reset", "timeout"}
    assert isinstance(haproxy.may_be_local_reply(status, headers), bool)


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(st.sampled_from(REPLY_VALUES), st.text(max_size=40), st.from_regex(r"\A\s*[0-9]{1,500}\s*\Z")))
def test_parse_retry_after_is_none_or_a_pause(value: str) -> None:
    seconds = parse_retry_after(value)
    assert seconds is None or seconds >= 0  # (inf for absurdly long pauses: never fits a call)


def _run(route: Route) -> CallRun[str]:
    config = load_mapping(
        {
            "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001"},
            "services": {
                "users": {
                    "haproxy": "127.0.0.1:20001",
                    "retries": 2,
                    "retry_on": ["5xx", "retriable-4xx", "retriable-status-codes", "envoy-ratelimited"],
                    "retriable_status_codes": [429, 418],
                }
            },
        }
    )
    service = config.services["users"]
    return CallRun(ServicePlan.of(config, service), "GET", service.policy, route, "fuzz")


@settings(max_examples=300, deadline=None)
@given(
    route=st.sampled_from(list(Route)),
    replies=st.lists(
        st.one_of(
            st.tuples(statuses, reply_headers, reply_bodies),
            st.sampled_from(list(Failure)),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_the_core_takes_any_reply_or_failure(route: Route, replies: list[Any]) -> None:
    """Whatever an upstream (or the network) answers, the call goes on to a next attempt, a
    response or a mesh error: never another exception. (A Retry-After of 400 digits used to raise
    OverflowError on the HAProxy route.)"""
    run = _run(route)
    step = run.advance(None)
    for reply in replies:
        if not isinstance(step, Attempt):
            break
        if isinstance(reply, Failure):
            step = run.advance(Broken(reply, OSError("fuzz")))
        else:
            status, headers, body = reply
            step = run.advance(Responded("response", status, headers, body))
    assert isinstance(step, (Attempt, Done, Fail))


# -- atheris (when installed): the registry harness for a bounded number of inputs -----------------


def atheris_expected(system: str, version: tuple[int, int]) -> bool:
    """Whether the test extra installs atheris here: on Linux before Python 3.13 (setup.cfg's
    marker; atheris builds against CPython internals and has no release for 3.13 and later)."""
    return system == "Linux" and version < (3, 13)


@pytest.mark.parametrize(
    ("system", "version", "expected"),
    [("Linux", (3, 10), True), ("Linux", (3, 12), True), ("Linux", (3, 13), False), ("Darwin", (3, 11), False)],
)
def test_atheris_is_expected_where_the_test_extra_installs_it(
    system: str, version: tuple[int, int], expected: bool
) -> None:
    assert atheris_expected(system, version) is expected
    marker = re.search(r"atheris[^;\n]*; (.*)", (Path(__file__).parents[2] / "setup.cfg").read_text())
    assert marker is not None
    assert marker.group(1).strip() == 'platform_system == "Linux" and python_version < "3.13"'


def test_atheris_registry_harness_finds_nothing(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        if not atheris_expected(platform.system(), sys.version_info[:2]):
            # not a missing component: atheris cannot be installed on this platform or Python
            pytest.skip(f"atheris is not installable on {platform.system()} / Python {sys.version.split()[0]}")
        message = "atheris is not installed: pip install atheris"
        if in_ci():
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    runs = 20_000
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    argv = [
        sys.executable,
        str(FUZZ / "fuzz_registry.py"),
        f"-dict={FUZZ / 'registry.dict'}",
        f"-runs={runs}",
        "-seed=1",
        "-max_total_time=60",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),  # new inputs go here, not into the seeds
        str(FUZZ / "corpus" / "registry"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False)
    tail = done.stderr[-4000:]
    assert done.returncode == 0, tail
    assert list(tmp_path.glob("crash-*")) == [], tail
    assert f"Done {runs} runs" in done.stderr, tail


def test_documented_example_counts_are_the_settings() -> None:
    """docs/failure-modes.md gives the Hypothesis example counts of this module and of
    test_context.py: they are what the ``settings(max_examples=...)`` say."""
    doc = (Path(__file__).parents[2] / "docs" / "failure-modes.md").read_text()

    def counts(module: str) -> list[int]:
        text = (Path(__file__).parent / module).read_text()
        return [int(n) for n in re.findall(r"max_examples=(\d+)", text)]

    low, high = map(int, re.findall(r"Hypothesis \((\d+)-(\d+) examples per property", doc)[0])
    assert (min(counts("test_fuzz.py")), max(counts("test_fuzz.py"))) == (low, high)
    (each,) = {int(n) for n in re.findall(r"Hypothesis, (\d+) examples per property", doc)}
    assert set(counts("test_context.py")) == {each}
