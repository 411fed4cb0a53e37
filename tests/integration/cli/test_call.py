"""``mesh-client call`` against real Envoy and HAProxy: the route asked for, failover, the flag's
route, bodies and headers, error statuses and timeouts, as a user runs the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_client.cli import main
from mesh_client.testing import Backend

from .helpers import RunningMesh, fields, own_envoy_registry


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_call_takes_the_route_asked_for_and_the_backend_sees_it(
    mesh: RunningMesh, backend: Backend, key: str, route: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", str(mesh.path), "users", "get", f"/v1/users/1?key={key}", "--route", route]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"GET http://users/v1/users/1?key={key}"
    row = fields(out)
    assert row["status"] == "200 OK"
    assert row["route"] == route
    assert row["attempts"] == "1"
    assert row["failed_over"] == "no"
    assert row["envoy_error"] == "-"
    assert row["route_reason"] == f"forced to {route} by call options"
    assert row["body"].endswith("bytes, application/json")
    assert (row["upstream_service_time"] != "-") is (route == "envoy")
    (seen,) = backend.records(key)
    assert seen.method == "GET"
    assert seen.path == "/v1/users/1"
    assert ("x-envoy-expected-rq-timeout-ms" in seen.headers) is (route == "envoy")
    assert ("x-mesh-timeout-ms" in seen.headers) is (route == "haproxy")
    assert json.loads(out.split("application/json\n", 1)[1])["path"] == "/v1/users/1"  # the body, printed


def test_call_forced_to_envoy_that_fails_over_to_haproxy_exits_3(
    mesh: RunningMesh, backend: Backend, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = own_envoy_registry(mesh, backend, tmp_path)  # an Envoy address nothing listens on
    assert main(["call", str(path), "users", "GET", f"/?key={key}", "--route", "envoy"]) == 3
    captured = capsys.readouterr()
    row = fields(captured.out)
    assert (row["status"], row["route"], row["failed_over"]) == ("200 OK", "haproxy", "yes")
    assert captured.err == (
        "mesh-client call: --route envoy was asked for, but the call went via haproxy "
        "(Envoy refused the connection, failed over to HAProxy)\n"
    )
    (seen,) = backend.records(key)  # delivered once, through HAProxy
    assert "x-mesh-timeout-ms" in seen.headers


def test_call_without_route_follows_the_flag(
    mesh: RunningMesh, backend: Backend, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", str(mesh.path), "users", "GET", f"/?key={key}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["route"] == "haproxy"
    assert result["route_reason"] == "flag mesh-route-users = 'haproxy' (FALLTHROUGH)"
    assert len(backend.records(key)) == 1


def test_call_post_delivers_the_body_and_headers(
    mesh: RunningMesh, backend: Backend, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["call", str(mesh.path), "users", "POST", f"/v1/users?key={key}", "-H", "Content-Type: application/json"]
    assert main([*argv, "--route", "envoy", "--data", '{"name": "Ada"}']) == 0
    body = tmp_path / "user.json"
    body.write_bytes(b'{"name": "Grace"}\n')
    assert main([*argv, "--route", "haproxy", "--data", f"@{body}", "-H", "X-Trace-Me: 1"]) == 0
    first, second = backend.records(key)
    assert (first.method, first.body, first.headers["content-type"]) == ("POST", b'{"name": "Ada"}', "application/json")
    assert "x-envoy-expected-rq-timeout-ms" in first.headers
    assert (second.body, second.headers["x-trace-me"]) == (b'{"name": "Grace"}\n', "1")
    assert "x-envoy-expected-rq-timeout-ms" not in second.headers
    routes = [fields(block)["route"] for block in capsys.readouterr().out.split("POST http")[1:]]
    assert routes == ["envoy", "haproxy"]


def test_call_error_status_exits_1_with_the_attempts(
    mesh: RunningMesh, backend: Backend, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # 503 is retried under gateway-error: 3 attempts in all, by Envoy on one route, by the client on the other
    for route in ("envoy", "haproxy"):
        assert (
            main(
                ["call", str(mesh.path), "users", "GET", f"/?status=503&key={key}-{route}", "--route", route, "--json"]
            )
            == 1
        )
        result = json.loads(capsys.readouterr().out)
        assert (result["ok"], result["status"], result["route"], result["attempts"]) == (False, 503, route, 3)
        assert len(backend.records(f"{key}-{route}")) == 3


def test_call_timeout_on_each_route(mesh: RunningMesh, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    slow = f"/?sleep=600&key={key}"
    assert main(["call", str(mesh.path), "users", "GET", slow, "--route", "envoy", "--timeout", "0.2"]) == 1
    row = fields(capsys.readouterr().out)
    assert (row["status"], row["envoy_error"]) == ("504 Gateway Timeout", "timeout")
    assert main(["call", str(mesh.path), "users", "GET", slow, "--route", "haproxy", "--timeout", "0.2"]) == 1
    row = fields(capsys.readouterr().out)
    assert row["error"].startswith("MeshTimeoutError (also requests.exceptions.ReadTimeout): GET to service 'users'")
    assert "status" not in row
