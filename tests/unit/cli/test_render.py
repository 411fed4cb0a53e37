"""``mesh-client render envoy|haproxy MESH.toml``, and the errors every command shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_client.cli import main


def test_render_envoy_prints_a_bootstrap_envoy_will_trust(
    fixed_registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "envoy", str(fixed_registry)]) == 0
    bootstrap = json.loads(capsys.readouterr().out)
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["use_remote_address"] is True
    assert {"address_prefix": "127.0.0.0", "prefix_len": 8} in hcm["internal_address_config"]["cidr_ranges"]
    hosts = {vh["name"]: vh["domains"] for vh in hcm["route_config"]["virtual_hosts"]}
    assert hosts == {"users": ["users", "users:*"], "orders": ["orders", "orders:*"]}


def test_render_haproxy_prints_one_port_per_service(fixed_registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "haproxy", str(fixed_registry)]) == 0
    out = capsys.readouterr().out
    assert "bind 127.0.0.1:20001" in out
    assert "server users-1 127.0.0.1:8081" in out
    assert "bind 127.0.0.1:20002" in out


def test_invalid_registry_exits_1_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mesh]\ncaller = "c"\nenvoy_http = "nowhere"\n')
    assert main(["render", "haproxy", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "mesh.envoy_http" in err
    assert str(bad) in err


def test_bad_arguments_exit_2() -> None:
    with pytest.raises(SystemExit) as raised:
        main(["render", "nginx", "x.toml"])
    assert raised.value.code == 2
