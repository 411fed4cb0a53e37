"""``mesh-client doctor`` and ``mesh-client call`` against real Envoy and HAProxy.

The commands run in-process through a parser built with their ``add_parser`` (as ``cli.py`` wires
them), on registries written to a temporary folder as TOML, as a user would pass them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh_client import call_cmd, doctor
from mesh_client.registry import MeshConfig, load_file
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import SidecarProcess, envoy_bootstrap, start_envoy, start_haproxy
from mesh_client.testing import Backend

from .conftest import registry


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mesh-client")
    sub = p.add_subparsers(dest="command", required=True)
    doctor.add_parser(sub)
    call_cmd.add_parser(sub)
    args = p.parse_args(argv)
    code: int = args.run(args)
    return code


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are the same in TOML


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    lines = []
    for table in ("mesh", "flags"):
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in data[table].items()), ""]
    for name, service in data["services"].items():
        scalars = {k: v for k, v in service.items() if not isinstance(v, dict)}
        lines += [f"[services.{name}]", *(f"{k} = {toml_value(v)}" for k, v in scalars.items()), ""]
        for key, table in service.items():
            if isinstance(table, dict):  # a sub-table: [services.NAME.KEY]
                lines += [f"[services.{name}.{key}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines))
    return path


def verdicts(out: str) -> dict[str, str]:
    """check name -> verdict, from doctor's output."""
    found = {}
    for line in out.splitlines():
        verdict = line.split(None, 1)[0] if line.strip() else ""
        if verdict in ("OK", "WARN", "FAIL", "SKIP"):
            found[line[6:26].strip()] = verdict
    return found


def line_of(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln[6:26].strip() == name]
    return line


def fields(out: str) -> dict[str, str]:
    """The ``name  value`` rows of call's text output (the body excluded)."""
    rows = {}
    for line in out.splitlines()[1:]:
        if not line.startswith("  "):
            break
        name, _, value = line.strip().partition(" ")
        rows[name] = value.strip()
    return rows


@dataclass
class RunningMesh:
    """A registry file and its running proxies."""

    path: Path
    config: MeshConfig
    data: dict[str, Any]
    envoy: SidecarProcess
    haproxy: SidecarProcess


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[RunningMesh]:
    work = tmp_path_factory.mktemp("cli")
    flags = work / "flags.json"
    write_flag_file(flags, [route_flag("mesh-route-users", "haproxy")])
    data = registry(backend, flags)
    path = write_toml(work / "mesh.toml", data)
    config = load_file(path)
    envoy = start_envoy(config, work / "envoy", binary=envoy_bin)
    try:
        haproxy = start_haproxy(config, work / "haproxy", binary=haproxy_bin)
    except BaseException:
        envoy.stop()
        raise
    try:
        yield RunningMesh(path, config, data, envoy, haproxy)
    finally:
        haproxy.stop()
        envoy.stop()


# -- doctor ----------------------------------------------------------------------------------------


def test_doctor_on_a_healthy_mesh_is_all_ok(mesh: RunningMesh, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["doctor", str(mesh.path)]) == 0
    out = capsys.readouterr().out
    assert verdicts(out) == {
        "registry": "OK",
        "envoy admin": "OK",
        "envoy egress": "OK",
        "envoy vhost users": "OK",
        "envoy headers": "OK",
        "envoy reporting": "OK",
        "haproxy users": "OK",
        "flags": "OK",
        "route users": "OK",
    }, out
    headers = line_of(out, "envoy headers")
    assert "use_remote_address true, internal_address_config covers 127.0.0.1" in headers
    # the rendered routes report attempt counts, so the retry probe decides, deterministically
    assert "retry probe: asked to retry status 200 once, Envoy answered after 2 attempts" in headers
    assert "haproxy: flag mesh-route-users = 'haproxy'" in line_of(out, "route users")
    assert line_of(out, "envoy reporting").endswith(
        "virtual host users: include_attempt_count_in_response and include_request_attempt_count set"
    )
    assert out.splitlines()[-1] == "9 checks: 9 OK, 0 WARN, 0 FAIL: healthy"


def own_envoy_registry(mesh: RunningMesh, backend: Backend, tmp_path: Path) -> tuple[Path, MeshConfig]:
    """A registry file with Envoy addresses of its own (nothing listens there yet), the running
    HAProxy and the flag file; and its config."""
    data = registry(backend, Path(mesh.data["flags"]["path"]))
    data["services"]["users"]["haproxy"] = mesh.data["services"]["users"]["haproxy"]  # the running HAProxy
    path = write_toml(tmp_path / "mesh.toml", data)
    return path, load_file(path)


def egress_hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    """The HTTP connection manager of a rendered bootstrap's egress listener."""
    hcm: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def test_doctor_fails_the_header_check_of_an_envoy_without_internal_address_config(
    mesh: RunningMesh, tmp_path: Path, backend: Backend, envoy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = own_envoy_registry(mesh, backend, tmp_path)
    bootstrap = envoy_bootstrap(config)
    del egress_hcm(bootstrap)[
        "internal_address_config"
    ]  # what an Envoy >= 1.36 configured before the change looks like
    with start_envoy(config, tmp_path, binary=envoy_bin, bootstrap=bootstrap):
        assert run(["doctor", str(path)]) == 1
    out = capsys.readouterr().out
    found = verdicts(out)
    assert found["envoy headers"] == "FAIL", out
    assert [name for name, verdict in found.items() if verdict != "OK"] == ["envoy headers"], out
    line = line_of(out, "envoy headers")
    assert "Envoy ignores the client's x-envoy-* headers" in line
    assert "listener egress_http: it has no internal_address_config" in line
    assert "Envoy answered 200 after 1 attempt (the retry headers were removed)" in line
    assert (
        "-> fix: on the egress HTTP connection manager set use_remote_address: true and internal_address_config" in line
    )
    assert "127.0.0.0, prefix_len: 8" in line


def test_doctor_names_the_reporting_settings_a_stock_envoy_config_lacks(
    mesh: RunningMesh, tmp_path: Path, backend: Backend, envoy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # a control plane's config: no attempt counts either way, and the router suppresses x-envoy-* headers
    path, config = own_envoy_registry(mesh, backend, tmp_path)
    bootstrap = envoy_bootstrap(config)
    hcm = egress_hcm(bootstrap)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    del vhost["include_attempt_count_in_response"], vhost["include_request_attempt_count"]
    hcm["http_filters"][0]["typed_config"]["suppress_envoy_headers"] = True
    with start_envoy(config, tmp_path, binary=envoy_bin, bootstrap=bootstrap):
        assert run(["doctor", str(path)]) == 0  # calls work: warnings only
    out = capsys.readouterr().out
    found = verdicts(out)
    assert [name for name, verdict in found.items() if verdict != "OK"] == ["envoy reporting"], out
    line = line_of(out, "envoy reporting")
    assert line.startswith(
        "WARN  envoy reporting      include_attempt_count_in_response is not set on virtual host users: "
        "call_info().attempts stays 1, and the retry budget charges every retryable answer all the retries Envoy "
        "was allowed"
    ), line
    assert "; include_request_attempt_count is not set on virtual host users: the service is not told" in line
    assert (
        "; the router filter sets suppress_envoy_headers: the called service gets no x-envoy-expected-rq-timeout-ms"
        in line
    )
    assert (
        "-> fix: set include_attempt_count_in_response: true and include_request_attempt_count: true on the virtual "
        "hosts named; remove suppress_envoy_headers from the router filter" in line
    )
    # with no count in Envoy's answers, the header check decides by the timeout probe and the config
    assert "timeout probe" in line_of(out, "envoy headers")


def test_doctor_fails_the_port_of_a_stopped_haproxy(
    mesh: RunningMesh, tmp_path: Path, backend: Backend, haproxy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = registry(backend, Path(mesh.data["flags"]["path"]))
    for key in ("envoy_http", "envoy_admin"):  # the running Envoy, a HAProxy of its own
        data["mesh"][key] = mesh.data["mesh"][key]
    path = write_toml(tmp_path / "mesh.toml", data)
    haproxy = start_haproxy(load_file(path), tmp_path / "haproxy", binary=haproxy_bin)
    haproxy.stop()
    assert run(["doctor", str(path), "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    found = verdicts(out)
    assert [name for name, verdict in found.items() if verdict != "OK"] == ["haproxy users"], out
    line = line_of(out, "haproxy users")
    assert line.startswith(f"FAIL  haproxy users        {data['services']['users']['haproxy']} refused the connection")
    assert "-> fix: start HAProxy (SmartStack) for this machine, or set services.users.haproxy" in line
    # the route line says the service's current route goes through the failed port
    assert "(but haproxy users failed above)" in line_of(out, "route users")


# -- call ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["envoy", "haproxy"])
def test_call_takes_the_route_asked_for_and_the_backend_sees_it(
    mesh: RunningMesh, backend: Backend, key: str, route: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["call", str(mesh.path), "users", "get", f"/v1/users/1?key={key}", "--route", route]) == 0
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
    assert run(["call", str(path), "users", "GET", f"/?key={key}", "--route", "envoy"]) == 3
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
    assert run(["call", str(mesh.path), "users", "GET", f"/?key={key}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["route"] == "haproxy"
    assert result["route_reason"] == "flag mesh-route-users = 'haproxy' (FALLTHROUGH)"
    assert len(backend.records(key)) == 1


def test_call_post_delivers_the_body_and_headers(
    mesh: RunningMesh, backend: Backend, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["call", str(mesh.path), "users", "POST", f"/v1/users?key={key}", "-H", "Content-Type: application/json"]
    assert run([*argv, "--route", "envoy", "--data", '{"name": "Ada"}']) == 0
    body = tmp_path / "user.json"
    body.write_bytes(b'{"name": "Grace"}\n')
    assert run([*argv, "--route", "haproxy", "--data", f"@{body}", "-H", "X-Trace-Me: 1"]) == 0
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
            run(["call", str(mesh.path), "users", "GET", f"/?status=503&key={key}-{route}", "--route", route, "--json"])
            == 1
        )
        result = json.loads(capsys.readouterr().out)
        assert (result["ok"], result["status"], result["route"], result["attempts"]) == (False, 503, route, 3)
        assert len(backend.records(f"{key}-{route}")) == 3


def test_call_timeout_on_each_route(mesh: RunningMesh, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    slow = f"/?sleep=600&key={key}"
    assert run(["call", str(mesh.path), "users", "GET", slow, "--route", "envoy", "--timeout", "0.2"]) == 1
    row = fields(capsys.readouterr().out)
    assert (row["status"], row["envoy_error"]) == ("504 Gateway Timeout", "timeout")
    assert run(["call", str(mesh.path), "users", "GET", slow, "--route", "haproxy", "--timeout", "0.2"]) == 1
    row = fields(capsys.readouterr().out)
    assert row["error"].startswith("MeshTimeoutError (also requests.exceptions.ReadTimeout): GET to service 'users'")
    assert "status" not in row
