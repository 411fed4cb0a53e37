"""Route flags never fail a call: fallbacks, logging once, file edits, LaunchDarkly's TestData."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldclient import Context, LDClient
from ldclient.config import Config
from ldclient.integrations.test_data import TestData

from mesh_client import Mesh, Route
from mesh_client.registry import FlagsConfig, load_mapping
from mesh_client.routing import CONTEXT_KIND, FlagRouter, make_router, rollout_flag, route_flag, write_flag_file


def registry(flags: dict[str, Any] | None = None, default_route: str = "haproxy") -> dict[str, Any]:
    data: dict[str, Any] = {
        "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001", "default_route": default_route},
        "services": {"users": {"haproxy": "127.0.0.1:20001"}, "orders": {"haproxy": "127.0.0.1:20002"}},
    }
    if flags is not None:
        data["flags"] = flags
    return data


@pytest.fixture
def td() -> TestData:
    return TestData.data_source()


@pytest.fixture
def td_mesh(td: TestData) -> Iterator[Mesh]:
    def factory(flags: FlagsConfig) -> LDClient:
        return LDClient(Config("test-sdk-key", update_processor_class=td, send_events=False), start_wait=1)

    config = load_mapping(registry())
    with Mesh(config, router=make_router(config, client_factory=factory)) as mesh:
        yield mesh


def test_no_flags_table_uses_default_route() -> None:
    with Mesh.from_dict(registry(default_route="envoy")) as mesh:
        decision = mesh.route_for("users")
    assert decision.route is Route.ENVOY
    assert "no flag source" in decision.reason


def test_test_data_flag_routes_and_flips_mid_test(td: TestData, td_mesh: Mesh) -> None:
    td.update(td.flag("mesh-route-users").variations("haproxy", "envoy").variation_for_all(1))
    assert td_mesh.route_for("users").route is Route.ENVOY
    td.update(td.flag("mesh-route-users").variations("haproxy", "envoy").variation_for_all(0))
    assert td_mesh.route_for("users").route is Route.HAPROXY


def test_flag_context_is_the_caller_service_with_destination(td: TestData, td_mesh: Mesh) -> None:
    flag = td.flag("mesh-route-orders").variations("haproxy", "envoy").fallthrough_variation(0)
    td.update(flag.if_match_context(CONTEXT_KIND, "destination", "orders").then_return(1))
    assert td_mesh.route_for("orders").route is Route.ENVOY
    flag = td.flag("mesh-route-orders").clear_rules()
    td.update(flag.if_match_context(CONTEXT_KIND, "key", "checkout").then_return(1))
    assert td_mesh.route_for("orders").route is Route.ENVOY
    flag = td.flag("mesh-route-orders").clear_rules()
    td.update(flag.if_match_context(CONTEXT_KIND, "key", "someone-else").then_return(1))
    assert td_mesh.route_for("orders").route is Route.HAPROXY


def test_missing_flag_falls_back_and_logs_once(td_mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mesh_client")
    decisions = [td_mesh.route_for("users") for _ in range(50)]
    assert {d.route for d in decisions} == {Route.HAPROXY}
    assert "default_route haproxy" in decisions[0].reason
    warnings = [r for r in caplog.records if r.name.startswith("mesh_client")]
    assert len(warnings) == 1
    assert "mesh-route-users" in warnings[0].getMessage()


def test_unexpected_value_keeps_the_last_good_answer(
    td: TestData, td_mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mesh_client")
    td.update(td.flag("mesh-route-users").variations("haproxy", "envoy").variation_for_all(1))
    assert td_mesh.route_for("users").route is Route.ENVOY
    td.update(td.flag("mesh-route-users").variations("haproxy", "sidecar").variation_for_all(1))
    decision = td_mesh.route_for("users")
    assert decision.route is Route.ENVOY
    assert "last good flag value envoy" in decision.reason
    assert "'sidecar'" in caplog.text


def test_a_flag_client_that_raises_never_fails_a_call() -> None:
    class Broken:
        def variation_detail(self, *args: object) -> object:
            raise RuntimeError("flag service exploded")

        def close(self) -> None:
            pass

    config = load_mapping(registry(default_route="envoy"))
    with Mesh(config, router=make_router(config, client_factory=lambda flags: Broken())) as mesh:
        decision = mesh.route_for("users")
    assert decision.route is Route.ENVOY
    assert "exploded" in decision.reason


def wait_until(condition: Any, timeout: float = 3.0) -> None:
    until = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < until, "condition not met in time"
        time.sleep(0.01)


def test_flag_file_edits_are_picked_up_and_a_malformed_file_keeps_the_last_flags(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "flags.json"
    write_flag_file(path, [route_flag("mesh-route-users", "envoy")])
    flags = {"source": "file", "path": "flags.json", "poll_interval": 0.05}
    with Mesh.from_dict(registry(flags), base_dir=tmp_path) as mesh:
        assert mesh.route_for("users").route is Route.ENVOY
        write_flag_file(path, [route_flag("mesh-route-users", "haproxy")])
        wait_until(lambda: mesh.route_for("users").route is Route.HAPROXY)
        # a broken edit: LaunchDarkly logs it and keeps the flags it had
        path.write_text('{"flags": {"mesh-route-users": ')
        wait_until(lambda: "Unable to load flag data" in caplog.text)
        assert mesh.route_for("users").route is Route.HAPROXY
        path.unlink()
        assert mesh.route_for("users").route is Route.HAPROXY


def test_missing_flag_file_at_start_uses_default_route(tmp_path: Path) -> None:
    flags = {"source": "file", "path": str(tmp_path / "absent.json"), "poll_interval": 0.05, "start_wait": 0.2}
    with Mesh.from_dict(registry(flags, default_route="envoy")) as mesh:
        assert mesh.route_for("users").route is Route.ENVOY


def test_rollout_without_context_kind_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flag = rollout_flag("mesh-route-users", 30)
    del flag["fallthrough"]["rollout"]["contextKind"]
    (tmp_path / "flags.json").write_text(json.dumps({"flags": {flag["key"]: flag}}))
    flags = {"source": "file", "path": str(tmp_path / "flags.json")}
    with caplog.at_level(logging.WARNING, logger="mesh_client"), Mesh.from_dict(registry(flags)):
        pass
    assert '"contextKind"' in caplog.text


def test_rollout_flag_splits_by_caller(tmp_path: Path) -> None:
    write_flag_file(tmp_path / "flags.json", [rollout_flag("mesh-route-users", 30)])
    flags = {"source": "file", "path": str(tmp_path / "flags.json")}
    with Mesh.from_dict(registry(flags)) as mesh:
        client = mesh.flag_client
        assert client is not None

        envoy = sum(
            client.variation("mesh-route-users", Context.builder(f"c{i}").kind(CONTEXT_KIND).build(), None) == "envoy"
            for i in range(1000)
        )
    assert 250 <= envoy <= 350


def test_rollout_percent_is_validated() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        rollout_flag("mesh-route-users", 130)


def test_launchdarkly_source_without_key_uses_default_route(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MESH_TEST_LD_KEY", raising=False)
    flags = {"source": "launchdarkly", "sdk_key_env": "MESH_TEST_LD_KEY"}
    with caplog.at_level(logging.WARNING, logger="mesh_client"), Mesh.from_dict(registry(flags)) as mesh:
        assert mesh.route_for("users").route is Route.HAPROXY
    assert "$MESH_TEST_LD_KEY is empty" in caplog.text


def test_file_source_never_touches_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def spy_connect(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        real_connect(self, address)

    def spy_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(host)
        raise OSError("no DNS in this test")

    monkeypatch.setattr(socket.socket, "connect", spy_connect)
    monkeypatch.setattr(socket, "getaddrinfo", spy_getaddrinfo)
    write_flag_file(tmp_path / "flags.json", [rollout_flag("mesh-route-users", 50)])
    flags = {"source": "file", "path": "flags.json", "poll_interval": 0.05}
    with Mesh.from_dict(registry(flags), base_dir=tmp_path) as mesh:
        routes = {mesh.route_for("users").route for _ in range(20)}
        write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", "envoy", version=2)])
        wait_until(lambda: mesh.route_for("users").route is Route.ENVOY)
    assert len(routes) == 1
    assert attempts == []


# --- the per-service decision cache -----------------------------------------------------------


class CountingClient:
    """A flag client answering from ``values`` (service -> flag value), counting evaluations, with
    a flag tracker whose listeners the test fires by hand."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values
        self.evaluations = 0
        self.listeners: list[Any] = []
        self.flag_tracker = self
        self.during_evaluation: Any = None

    def variation_detail(self, key: str, context: object, default: object) -> Any:
        self.evaluations += 1
        if self.during_evaluation is not None:
            self.during_evaluation()
        value = self.values.get(key.removeprefix("mesh-route-"))
        if isinstance(value, Exception):
            raise value
        reason = {"kind": "FALLTHROUGH"} if value is not None else {"kind": "ERROR", "errorKind": "FLAG_NOT_FOUND"}
        return type("Detail", (), {"value": value, "reason": reason})()

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def remove_listener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def flag_changed(self, key: str) -> None:
        for listener in list(self.listeners):
            listener(type("FlagChange", (), {"key": key})())

    def close(self) -> None:
        pass


def counting_router(client: CountingClient, cache_routes: bool = True) -> Any:
    config = load_mapping(registry())
    return make_router(config, client_factory=lambda flags: client, cache_routes=cache_routes)


def test_a_cached_decision_is_evaluated_once_until_invalidated() -> None:
    client = CountingClient({"users": "envoy", "orders": "haproxy"})
    router = counting_router(client)
    assert router.caches_routes
    decisions = [router.decide("users") for _ in range(5)]
    assert {d.route for d in decisions} == {Route.ENVOY}
    assert decisions[0] is decisions[-1]
    assert router.decide("orders").route is Route.HAPROXY
    assert client.evaluations == 2
    client.values["users"] = "haproxy"
    assert router.decide("users").route is Route.ENVOY  # nobody told the router yet
    router.invalidate("orders")  # another service: users keeps its cached answer
    assert router.decide("users").route is Route.ENVOY
    router.invalidate("users")
    assert router.decide("users").route is Route.HAPROXY
    client.values["orders"] = "envoy"
    router.invalidate()  # every service
    assert router.decide("orders").route is Route.ENVOY
    assert client.evaluations == 4
    router.close()


def test_a_flag_change_reported_by_the_sdk_invalidates_every_service() -> None:
    client = CountingClient({"users": "envoy", "orders": "envoy"})
    router = counting_router(client)
    assert len(client.listeners) == 1
    assert router.decide("users").route is Route.ENVOY
    assert router.decide("orders").route is Route.ENVOY
    client.values.update(users="haproxy", orders="haproxy")
    client.flag_changed("mesh-route-users")  # (a prerequisite or segment change names other flags)
    assert router.decide("users").route is Route.HAPROXY
    assert router.decide("orders").route is Route.HAPROXY
    router.close()
    assert client.listeners == []


def test_an_evaluation_overlapping_a_flag_change_is_not_cached() -> None:
    client = CountingClient({"users": "envoy"})
    router = counting_router(client)
    # the flags change (and the router is told) while the evaluation reads the old ones
    client.during_evaluation = router.invalidate
    assert router.decide("users").route is Route.ENVOY
    client.during_evaluation = None
    client.values["users"] = "haproxy"
    assert router.decide("users").route is Route.HAPROXY
    assert client.evaluations == 2


def test_answers_that_may_change_without_a_flag_change_are_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mesh_client")
    client = CountingClient({"users": RuntimeError("flag service exploded")})
    router = counting_router(client)
    assert router.decide("users").route is Route.HAPROXY
    assert router.decide("users").route is Route.HAPROXY
    assert client.evaluations == 2  # an exception is evaluated again on the next call
    client.values["users"] = "envoy"
    assert router.decide("users").route is Route.ENVOY  # and the recovery is seen at once
    # a missing flag depends on the flag data only: cached until the flags change
    assert router.decide("orders").reason == router.decide("orders").reason
    assert client.evaluations == 4
    assert len([r for r in caplog.records if "exploded" in r.getMessage()]) == 1


def test_a_custom_client_is_not_cached_unless_asked(td: TestData, td_mesh: Mesh) -> None:
    client = CountingClient({"users": "envoy"})
    router = counting_router(client, cache_routes=False)
    assert not router.caches_routes
    router.decide("users")
    router.decide("users")
    assert client.evaluations == 2
    assert client.listeners == []
    router.invalidate()  # harmless
    # the default for client_factory: TestData writes flags without telling listeners
    assert isinstance(td_mesh.router, FlagRouter)
    assert not td_mesh.router.caches_routes


def test_test_data_flips_are_seen_by_a_caching_router_after_invalidate(td: TestData) -> None:
    def factory(flags: FlagsConfig) -> LDClient:
        return LDClient(Config("test-sdk-key", update_processor_class=td, send_events=False), start_wait=1)

    config = load_mapping(registry())
    router = make_router(config, client_factory=factory, cache_routes=True)
    try:
        td.update(td.flag("mesh-route-users").variations("haproxy", "envoy").variation_for_all(1))
        assert router.decide("users").route is Route.ENVOY
        td.update(td.flag("mesh-route-users").variations("haproxy", "envoy").variation_for_all(0))
        assert router.decide("users").route is Route.ENVOY  # TestData told nobody: still cached
        router.invalidate()
        assert router.decide("users").route is Route.HAPROXY
    finally:
        router.close()


def test_a_data_source_writing_through_the_update_sink_invalidates_by_itself() -> None:
    """A flag change through LaunchDarkly's update sink (streaming, polling, the mesh_flags
    fixture) reaches the flag-change listener: no invalidate() needed."""
    from ldclient.versioned_data_kind import FEATURES

    sinks: list[Any] = []

    class Source:
        def __init__(self, config: Config, store: Any, ready: Any) -> None:
            self.sink = config.data_source_update_sink or store
            self.ready = ready
            sinks.append(self.sink)

        def start(self) -> None:
            self.sink.init({FEATURES: {"mesh-route-users": route_flag("mesh-route-users", "envoy", 1)}})
            self.ready.set()

        def stop(self) -> None:
            pass

        def initialized(self) -> bool:
            return True

    def factory(flags: FlagsConfig) -> LDClient:
        return LDClient(Config("k", update_processor_class=Source, send_events=False), start_wait=1)

    router = make_router(load_mapping(registry()), client_factory=factory, cache_routes=True)
    try:
        assert router.decide("users").route is Route.ENVOY
        sinks[0].upsert(FEATURES, route_flag("mesh-route-users", "haproxy", 2))
        assert router.decide("users").route is Route.HAPROXY
    finally:
        router.close()


def test_the_file_source_caches_and_sees_every_edit_including_same_version_ones(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    write_flag_file(path, [route_flag("mesh-route-users", "envoy", version=3)])
    flags = {"source": "file", "path": "flags.json", "poll_interval": 0.05}
    with Mesh.from_dict(registry(flags), base_dir=tmp_path) as mesh:
        router = mesh.router
        assert isinstance(router, FlagRouter)
        assert router.caches_routes
        assert mesh.route_for("users").route is Route.ENVOY
        # same version, other route: LaunchDarkly reports no change, the store sees the write
        write_flag_file(path, [route_flag("mesh-route-users", "haproxy", version=3)])
        wait_until(lambda: mesh.route_for("users").route is Route.HAPROXY)
        # a lower version, too
        write_flag_file(path, [route_flag("mesh-route-users", "envoy", version=1)])
        wait_until(lambda: mesh.route_for("users").route is Route.ENVOY)
        # and a rollout (the evaluation context is the same for every call to a service)
        write_flag_file(path, [rollout_flag("mesh-route-users", 0, version=4)])
        wait_until(lambda: mesh.route_for("users").route is Route.HAPROXY)


def test_a_closed_router_forgets_its_cache() -> None:
    client = CountingClient({"users": "envoy"})
    router = counting_router(client)
    assert router.decide("users").route is Route.ENVOY
    router.close()
    decision = router.decide("users")
    assert decision.route is Route.HAPROXY
    assert "no flag source" in decision.reason


def test_no_decision_is_cached_while_the_flag_data_is_being_written() -> None:
    client = CountingClient({"users": "envoy"})
    router = counting_router(client)
    assert router.decide("users").route is Route.ENVOY
    with router.flags_changing():
        client.values["users"] = "haproxy"  # the write
        assert router.decide("users").route is Route.HAPROXY  # not the cached answer
        router.decide("users")
    assert client.evaluations == 3  # neither was cached while the write lasted
    assert router.decide("users").route is Route.HAPROXY
    assert router.decide("users").route is Route.HAPROXY
    assert client.evaluations == 4


def test_once_a_caller_sees_the_new_flag_version_its_calls_follow_it(tmp_path: Path) -> None:
    """The pattern of the demo and the examples: wait for the version, then call at once."""
    path = tmp_path / "flags.json"
    write_flag_file(path, [route_flag("mesh-route-users", "envoy", version=1)])
    flags = {"source": "file", "path": "flags.json", "poll_interval": 0.01}
    with Mesh.from_dict(registry(flags), base_dir=tmp_path) as mesh:
        router = mesh.router
        assert isinstance(router, FlagRouter)
        for version in range(2, 12):
            route = "haproxy" if version % 2 == 0 else "envoy"
            assert mesh.route_for("users").route is not Route(route)
            write_flag_file(path, [route_flag("mesh-route-users", route, version=version)])
            wait_until(lambda v=version: router.flag_version("users") == v)  # type: ignore[misc]
            assert mesh.route_for("users").route is Route(route)
