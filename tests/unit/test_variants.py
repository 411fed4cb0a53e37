"""Variants in the registry and how overrides steer calls to them, on ``fake_mesh``: both routes,
every client, Thrift, the headers sent and dropped, ``call_info(r).variant``, spans, the
undeclared cases, signatures carried on, and the rendered sidecar configs."""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import httpx
import pytest

from mesh_client import ConfigError, Mesh, Route, call_info, call_options, clock, route_overrides
from mesh_client.overrides import (
    OVERRIDE_HEADER,
    OVERRIDE_SIGNATURE_HEADER,
    VARIANT_HEADER,
    sign_overrides,
    verify_signature,
)
from mesh_client.registry import Address, load_mapping
from mesh_client.sidecar.render import envoy_bootstrap, haproxy_config
from mesh_client.testing import FakeMesh, MeshFlags, UpstreamRequest, reply, thrift_reply
from mesh_client.variants import VariantConfig, Variants

from ..conftest import Otel, load_idl

KEY = "0123456789abcdef-secret"
#: the ``users`` fixture registers a handler per variant; each test uses some of them
pytestmark = pytest.mark.fake_mesh(assert_all_used=False)


def registry(default_route: str = "haproxy", **overrides: Any) -> dict[str, Any]:
    return {
        "mesh": {
            "caller": "checkout",
            "envoy_http": "127.0.0.1:15001",
            "envoy_thrift": "127.0.0.1:15002",
            "envoy_admin": "127.0.0.1:15000",
            "default_route": default_route,
        },
        "services": {
            "users": {
                "haproxy": "127.0.0.1:16001",
                "endpoints": ["127.0.0.1:18001"],
                "variants": {
                    "canary": {"haproxy": "127.0.0.1:16011", "endpoints": ["127.0.0.1:18011"]},
                    "pr-12": {"endpoints": ["127.0.0.1:18012"]},
                },
            },
            "billing": {"haproxy": "127.0.0.1:16002", "endpoints": ["127.0.0.1:18002"]},
            "users-thrift": {
                "protocol": "thrift",
                "haproxy": "127.0.0.1:16003",
                "endpoints": ["127.0.0.1:18003"],
                "idempotent_methods": ["get"],
                "variants": {"canary": {"haproxy": "127.0.0.1:16013"}, "blue": {}},
            },
            "users-header": {
                "protocol": "thrift",
                "transport": "header",
                "haproxy": "127.0.0.1:16004",
                "variants": {"canary": {}},
            },
        },
        **overrides,
    }


def answered_by(name: str) -> Any:
    def handler(request: UpstreamRequest) -> Any:
        return reply(200, json={"by": name, "variant": request.headers.get(VARIANT_HEADER)})

    return handler


@pytest.fixture
def users(fake_mesh: FakeMesh) -> FakeMesh:
    fake_mesh.add("users", answered_by("canary"), variant="canary")
    fake_mesh.add("users", answered_by("pr-12"), variant="pr-12")
    fake_mesh.add("users", answered_by("main"))
    return fake_mesh


# -- the registry ------------------------------------------------------------------------------------


def test_variants_load_frozen_with_their_addresses() -> None:
    config = load_mapping(registry())
    variants = config.services["users"].variants
    assert isinstance(variants, Variants)
    assert list(variants) == ["canary", "pr-12"]
    assert variants["canary"] == VariantConfig("canary", Address("127.0.0.1", 16011), (Address("127.0.0.1", 18011),))
    assert variants["pr-12"].haproxy is None
    assert config.services["billing"].variants == {}
    assert config.overrides.accept_inbound is False
    assert config.overrides.secret_env is None
    with pytest.raises(TypeError):
        variants["x"] = variants["canary"]  # type: ignore[index]


def test_a_registry_with_variants_pickles_and_hashes() -> None:
    config = load_mapping(registry(overrides={"accept_inbound": True, "secret_env": "MESH_OVERRIDE_SECRET"}))
    again = pickle.loads(pickle.dumps(config))
    assert again == config
    assert again.services["users"].variants["canary"].haproxy == Address("127.0.0.1", 16011)
    assert again.overrides.secret_env == "MESH_OVERRIDE_SECRET"
    assert hash(config.services["users"]) == hash(again.services["users"])


@pytest.mark.parametrize(
    ("variants", "key", "message"),
    [
        ("canary", "services.users.variants", "must be a table of variants"),
        ({"Canary": {}}, "services.users.variants.Canary", "is not a valid variant name"),
        ({"a:b": {}}, "services.users.variants.a:b", "is not a valid variant name"),
        ({"canary": "x"}, "services.users.variants.canary", "must be a table"),
        (
            {"canary": {"port": 1}},
            "services.users.variants.canary.port",
            "unknown key (known keys: endpoints, haproxy)",
        ),
        ({"canary": {"haproxy": "nope"}}, "services.users.variants.canary.haproxy", "is not a 'host:port' address"),
        ({"canary": {"haproxy": 20011}}, "services.users.variants.canary.haproxy", "must be a 'host:port' string"),
        ({"canary": {"endpoints": "1.2.3.4:5"}}, "services.users.variants.canary.endpoints", "must be a list"),
        ({"canary": {"endpoints": ["1.2.3.4:0"]}}, "services.users.variants.canary.endpoints", "port must be"),
    ],
)
def test_bad_variants_name_the_key(variants: Any, key: str, message: str) -> None:
    data = registry()
    data["services"]["users"]["variants"] = variants
    with pytest.raises(ConfigError, match="in <dict>") as caught:
        load_mapping(data)
    assert caught.value.key == key
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        (True, "overrides", "must be a table"),
        ({"accept": True}, "overrides.accept", "unknown key (known keys: accept_inbound, secret_env)"),
        ({"accept_inbound": "yes"}, "overrides.accept_inbound", "must be true or false"),
        ({"secret_env": ""}, "overrides.secret_env", "must be the name of an environment variable"),
        ({"secret_env": "MESH SECRET"}, "overrides.secret_env", "must be the name of an environment variable"),
        ({"secret_env": 3}, "overrides.secret_env", "must be the name of an environment variable"),
    ],
)
def test_a_bad_overrides_table_names_the_key(table: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_mapping(registry(overrides=table))
    assert caught.value.key == key
    assert message in str(caught.value)


def test_x_mesh_headers_cannot_be_context_headers() -> None:
    data = registry()
    data["mesh"]["context_headers"] = ["x-mesh-override"]
    with pytest.raises(ConfigError, match="must never be forwarded"):
        load_mapping(data)


# -- steering, HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["haproxy", "envoy"])
def test_an_override_sends_the_call_to_the_variant_on_either_route(users: FakeMesh, route: str) -> None:
    session = users.mesh(registry(route)).requests_session()
    with route_overrides({"users": "canary"}):
        r = session.get("http://users/v1/x")
    assert r.json() == {"by": "canary", "variant": "canary"}
    info = call_info(r)
    assert info is not None
    assert info.variant == "canary"
    assert info.route is Route(route)
    assert "override users=canary" in info.route_reason
    sent = users.last_call("users").sent[0]
    assert sent.address == ("127.0.0.1:16011" if route == "haproxy" else "127.0.0.1:15001")
    assert sent.headers[OVERRIDE_HEADER] == "users=canary"
    assert sent.headers[VARIANT_HEADER] == "canary"
    users.assert_called("users", variant="canary", times=1)


@pytest.mark.parametrize("route", ["haproxy", "envoy"])
def test_without_an_override_calls_reach_main_with_no_override_header(users: FakeMesh, route: str) -> None:
    session = users.mesh(registry(route)).requests_session()
    r = session.get("http://users/v1/x")
    assert r.json()["by"] == "main"
    info = call_info(r)
    assert info is not None
    assert info.variant is None
    assert OVERRIDE_HEADER not in users.last_call().headers
    assert VARIANT_HEADER not in users.last_call().headers


def test_a_variant_without_a_haproxy_port_is_reached_via_envoy(users: FakeMesh) -> None:
    session = users.mesh(registry("haproxy")).requests_session()
    with route_overrides({"users": "pr-12"}):
        r = session.get("http://users/v1/x")
    info = call_info(r)
    assert r.json()["by"] == "pr-12"
    assert info is not None
    assert info.route is Route.ENVOY
    assert info.variant == "pr-12"
    assert "via Envoy: override users=pr-12 and the variant has no HAProxy port" in info.route_reason


def test_call_options_forcing_haproxy_win_over_a_variant_without_a_port(users: FakeMesh) -> None:
    session = users.mesh(registry("envoy")).requests_session()
    with route_overrides({"users": "pr-12"}), call_options(route=Route.HAPROXY):
        r = session.get("http://users/v1/x")
    info = call_info(r)
    assert r.json()["by"] == "main"
    assert info is not None
    assert info.route is Route.HAPROXY
    assert info.variant is None
    assert "not applied: the variant has no HAProxy port and the call options force HAProxy" in info.route_reason
    assert users.last_call().headers[OVERRIDE_HEADER] == "users=pr-12"  # still carried on


def test_failing_over_from_envoy_reaches_the_variant_s_haproxy_port_or_main(users: FakeMesh) -> None:
    session = users.mesh(registry("envoy")).requests_session()
    users.envoy_down()
    with route_overrides({"users": "canary"}):
        canary = session.get("http://users/v1/x")
    with route_overrides({"users": "pr-12"}):
        pr = session.get("http://users/v1/x")
    canary_info, pr_info = call_info(canary), call_info(pr)
    assert canary_info is not None
    assert canary_info.failed_over
    assert canary_info.variant == "canary"
    assert canary.json()["by"] == "canary"
    assert pr_info is not None
    assert pr_info.failed_over
    assert pr_info.variant is None
    assert pr.json()["by"] == "main"


def test_only_the_overridden_service_goes_to_a_variant(users: FakeMesh) -> None:
    users.add("billing", reply(200))
    session = users.mesh(registry("envoy")).requests_session()
    with route_overrides({"users": "canary"}):
        billing = session.get("http://billing/v1/x")
    info = call_info(billing)
    assert info is not None
    assert info.variant is None
    sent = users.last_call("billing").headers
    assert sent[OVERRIDE_HEADER] == "users=canary"
    assert VARIANT_HEADER not in sent


def test_the_override_is_never_sent_to_a_host_outside_the_mesh(users: FakeMesh) -> None:
    seen: list[httpx.Request] = []
    outside = httpx.MockTransport(lambda request: seen.append(request) or httpx.Response(200))
    mesh = users.mesh(registry())
    with httpx.Client(transport=mesh.httpx_transport(outside)) as client, route_overrides({"users": "canary"}):
        client.get("http://example.org/", headers={"x-mesh-variant": "mine"})
        client.get("http://users/v1/x")
    assert OVERRIDE_HEADER not in seen[0].headers
    assert seen[0].headers[VARIANT_HEADER] == "mine"  # (another host: untouched)


@pytest.mark.parametrize("route", ["haproxy", "envoy"])
def test_caller_set_x_mesh_headers_are_dropped(users: FakeMesh, route: str) -> None:
    session = users.mesh(registry(route)).requests_session()
    forged = {OVERRIDE_HEADER: "users=canary", VARIANT_HEADER: "canary", "X-Mesh-Anything": "1"}
    r = session.get("http://users/v1/x", headers=forged)
    assert r.json() == {"by": "main", "variant": None}
    sent = users.last_call().headers
    assert not [name for name in sent if name.lower().startswith("x-mesh-") and name != "x-mesh-timeout-ms"]
    with route_overrides({"users": "pr-12"}):
        session.get("http://users/v1/x", headers=forged)
    assert users.last_call().headers.pairs().count((VARIANT_HEADER, "pr-12")) == 1
    assert [k for k, _ in users.last_call().headers.pairs()].count(VARIANT_HEADER) == 1


def test_every_client_steers_alike(users: FakeMesh) -> None:
    mesh = users.mesh(registry("haproxy"))

    async def with_async_client() -> Any:
        async with mesh.httpx_async_client() as client:
            return await client.get("http://users/v1/x")

    with route_overrides({"users": "canary"}):
        answers = [
            mesh.requests_session().get("http://users/v1/x"),
            mesh.httpx_client().get("http://users/v1/x"),
            asyncio.run(with_async_client()),
        ]
    for r in answers:
        info = call_info(r)
        assert r.json()["by"] == "canary"
        assert info is not None
        assert info.variant == "canary"


# -- undeclared overrides ----------------------------------------------------------------------------


def ignored(otel: Otel) -> dict[tuple[str, str | None], int]:
    data = otel.metrics.get_metrics_data()
    found: dict[tuple[str, str | None], int] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "mesh_client.overrides.ignored":
                    for p in metric.data.data_points:
                        service = p.attributes.get("mesh.service")
                        found[(str(p.attributes["mesh.override.reason"]), service)] = p.value  # type: ignore[assignment]
    return found


def test_undeclared_variants_and_services_go_to_main_logged_once_counted_and_carried_on(
    users: FakeMesh, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    session = users.mesh(registry("envoy")).requests_session()
    before = ignored(otel)
    with caplog.at_level(logging.WARNING, logger="mesh_client.overrides"):
        for _ in range(3):
            with route_overrides({"users": "nightly", "search": "pr-3"}):
                r = session.get("http://users/v1/x")
                assert r.status_code == 200
                assert r.json()["by"] == "main"
                info = call_info(r)
                assert info is not None
                assert info.variant is None
    sent = users.last_call().headers
    assert sent[OVERRIDE_HEADER] == "users=nightly;search=pr-3"
    assert VARIANT_HEADER not in sent
    after = ignored(otel)
    assert after.get(("undeclared_variant", "users"), 0) - before.get(("undeclared_variant", "users"), 0) == 3
    assert after.get(("undeclared_service", None), 0) - before.get(("undeclared_service", None), 0) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("users=nightly ignored for routing" in m for m in messages) == 1
    assert sum("search=pr-3 ignored for routing" in m for m in messages) == 1


# -- spans and signatures ----------------------------------------------------------------------------


def test_spans_carry_mesh_variant(users: FakeMesh, otel: Otel) -> None:
    session = users.mesh(registry("envoy")).requests_session()
    with route_overrides({"users": "canary"}):
        session.get("http://users/v1/x")
    session.get("http://users/v1/x")
    spans = [s for s in otel.finished() if s.instrumentation_scope and s.instrumentation_scope.name == "mesh_client"]
    assert [s.attributes.get("mesh.variant") for s in spans if s.attributes] == ["canary", None]


def test_a_hop_holding_the_key_signs_what_it_sends(users: FakeMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MESH_OVERRIDE_SECRET", KEY)
    session = users.mesh(registry(overrides={"secret_env": "TEST_MESH_OVERRIDE_SECRET"})).requests_session()
    with route_overrides({"users": "canary"}):
        session.get("http://users/v1/x")
    sent = users.last_call().headers
    now = clock.wall()
    expiry = verify_signature(sent[OVERRIDE_HEADER], sent[OVERRIDE_SIGNATURE_HEADER], KEY.encode(), now)
    assert 299 <= expiry - now <= 300


def test_a_received_signature_is_carried_on_with_the_value_unchanged(users: FakeMesh) -> None:
    from mesh_client.context import begin_request

    mesh = users.mesh(registry(overrides={"accept_inbound": True}))
    inbound = sign_overrides("users=canary;search=pr-1", KEY, ttl=60)
    end = begin_request(inbound, header_prefix="x-envoy", context_headers=(), overrides=mesh.config.overrides)
    try:
        mesh.requests_session().get("http://users/v1/x")
        with route_overrides({"billing": "blue"}):  # changed here, without the key: no signature
            mesh.requests_session().get("http://users/v1/x")
    finally:
        end()
    unchanged, changed = (c.headers for c in users.calls_to("users"))
    assert unchanged[OVERRIDE_HEADER] == inbound[OVERRIDE_HEADER]
    assert unchanged[OVERRIDE_SIGNATURE_HEADER] == inbound[OVERRIDE_SIGNATURE_HEADER]
    assert changed[OVERRIDE_HEADER] == "users=canary;search=pr-1;billing=blue"
    assert OVERRIDE_SIGNATURE_HEADER not in changed


# -- Thrift ------------------------------------------------------------------------------------------

IDL = """
service Users {
    string get(1: i64 id),
}
"""


@pytest.fixture(scope="module")
def users_thrift(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "variants_users_thrift")


@pytest.mark.parametrize(
    ("service", "route", "variant", "expected_target"),
    [
        ("users-thrift", "haproxy", "canary", "get"),
        ("users-thrift", "envoy", "canary", "users-thrift~canary:get"),
        ("users-thrift", "haproxy", "blue", "users-thrift~blue:get"),  # no HAProxy port: via Envoy
        ("users-header", "envoy", "canary", "get"),
        ("users-header", "haproxy", "canary", "get"),
    ],
)
def test_thrift_calls_reach_the_variant(
    fake_mesh: FakeMesh, users_thrift: Any, service: str, route: str, variant: str, expected_target: str
) -> None:
    fake_mesh.add(service, thrift_reply(f"{variant} answered"), variant=variant)
    fake_mesh.add(service, thrift_reply("main answered"))
    client = fake_mesh.mesh(registry(route)).thrift_client(users_thrift.Users, service)
    with route_overrides({service: variant}):
        assert client.get(1) == f"{variant} answered"
    assert client.get(1) == "main answered"
    first = fake_mesh.calls_to(service)[0]
    assert first.variant == variant
    if service == "users-header":
        assert first.headers[OVERRIDE_HEADER] == f"{service}={variant}"


def test_fake_mesh_refuses_a_variant_the_registry_does_not_declare(fake_mesh: FakeMesh) -> None:
    fake_mesh.mesh(registry())
    with pytest.raises(ValueError, match="declares no variant 'nightly' \\(variants: canary, pr-12\\)"):
        fake_mesh.add("users", reply(200), variant="nightly")


def test_a_variant_with_no_handler_gets_no_healthy_upstream(fake_mesh: FakeMesh) -> None:
    fake_mesh.add("users", reply(200))
    session = fake_mesh.mesh(registry("envoy")).requests_session()
    with route_overrides({"users": "canary"}):
        r = session.get("http://users/v1/x")
    assert r.status_code == 503
    info = call_info(r)
    assert info is not None
    assert info.envoy_error == "no_healthy_upstream"
    fake_mesh.unexpected.clear()


def test_mesh_flags_still_choose_the_route_under_an_override(users: FakeMesh, mesh_flags: MeshFlags) -> None:
    session = users.mesh(registry("haproxy")).requests_session()
    mesh_flags.route("users", "envoy")
    with route_overrides({"users": "canary"}):
        r = session.get("http://users/v1/x")
    info = call_info(r)
    assert info is not None
    assert info.route is Route.ENVOY
    assert info.variant == "canary"


# -- rendering ---------------------------------------------------------------------------------------


def test_envoy_routes_the_variant_header_ahead_of_the_default_route() -> None:
    bootstrap = envoy_bootstrap(load_mapping(registry()))
    listener = bootstrap["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (vhost,) = [v for v in hcm["route_config"]["virtual_hosts"] if v["name"] == "users"]
    assert [r["route"]["cluster"] for r in vhost["routes"]] == ["users:canary", "users:pr-12", "users"]
    assert vhost["routes"][0]["match"] == {
        "prefix": "/",
        "headers": [{"name": "x-mesh-variant", "string_match": {"exact": "canary"}}],
    }
    assert vhost["routes"][-1]["match"] == {"prefix": "/"}
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    endpoint = clusters["users:pr-12"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18012}
    assert {"users-thrift:canary", "users-thrift:blue", "users-header:canary"} <= set(clusters)


def test_envoy_thrift_routes_variants_by_prefix_or_header() -> None:
    bootstrap = envoy_bootstrap(load_mapping(registry()))
    thrift = bootstrap["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = thrift["route_config"]["routes"]
    framed = [r for r in routes if "service_name" in r["match"]]
    assert [(r["match"]["service_name"], r["route"]["cluster"]) for r in framed] == [
        ("users-thrift~canary", "users-thrift:canary"),
        ("users-thrift~blue", "users-thrift:blue"),
        ("users-thrift", "users-thrift"),
    ]
    header = [r for r in routes if "headers" in r["match"]]
    assert [r["route"]["cluster"] for r in header] == ["users-header:canary", "users-header"]
    assert {"name": "x-mesh-variant", "string_match": {"exact": "canary"}} in header[0]["match"]["headers"]


def test_haproxy_gets_a_port_per_variant_that_has_one() -> None:
    text = haproxy_config(load_mapping(registry()))
    assert "frontend users:canary\n    bind 127.0.0.1:16011\n    default_backend users:canary" in text
    assert "backend users:canary\n    server users:canary-1 127.0.0.1:18011" in text
    assert "listen users-thrift:canary\n    mode tcp\n    bind 127.0.0.1:16013" in text
    assert "pr-12" not in text
    assert "blue" not in text


def test_a_mesh_from_a_registry_without_variants_is_unchanged(fake_mesh: FakeMesh) -> None:
    data = registry()
    for svc in data["services"].values():
        svc.pop("variants", None)
    mesh: Mesh = fake_mesh.mesh(data)
    fake_mesh.add("users", reply(200))
    with route_overrides({"users": "canary"}):
        r = mesh.requests_session().get("http://users/v1/x")
    info = call_info(r)
    assert info is not None
    assert info.variant is None
    assert info.route is Route.HAPROXY
    assert fake_mesh.last_call().sent[0].address == "127.0.0.1:16001"
