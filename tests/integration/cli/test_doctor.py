"""``mesh-client doctor`` against real Envoy and HAProxy: a healthy mesh, and each way an Envoy
or HAProxy on this machine can fail the registry, as a user runs the command."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_client.cli import main
from mesh_client.registry import load_file
from mesh_client.sidecar import envoy_bootstrap, start_envoy, start_haproxy
from mesh_client.testing import Backend

from ..conftest import registry
from .helpers import RunningMesh, egress_hcm, line_of, own_envoy_registry, verdicts, write_toml


def test_doctor_on_a_healthy_mesh_is_all_ok(mesh: RunningMesh, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(mesh.path)]) == 0
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


def test_doctor_fails_the_header_check_of_an_envoy_without_internal_address_config(
    mesh: RunningMesh, tmp_path: Path, backend: Backend, envoy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, config = own_envoy_registry(mesh, backend, tmp_path)
    bootstrap = envoy_bootstrap(config)
    del egress_hcm(bootstrap)[
        "internal_address_config"
    ]  # what an Envoy >= 1.36 configured before the change looks like
    with start_envoy(config, tmp_path, binary=envoy_bin, bootstrap=bootstrap):
        assert main(["doctor", str(path)]) == 1
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
        assert main(["doctor", str(path)]) == 0  # calls work: warnings only
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
    assert main(["doctor", str(path), "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    found = verdicts(out)
    assert [name for name, verdict in found.items() if verdict != "OK"] == ["haproxy users"], out
    line = line_of(out, "haproxy users")
    assert line.startswith(f"FAIL  haproxy users        {data['services']['users']['haproxy']} refused the connection")
    assert "-> fix: start HAProxy (SmartStack) for this machine, or set services.users.haproxy" in line
    # the route line says the service's current route goes through the failed port
    assert "(but haproxy users failed above)" in line_of(out, "route users")
