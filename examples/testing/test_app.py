"""Tests of the checkout service (app.py) against the fake mesh: no Envoy, no HAProxy, no users
service, no waiting. Run them as you would in your own service::

    cd examples/testing && python -m pytest -q

Each test gets a fresh ``fake_mesh`` (an in-process Envoy sidecar and HAProxy with Envoy's
timeout and retry semantics, on a virtual clock) and ``mesh_flags`` (the route flags). At the
end of each test, ``fake_mesh`` fails it for calls to a service with no handler and for handlers
that were never used.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import requests
from app import Checkout, UnknownUser

from mesh_client import Route
from mesh_client.testing import FakeMesh, MeshFlags, Reply, UpstreamRequest, reply

ADA = {"id": 7, "name": "Ada"}


def test_profile_comes_from_users(fake_mesh: FakeMesh, checkout: Checkout) -> None:
    fake_mesh.add("users", reply(200, json=ADA), method="GET", path="/v1/users/7")

    profile = checkout.profile(7)

    assert profile.name == "Ada"
    assert profile.fresh
    fake_mesh.assert_called("users", times=1, method="GET", path="/v1/users/7")


def test_unknown_user(fake_mesh: FakeMesh, checkout: Checkout) -> None:
    fake_mesh.add("users", reply(404, json={"error": "no such user"}))

    with pytest.raises(UnknownUser):
        checkout.profile(404)


def test_envoy_retries_two_503s_then_succeeds(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    mesh_flags.route("users", "envoy")
    # one reply per request the service receives; the last one repeats
    fake_mesh.add("users", reply(503), reply(503), reply(200, json=ADA))

    profile = checkout.profile(7)

    assert profile.fresh
    assert (profile.route, profile.attempts) == ("envoy", 3)  # from call_info(response)
    call = fake_mesh.last_call("users")
    assert call.attempts == 3  # requests the users instances received
    assert [r.attempt for r in call.upstream] == [1, 2, 3]
    assert len(call.sent) == 1  # the client sent one request: Envoy did the retries


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_slow_users_gives_a_placeholder_within_the_timeout(
    fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout, route: str
) -> None:
    mesh_flags.route("users", route)
    fake_mesh.add("users", reply(200, json=ADA, delay=30))  # 30 s of virtual time
    started = time.perf_counter()

    profile = checkout.profile(7)

    assert not profile.fresh
    # the registry allows 1 s in all (0.3 s per try, 2 retries): the call gave up on time...
    assert 0.9 <= fake_mesh.clock.elapsed <= 1.0
    assert fake_mesh.last_call("users").attempts == 3
    # ...and the test did not wait for it
    assert time.perf_counter() - started < 5


def test_route_flag_flip_mid_test(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    fake_mesh.add("users", reply(200, json=ADA))

    mesh_flags.route("users", "haproxy")
    assert checkout.profile(7).route == "haproxy"
    mesh_flags.route("users", "envoy")  # seen by the very next call, as with LaunchDarkly
    assert checkout.profile(7).route == "envoy"

    fake_mesh.assert_called("users", times=1, route="haproxy")
    fake_mesh.assert_called("users", times=1, route=Route.ENVOY)
    assert "x-envoy-upstream-rq-timeout-ms" not in fake_mesh.calls[0].headers
    assert "x-envoy-upstream-rq-timeout-ms" in fake_mesh.calls[1].headers


def test_rollout_is_sticky_per_caller(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    fake_mesh.add("users", reply(200, json=ADA))

    for percent, expected in [(0, {"haproxy"}), (100, {"envoy"})]:
        mesh_flags.rollout("users", envoy_percent=percent)
        assert {checkout.profile(i).route for i in range(5)} == expected
    # in between, LaunchDarkly buckets by caller name: this caller always lands on the same side
    mesh_flags.rollout("users", envoy_percent=50)
    assert len({checkout.profile(i).route for i in range(20)}) == 1


def test_envoy_down_fails_over_to_haproxy(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    assert checkout.mesh.config.failover  # mesh.toml: failover = true
    mesh_flags.route("users", "envoy")
    fake_mesh.add("users", reply(200, json=ADA))
    fake_mesh.envoy_down()

    profile = checkout.profile(7)

    assert (profile.fresh, profile.route) == (True, "haproxy")
    assert fake_mesh.last_call("users").routes == [Route.ENVOY, Route.HAPROXY]

    fake_mesh.haproxy_down("users")  # both proxies gone: the page still renders
    assert not checkout.profile(7).fresh


def test_headers_the_users_service_saw(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    mesh_flags.route("users", "envoy")
    fake_mesh.add("users", reply(503), reply(200, json=ADA))

    checkout.profile(7)

    call = fake_mesh.last_call("users")
    # what the client sent to Envoy: the policy from mesh.toml
    assert call.headers["x-envoy-upstream-rq-per-try-timeout-ms"] == "300"
    assert call.headers["x-envoy-max-retries"] == "2"
    # what the instances received from Envoy, on each try
    first, second = call.upstream
    assert first.headers["x-request-id"] == second.headers["x-request-id"]  # one id for the whole call
    assert first.headers["x-envoy-expected-rq-timeout-ms"] == "300"  # the per-try timeout
    assert second.headers["x-envoy-attempt-count"] == "2"
    assert "x-envoy-max-retries" not in first.headers  # Envoy consumes its policy headers


def test_haproxy_route_sends_no_envoy_headers(fake_mesh: FakeMesh, checkout: Checkout) -> None:
    fake_mesh.add("users", reply(200, json=ADA))  # no flag: mesh.toml's default_route, haproxy

    checkout.profile(7)

    seen = fake_mesh.last_call("users").upstream[0].headers
    assert not [h for h in seen if h.startswith("x-envoy-")]
    assert seen["x-mesh-timeout-ms"] == "300"  # the client's own per-try timeout, for the instance
    assert "x-request-id" in seen


def test_profiles_concurrently_with_httpx(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    mesh_flags.route("users", "envoy")

    def users(request: UpstreamRequest) -> Reply:  # a callable handler: the reply depends on the request
        user_id = int(request.path.rsplit("/", 1)[1])
        if user_id == 3:
            return reply(200, json={"id": 3, "name": "slow"}, delay=30)
        return reply(200, json={"id": user_id, "name": f"user {user_id}"})

    fake_mesh.add("users", users, path=re.compile(r"/v1/users/\d+"))

    # no pytest-asyncio needed: run the coroutine to completion inside a plain test
    profiles = asyncio.run(checkout.profiles([1, 2, 3]))

    assert [p.name for p in profiles] == ["user 1", "user 2", "valued customer"]
    assert [p.fresh for p in profiles] == [True, True, False]
    assert len(fake_mesh.calls_to("users")) == 3


def test_rename_is_not_retried(fake_mesh: FakeMesh, mesh_flags: MeshFlags, checkout: Checkout) -> None:
    mesh_flags.route("users", "envoy")
    fake_mesh.add("users", reply(503), reply(204), method="POST")

    with pytest.raises(requests.HTTPError):
        checkout.rename(7, "Ada L.")  # a POST could have been processed: no retry on a 503

    (call,) = fake_mesh.assert_called("users", times=1, method="POST", path="/v1/users/7/name")
    assert call.json() == {"name": "Ada L."}
    assert call.attempts == 1
    assert call.headers["x-envoy-max-retries"] == "0"
    checkout.rename(7, "Ada L.")  # the next reply of the sequence: 204


@pytest.mark.fake_mesh(allow_unexpected=True)
def test_users_not_deployed(fake_mesh: FakeMesh, checkout: Checkout) -> None:
    # no handler for users: the proxy finds no instance (HAProxy's 503 page); the page still renders
    assert not checkout.profile(7).fresh
    assert fake_mesh.unexpected  # what the teardown check would have complained about
