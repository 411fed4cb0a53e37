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
from mesh_client.routing import CONTEXT_KIND, make_router, rollout_flag, route_flag, write_flag_file


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
