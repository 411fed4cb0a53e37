"""The client's mesh behaviour, tested on ``fake_mesh`` (no processes, virtual time).

What the fake does is checked against real Envoy and HAProxy in
tests/integration/test_conformance.py; here it stands in for them to test the client: routes,
retries, timeouts, failover, the circuit, the retry budget, deadlines, headers, Thrift.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import requests
from thriftpy2.thrift import TApplicationException

import mesh_client
from mesh_client import (
    DeadlineExceeded,
    Mesh,
    MeshConnectError,
    MeshTimeoutError,
    Route,
    ThriftRoutingError,
    call_info,
    call_options,
)
from mesh_client.testing import FakeMesh, MeshFlags, UpstreamRequest, hang, refuse, reply, reset, thrift_reply

from ..conftest import load_idl

REGISTRY: dict[str, Any] = {
    "mesh": {
        "caller": "checkout",
        "envoy_http": "127.0.0.1:15001",
        "envoy_thrift": "127.0.0.1:15002",
        "envoy_admin": "127.0.0.1:15000",
        "default_route": "envoy",
    },
    "flags": {"source": "none"},
    "services": {
        "users": {
            "haproxy": "127.0.0.1:16001",
            "endpoints": ["127.0.0.1:18001"],
            "timeout": 2.0,
            "retries": 2,
            "retry_on": ["gateway-error", "connect-failure", "reset"],
        },
        "billing": {"haproxy": "127.0.0.1:16002", "endpoints": ["127.0.0.1:18002"]},
        "users-thrift": {
            "protocol": "thrift",
            "haproxy": "127.0.0.1:16003",
            "endpoints": ["127.0.0.1:18003"],
            "timeout": 1.0,
            "retries": 2,
            "retry_on": ["connect-failure", "reset"],
            "idempotent_methods": ["get"],
        },
    },
}


def registry(**mesh: Any) -> dict[str, Any]:
    return {**REGISTRY, "mesh": {**REGISTRY["mesh"], **mesh}}


@pytest.fixture
def mesh(fake_mesh: FakeMesh) -> Mesh:
    return fake_mesh.mesh(REGISTRY)


def get(mesh: Mesh, kind: str, url: str, **kwargs: Any) -> Any:
    """One GET with the given client kind."""
    if kind == "requests":
        with mesh.requests_session() as session:
            return session.get(url, **kwargs)
    if kind == "httpx":
        with mesh.httpx_client() as client:
            return client.get(url, **kwargs)

    async def main() -> httpx.Response:
        async with mesh.httpx_async_client() as client:
            return await client.get(url, **kwargs)

    return asyncio.run(main())


KINDS = ["requests", "httpx", "httpx-async"]


# -- replies, retries, timeouts ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_canned_reply_reaches_the_caller(fake_mesh: FakeMesh, mesh: Mesh, kind: str) -> None:
    fake_mesh.add("users", reply(200, json={"id": 1}, headers={"x-app": "yes"}))
    response = get(mesh, kind, "http://users/v1/users/1?full=1")
    assert response.status_code == 200
    assert response.json() == {"id": 1}
    assert response.headers["x-app"] == "yes"
    assert response.headers["x-envoy-upstream-service-time"] == "0"
    call = fake_mesh.assert_called("users", times=1, method="GET", path="/v1/users/1", route="envoy")[0]
    assert call.upstream[0].query == {"full": "1"}


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_failing_twice_then_succeeding_takes_three_attempts(fake_mesh: FakeMesh, mesh: Mesh, route: str) -> None:
    fake_mesh.add("users", reply(503), reply(503), reply(200))
    with call_options(route=route):
        response = get(mesh, "requests", "http://users/x")
    assert response.status_code == 200
    assert call_info(response).attempts == 3
    call = fake_mesh.last_call("users")
    assert call.attempts == 3
    # Envoy retries inside one request from the client; on HAProxy the client sends each attempt
    assert len(call.sent) == (1 if route == "envoy" else 3)
    if route == "envoy":
        assert [u.headers["x-envoy-attempt-count"] for u in call.upstream] == ["1", "2", "3"]


def test_a_503_after_the_last_retry_is_returned_not_raised(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(503))
    response = get(mesh, "requests", "http://users/x")
    assert response.status_code == 503
    assert call_info(response).attempts == 3
    with pytest.raises(requests.HTTPError):
        response.raise_for_status()


def test_a_30_second_delay_passes_in_virtual_time(fake_mesh: FakeMesh) -> None:
    data = registry()
    data["services"] = {**REGISTRY["services"], "users": {**REGISTRY["services"]["users"], "timeout": 60.0}}
    mesh = fake_mesh.mesh(data)
    fake_mesh.add("users", reply(200, delay=30.0))
    response = get(mesh, "httpx", "http://users/slow")
    assert response.status_code == 200
    assert call_info(response).elapsed == pytest.approx(30.0)
    assert response.headers["x-envoy-upstream-service-time"] == "30000"
    assert fake_mesh.clock.elapsed == pytest.approx(30.0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_total_timeout_on_envoy_is_a_504_from_envoy(fake_mesh: FakeMesh, mesh: Mesh, kind: str) -> None:
    fake_mesh.add("users", hang())
    response = get(mesh, kind, "http://users/x")
    assert response.status_code == 504
    info = call_info(response)
    assert info.envoy_error == "timeout"
    assert info.elapsed == pytest.approx(2.0)


@pytest.mark.parametrize(("kind", "native"), [("requests", requests.Timeout), ("httpx", httpx.TimeoutException)])
def test_the_total_timeout_on_haproxy_raises_the_librarys_timeout(
    fake_mesh: FakeMesh, mesh: Mesh, kind: str, native: type[Exception]
) -> None:
    fake_mesh.add("users", hang())
    with call_options(route="haproxy"), pytest.raises(native) as caught:
        get(mesh, kind, "http://users/x")
    assert isinstance(caught.value, MeshTimeoutError)
    assert caught.value.info is not None
    assert caught.value.info.elapsed == pytest.approx(2.0)


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_a_per_try_timeout_is_retried_inside_the_total(fake_mesh: FakeMesh, mesh: Mesh, route: str) -> None:
    fake_mesh.add("users", reply(200, delay=5.0), reply(200, json="second"))
    with call_options(route=route, per_try_timeout=0.5):
        response = get(mesh, "requests", "http://users/x")
    assert response.json() == "second"
    info = call_info(response)
    assert info.attempts == 2
    assert 0.5 <= info.elapsed <= 0.5 + 0.025 + 0.01  # one per-try timeout plus the first back-off


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_a_post_is_sent_once(fake_mesh: FakeMesh, mesh: Mesh, route: str) -> None:
    fake_mesh.add("users", reply(503), reply(200))
    with call_options(route=route), mesh.requests_session() as session:
        response = session.post("http://users/orders", json={"item": 1})
    assert response.status_code == 503
    call = fake_mesh.last_call()
    assert call.attempts == 1
    assert call.upstream[0].json() == {"item": 1}


def test_a_reset_is_retried_only_with_a_retry_on_that_covers_it(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reset(), reply(200))
    assert get(mesh, "requests", "http://users/a").status_code == 200
    fake_mesh.add("billing", reset(), reply(200))
    with call_options(retries=2, retry_on=["connect-failure"]):
        response = get(mesh, "requests", "http://billing/b")
    assert response.status_code == 503
    assert call_info(response).envoy_error == "upstream_reset"


def test_a_refused_connection_never_reaches_the_upstream(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", refuse())
    response = get(mesh, "requests", "http://users/x")
    assert response.status_code == 503
    assert call_info(response).envoy_error == "connect_failure"
    assert fake_mesh.last_call().attempts == 0


def test_a_callable_handler_sees_the_request_as_the_upstream_does(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    seen: list[UpstreamRequest] = []

    def handler(request: UpstreamRequest) -> Any:
        seen.append(request)
        return reply(201, json={"echo": request.json(), "path": request.path})

    fake_mesh.add("users", handler, method="PUT")
    with mesh.requests_session() as session:
        response = session.put("http://users/v1/users/7", json={"name": "ada"}, headers={"x-envoy-max-retries": "9"})
    assert response.status_code == 201
    assert response.json() == {"echo": {"name": "ada"}, "path": "/v1/users/7"}
    upstream = seen[0].headers
    assert upstream["x-request-id"]
    assert upstream["x-envoy-expected-rq-timeout-ms"] == "2000"
    assert upstream["x-envoy-internal"] == "true"
    assert "x-envoy-max-retries" not in upstream  # Envoy consumes its control headers
    # the caller's own x-envoy-max-retries never reached the proxy: the policy's did (a PUT is idempotent)
    assert fake_mesh.last_call().headers["x-envoy-max-retries"] == "2"


def test_handlers_match_by_method_and_path_in_the_order_added(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200, text="one"), path="/v1/users/1")
    fake_mesh.add("users", reply(404), method="GET")
    with mesh.requests_session() as session:
        assert session.get("http://users/v1/users/1").text == "one"
        assert session.get("http://users/v1/users/2").status_code == 404


def test_a_service_envoy_has_no_route_for_is_a_404_no_route(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.envoy_forgets("users")
    response = get(mesh, "requests", "http://users/x")
    assert response.status_code == 404
    assert call_info(response).envoy_error == "no_route"


@pytest.mark.fake_mesh(allow_unexpected=True)
def test_a_service_without_handler_is_503_no_healthy_upstream(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    response = get(mesh, "requests", "http://users/x")
    assert response.status_code == 503
    assert call_info(response).envoy_error == "no_healthy_upstream"
    (problem,) = fake_mesh.problems()
    assert "GET /x to users via envoy" in problem
    assert "fake_mesh.add('users', reply(200))" in problem


# -- failover, the circuit, the budget -----------------------------------------------------------


def test_envoy_down_fails_over_and_the_circuit_skips_it_until_the_pause_ends(fake_mesh: FakeMesh) -> None:
    mesh = fake_mesh.mesh(registry(failover=True))
    fake_mesh.add("users", reply(200))
    fake_mesh.envoy_down()
    first = get(mesh, "requests", "http://users/1")
    assert call_info(first).route is Route.HAPROXY
    assert call_info(first).failed_over
    assert fake_mesh.last_call().routes == [Route.ENVOY, Route.HAPROXY]
    second = get(mesh, "requests", "http://users/2")
    assert fake_mesh.last_call().routes == [Route.HAPROXY]  # the circuit is open: no connect attempt
    assert "circuit open" in call_info(second).route_reason
    fake_mesh.envoy_down(False)
    fake_mesh.advance(1.1)  # the circuit's first pause is 1 s
    third = get(mesh, "requests", "http://users/3")
    assert call_info(third).route is Route.ENVOY
    assert not call_info(third).failed_over


def test_envoy_down_without_failover_is_a_connect_error(fake_mesh: FakeMesh) -> None:
    mesh = fake_mesh.mesh(registry(failover=False))
    fake_mesh.envoy_down()
    with pytest.raises(MeshConnectError) as caught:
        get(mesh, "httpx", "http://users/x")
    assert isinstance(caught.value, httpx.ConnectError)
    assert "nothing was sent" in str(caught.value)


def test_the_retry_budget_caps_retries_when_everything_fails(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(503))
    with call_options(route="haproxy"), mesh.requests_session() as session:
        infos = [call_info(session.get(f"http://users/{i}")) for i in range(200)]
    upstream = sum(c.attempts for c in fake_mesh.calls)
    assert any(i.retry_budget_exhausted for i in infos)
    # 200 calls with 2 retries each would be 600 requests; the budget allows 20 % of the calls plus
    # its floor of 10 retries per second over its 10 s window (all 200 calls fit in that window)
    assert upstream <= 200 * 1.2 + 10 * 10, upstream


# -- deadlines -----------------------------------------------------------------------------------


def test_the_callers_deadline_shortens_the_timeout_the_upstream_is_told(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200))
    with mesh_client.deadline(0.5):
        get(mesh, "requests", "http://users/x")
    assert fake_mesh.last_call().upstream[0].headers["x-envoy-expected-rq-timeout-ms"] == "500"


def test_a_passed_deadline_sends_nothing(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    with mesh_client.deadline(0.2):
        fake_mesh.clock.wait(0.3)
        with pytest.raises(DeadlineExceeded):
            get(mesh, "requests", "http://users/x")
    assert fake_mesh.calls == []


def test_concurrent_async_calls_each_wait_on_their_own_timeline(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200, delay=0.5))

    async def main() -> list[httpx.Response]:
        async with mesh.httpx_async_client() as client:
            return await asyncio.gather(*(client.get(f"http://users/{i}") for i in range(10)))

    responses = asyncio.run(main())
    assert [call_info(r).elapsed for r in responses] == [pytest.approx(0.5)] * 10


# -- flags -----------------------------------------------------------------------------------------


def test_mesh_flags_route_and_flip_mid_test(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> None:
    mesh_flags.route("users", "haproxy")
    mesh = fake_mesh.mesh(REGISTRY)
    fake_mesh.add("users", reply(200))
    with mesh.requests_session() as session:
        assert call_info(session.get("http://users/1")).route is Route.HAPROXY
        mesh_flags.route("users", "envoy")
        assert call_info(session.get("http://users/2")).route is Route.ENVOY
        mesh_flags.rollout("users", envoy_percent=0)
        assert call_info(session.get("http://users/3")).route is Route.HAPROXY
        mesh_flags.clear("users")  # as with LaunchDarkly, a deleted flag leaves the last good value
        assert call_info(session.get("http://users/4")).route is Route.HAPROXY
    with fake_mesh.mesh(REGISTRY) as fresh:  # a new mesh never saw a value: default_route
        assert fresh.route_for("users").route is Route.ENVOY
        assert "default_route" in fresh.route_for("users").reason
    fake_mesh.assert_called("users", times=3, route="haproxy")


def test_a_rollout_splits_callers_by_launchdarkly_bucketing(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> None:
    mesh_flags.rollout("users", envoy_percent=30)
    fake_mesh.add("users", reply(200))
    routes = []
    for i in range(100):
        with fake_mesh.mesh(registry(caller=f"caller-{i}")) as mesh:
            routes.append(mesh.route_for("users").route)
    assert 15 <= routes.count(Route.ENVOY) <= 45
    fake_mesh._handlers.clear()  # no call was made: the rollout was read from the flags only


# -- assertion helpers ------------------------------------------------------------------------------


def test_assert_called_says_what_was_expected_and_what_happened(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200))
    get(mesh, "requests", "http://users/a")
    with pytest.raises(AssertionError) as caught:
        fake_mesh.assert_called("users", times=2, route="haproxy")
    text = str(caught.value)
    assert "expected 2 call(s) to 'users' (any request via haproxy), got 0" in text
    assert "1. GET /a to users via envoy: 1 upstream request(s), 200" in text
    with pytest.raises(AssertionError, match="expected no call to 'users'"):
        fake_mesh.assert_not_called("users")


def test_bad_handlers_are_refused_with_the_reason() -> None:
    with FakeMesh() as fake:
        fake.mesh(REGISTRY)
        with pytest.raises(ValueError, match="'nope' is not a service of the registry"):
            fake.add("nope", reply(200))
        with pytest.raises(ValueError, match="needs at least one reply"):
            fake.add("users")
    with pytest.raises(ValueError, match="status must be an HTTP status code"):
        reply(99)
    with pytest.raises(ValueError, match="at most one of json=, text= and body="):
        reply(200, json={}, text="x")
    with pytest.raises(ValueError, match="delay must be"):
        reply(200, delay=-1)


def test_the_fake_leaves_nothing_behind() -> None:
    from mesh_client import clock, wire

    with FakeMesh() as fake:
        mesh = fake.mesh(REGISTRY)
        assert wire.current_wire() is fake
    assert wire.current_wire() is None
    assert clock._virtual is None
    assert mesh.closed


# -- Thrift ----------------------------------------------------------------------------------------

IDL = """
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users {
    User get(1: i64 id) throws (1: NotFound nf),
    void touch(1: i64 id),
}
"""


@pytest.fixture(scope="module")
def users_thrift(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "fake_mesh_users_thrift")


class Users:
    def __init__(self, users: Any) -> None:
        self.users = users

    def get(self, id: int) -> Any:
        if id < 0:
            raise self.users.NotFound(message=f"no user {id}")
        return self.users.User(id=id, name=f"user-{id}")

    def touch(self, id: int) -> None:
        raise RuntimeError("touch is broken")


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_thrift_calls_reach_a_handler_object(fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any, route: str) -> None:
    fake_mesh.add("users-thrift", Users(users_thrift))
    with call_options(route=route), mesh.thrift_client(users_thrift.Users, "users-thrift") as client:
        assert client.get(7).name == "user-7"
        with pytest.raises(users_thrift.NotFound):
            client.get(-1)
        with pytest.raises(TApplicationException):
            client.touch(1)
    call = fake_mesh.assert_called("users-thrift", times=3)[0]
    assert call.upstream[0].args == {"id": 7}
    assert call.path == "get"


def test_thrift_timeouts_are_the_clients_and_not_retried(fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any) -> None:
    fake_mesh.add("users-thrift", thrift_reply(delay=5.0))
    with mesh.thrift_client(users_thrift.Users, "users-thrift") as client, pytest.raises(MeshTimeoutError) as caught:
        client.get(1)
    assert isinstance(caught.value, TimeoutError)  # what a thriftpy2 client raises
    assert fake_mesh.last_call().attempts == 1  # retry-on has no "5xx": the server may have done the work
    assert caught.value.info is not None
    assert caught.value.info.elapsed == pytest.approx(1.0)


def test_thrift_refused_connections_are_retried(fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any) -> None:
    fake_mesh.add("users-thrift", refuse(), thrift_reply(users_thrift.User(id=2, name="second")))
    with call_options(route="haproxy"), mesh.thrift_client(users_thrift.Users, "users-thrift") as client:
        assert client.get(2).name == "second"
    assert fake_mesh.last_call().attempts == 1  # the refused attempt never reached the server


def test_thrift_service_without_handler_is_envoys_no_healthy_upstream(
    fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any
) -> None:
    with mesh.thrift_client(users_thrift.Users, "users-thrift") as client, pytest.raises(ThriftRoutingError) as caught:
        client.get(1)
    assert caught.value.kind == "no_healthy_upstream"
    assert not caught.value.may_have_reached_server
    fake_mesh.unexpected.clear()


def test_a_mesh_that_outlives_a_fake_starts_its_circuit_and_budget_afresh() -> None:
    """An application's mesh, built once, used by one fake_mesh test after another: the circuit
    opened and the budget spent in virtual time of one test do not carry into the next."""
    mesh = Mesh.from_dict(registry(failover=True))
    try:
        with FakeMesh() as first:
            first.add("users", reply(503))
            first.envoy_down()
            with call_options(route="envoy"), mesh.requests_session() as session:
                infos = [call_info(session.get(f"http://users/{i}")) for i in range(200)]
            assert infos[-1].failed_over  # the circuit is open...
            assert Route.ENVOY not in first.last_call().routes  # (no connect attempt to Envoy)
            assert any(i.retry_budget_exhausted for i in infos)  # ...and the budget spent
        with FakeMesh() as second:
            second.add("users", reply(503), reply(200))
            response = get(mesh, "requests", "http://users/again")
            assert second.last_call().routes == [Route.ENVOY]  # the sidecar is tried again
            info = call_info(response)
            assert response.status_code == 200
            assert info.attempts == 2
            assert not info.retry_budget_exhausted
    finally:
        mesh.close()
