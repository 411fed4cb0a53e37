"""End to end through real Envoy and HAProxy, with requests, httpx and httpx async.

Each test proves its point by what the recording backend received and what the caller got.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mesh_client import MeshConnectError, MeshError, MeshTimeoutError, Route, call_info, call_options
from mesh_client.mesh import Mesh
from mesh_client.registry import load_mapping
from mesh_client.routing import rollout_flag, route_flag, write_flag_file
from mesh_client.sidecar import start_envoy
from mesh_client.testing import Backend

from .conftest import Caller, MeshWorld, registry

ROUTES = [Route.ENVOY, Route.HAPROXY]


def envoy_headers(headers: dict[str, str]) -> list[str]:
    return sorted(name for name in headers if name.startswith("x-envoy"))


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_flag_sends_the_call_the_right_way(world: MeshWorld, caller: Caller, route: Route, key: str) -> None:
    world.set_route(route)
    r = caller.request("GET", f"http://users/v1/users/1?key={key}")
    assert r.status_code == 200
    info = call_info(r)
    assert info is not None
    assert info.route is route
    assert info.service == "users"
    assert "mesh-route-users" in info.route_reason
    (seen,) = world.backend.records(key)
    assert seen.path == "/v1/users/1"
    assert seen.headers["host"] == "users"
    if route is Route.ENVOY:
        # Envoy honoured the client's timeout (1 s) and added its own headers upstream
        assert seen.headers["x-envoy-expected-rq-timeout-ms"] in {"999", "1000"}
        assert seen.headers["x-request-id"]
        assert info.upstream_service_time is not None
    else:
        assert envoy_headers(seen.headers) == []
        # no Envoy here: the client itself sends the request id and the time budget
        assert seen.headers["x-request-id"]
        assert seen.headers["x-mesh-timeout-ms"] in {"999", "1000"}
        assert info.upstream_service_time is None
    # the response looks like a direct one: the caller's own URL
    assert str(r.url) == f"http://users/v1/users/1?key={key}"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_get_failing_twice_with_503_succeeds_on_the_third_attempt(
    world: MeshWorld, caller: Caller, route: Route, key: str
) -> None:
    world.set_route(route)
    r = caller.request("GET", f"http://users/flaky?fail=2&code=503&key={key}")
    assert r.status_code == 200
    assert len(world.backend.records(key)) == 3
    info = call_info(r)
    assert info is not None
    assert info.attempts == 3
    assert info.route is route


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_post_is_attempted_exactly_once(world: MeshWorld, caller: Caller, route: Route, key: str) -> None:
    world.set_route(route)
    r = caller.request("POST", f"http://users/orders?fail=2&code=503&key={key}", content=b"{}")
    assert r.status_code == 503  # returned, not raised: drop-in code calls raise_for_status() itself
    assert len(world.backend.records(key)) == 1
    info = call_info(r)
    assert info is not None
    assert info.attempts == 1


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_caller_set_envoy_headers_cannot_change_the_policy(
    world: MeshWorld, caller: Caller, route: Route, key: str
) -> None:
    world.set_route(route)
    sneaky = {"x-envoy-max-retries": "5", "x-envoy-retry-on": "5xx", "X-Forwarded-For": "8.8.8.8"}
    r = caller.request("POST", f"http://users/orders?fail=2&code=503&key={key}", headers=sneaky, content=b"{}")
    assert r.status_code == 503
    (seen,) = world.backend.records(key)
    assert "x-envoy-max-retries" not in seen.headers
    if route is Route.ENVOY:
        # no X-Forwarded-For from the caller reached Envoy: the request stayed internal
        assert seen.headers.get("x-envoy-internal") == "true"
        assert "8.8.8.8" not in seen.headers.get("x-forwarded-for", "")


def expect_timeout(caller: Caller, route: Route, url: str) -> float:
    """Call ``url`` expecting the route's timeout shape; return the seconds it took.

    Envoy answers a timeout itself (a 504 response, classified); on HAProxy the client's own
    timer raises an error that is both MeshTimeoutError and the library's timeout class.
    """
    started = time.monotonic()
    if route is Route.ENVOY:
        r = caller.request("GET", url)
        assert r.status_code == 504
        info = call_info(r)
        assert info is not None
        assert info.envoy_error == "timeout"
    else:
        with pytest.raises(caller.timeout_error) as raised:
            caller.request("GET", url)
        assert isinstance(raised.value, MeshTimeoutError)
        assert "service 'users'" in str(raised.value)
    return time.monotonic() - started


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_slow_backend_times_out_in_about_the_configured_time(
    world: MeshWorld, caller: Caller, route: Route, key: str
) -> None:
    world.set_route(route)
    elapsed = expect_timeout(caller, route, f"http://users/slow?sleep=2500&key={key}")
    assert 0.9 <= elapsed <= 1.6, f"timed out after {elapsed:.3f} s, configured 1.0 s"


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_call_options_shorten_the_timeout(world: MeshWorld, caller: Caller, route: Route, key: str) -> None:
    world.set_route(route)
    with call_options(timeout=0.3, retries=0):
        elapsed = expect_timeout(caller, route, f"http://users/slow?sleep=1500&key={key}")
    assert 0.25 <= elapsed <= 0.9, f"timed out after {elapsed:.3f} s, asked for 0.3 s"
    assert len(world.backend.records(key)) == 1


def test_unregistered_hosts_pass_through_untouched(world: MeshWorld, caller: Caller, key: str) -> None:
    world.set_route(Route.ENVOY)
    r = caller.request("GET", f"http://{world.backend.address}/direct?key={key}", headers={"x-envoy-foo": "kept"})
    assert r.status_code == 200
    assert call_info(r) is None
    (seen,) = world.backend.records(key)
    assert seen.headers["x-envoy-foo"] == "kept"
    assert "x-envoy-expected-rq-timeout-ms" not in seen.headers


def test_editing_the_flag_file_flips_the_route_within_two_seconds(
    world: MeshWorld, make_caller: Callable[[str, Mesh], Caller], key: str
) -> None:
    world.set_route(Route.HAPROXY)
    c = make_caller("requests", world.mesh)
    info = call_info(c.request("GET", f"http://users/flip?key={key}"))
    assert info is not None
    assert info.route is Route.HAPROXY
    write_flag_file(world.flags_path, [route_flag("mesh-route-users", "envoy")])
    written = time.monotonic()
    while True:
        r = c.request("GET", f"http://users/flip?key={key}")
        info = call_info(r)
        assert info is not None
        if info.route is Route.ENVOY:
            break
        assert time.monotonic() - written < 3.0, "the route did not flip within 3 s"
        time.sleep(0.02)
    took = time.monotonic() - written
    assert took < 2.0
    last = world.backend.records(key)[-1]
    assert last.headers.get("x-envoy-expected-rq-timeout-ms")
    print(f"flag flip seen by the next call after {took * 1000:.0f} ms")


def test_rollout_of_30_percent_splits_callers_about_30_70(world: MeshWorld, tmp_path: Path, key: str) -> None:
    flags = tmp_path / "rollout.json"
    write_flag_file(flags, [rollout_flag("mesh-route-users", envoy_percent=30)])
    callers = 200
    for i in range(callers):
        data = {**world.data, "mesh": {**world.data["mesh"], "caller": f"caller-{i}"}}
        data["flags"] = {**data["flags"], "path": str(flags)}
        with Mesh.from_dict(data) as mesh:
            session = mesh.requests_session()
            r = session.get(f"http://users/rollout?key={key}")
            assert r.status_code == 200
    seen = world.backend.records(key)
    assert len(seen) == callers
    via_envoy = sum(1 for rec in seen if "x-envoy-expected-rq-timeout-ms" in rec.headers)
    share = via_envoy / callers
    print(f"30% rollout: {via_envoy} of {callers} callers via Envoy ({share:.0%})")
    assert 0.2 <= share <= 0.4


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_envoy_stopped_fails_over_to_haproxy(
    world: MeshWorld,
    backend: Backend,
    envoy_bin: str,
    tmp_path: Path,
    make_caller: Callable[[str, Mesh], Caller],
    kind: str,
    key: str,
) -> None:
    # a second Envoy of our own, so the session's one keeps running for the other tests
    data = registry(backend, world.flags_path)
    data["services"]["users"]["haproxy"] = world.data["services"]["users"]["haproxy"]
    config = load_mapping(data)
    envoy = start_envoy(config, tmp_path, binary=envoy_bin)
    try:
        with Mesh(config) as mesh, call_options(route="envoy"):
            c = make_caller(kind, mesh)
            before = call_info(c.request("GET", f"http://users/a?key={key}"))
            assert before is not None
            assert before.route is Route.ENVOY
            envoy.stop()
            r = c.request("POST", f"http://users/b?key={key}", content=b"{}")
            assert r.status_code == 200
            after = call_info(r)
            assert after is not None
            assert after.failed_over
            assert after.route is Route.HAPROXY
    finally:
        envoy.stop()
    first, second = world.backend.records(key)
    assert "x-envoy-expected-rq-timeout-ms" in first.headers
    assert envoy_headers(second.headers) == []
    assert second.method == "POST"


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_envoy_stopped_without_failover_is_a_clear_error(
    world: MeshWorld,
    backend: Backend,
    envoy_bin: str,
    tmp_path: Path,
    make_caller: Callable[[str, Mesh], Caller],
    kind: str,
    key: str,
) -> None:
    data = registry(backend, world.flags_path, failover=False)
    config = load_mapping(data)
    envoy = start_envoy(config, tmp_path, binary=envoy_bin)
    envoy.stop()
    with Mesh(config) as mesh, call_options(route="envoy"):
        c = make_caller(kind, mesh)
        with pytest.raises(c.connect_error) as raised:
            c.request("GET", f"http://users/a?key={key}")
    err = raised.value
    assert isinstance(err, MeshConnectError)
    assert isinstance(err, MeshError)
    assert "Envoy sidecar" in str(err)
    assert "failover is off" in str(err)
    assert world.backend.records(key) == []


@pytest.mark.parametrize("kind", ["requests", "httpx", "httpx-async"])
def test_proxy_environment_variables_never_capture_mesh_calls(
    world: MeshWorld, make_caller: Callable[[str, Mesh], Caller], monkeypatch: pytest.MonkeyPatch, kind: str, key: str
) -> None:
    # a proxy that does not exist: a mesh call sent to it would fail
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    world.set_route(Route.HAPROXY)
    c = make_caller(kind, world.mesh)
    r = c.request("GET", f"http://users/through-proxy-env?key={key}")
    assert r.status_code == 200
    assert len(world.backend.records(key)) == 1
