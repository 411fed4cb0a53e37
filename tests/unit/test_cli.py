"""The command line: render and route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh_client.cli import main
from mesh_client.routing import route_flag, write_flag_file

REGISTRY = """\
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:9001"
envoy_admin = "127.0.0.1:9901"

[flags]
source = "file"
path = "flags.json"

[services.users]
haproxy = "127.0.0.1:20001"
endpoints = ["127.0.0.1:8081"]

[services.orders]
haproxy = "127.0.0.1:20002"
"""


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(REGISTRY)
    write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", "envoy")])
    return path


def test_render_envoy_prints_a_bootstrap_envoy_will_trust(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "envoy", str(registry)]) == 0
    bootstrap = json.loads(capsys.readouterr().out)
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["use_remote_address"] is True
    assert {"address_prefix": "127.0.0.0", "prefix_len": 8} in hcm["internal_address_config"]["cidr_ranges"]
    hosts = {vh["name"]: vh["domains"] for vh in hcm["route_config"]["virtual_hosts"]}
    assert hosts == {"users": ["users", "users:*"], "orders": ["orders", "orders:*"]}


def test_render_haproxy_prints_one_port_per_service(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "haproxy", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "bind 127.0.0.1:20001" in out
    assert "server users-1 127.0.0.1:8081" in out
    assert "bind 127.0.0.1:20002" in out


def test_route_shows_the_flag_decision_and_the_fallback(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", str(registry)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["users"].startswith("envoy")
    assert "mesh-route-users" in lines["users"]
    assert lines["orders"].startswith("haproxy")
    assert "default_route" in lines["orders"]


def test_unknown_service_is_an_error(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", str(registry), "--service", "nope"]) == 2
    assert "no service 'nope'" in capsys.readouterr().err


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a new process, where the SDK's own logging would reach stderr
    (under pytest it goes to the log capture instead)."""
    return subprocess.run(
        [sys.executable, "-m", "mesh_client", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("content", [None, "{not json"])
def test_route_exits_1_in_one_line_when_the_flag_file_does_not_load(registry: Path, content: str | None) -> None:
    flags = registry.parent / "flags.json"
    flags.unlink()
    if content is not None:
        flags.write_text(content)
    done = run_cli("route", str(registry))
    assert done.returncode == 1
    # the routes the fallback gives are still shown; then one line on stderr, no SDK traceback
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["orders", "haproxy"], ["users", "haproxy"]]
    problem = f"cannot read flag file {flags}: No such file or directory" if content is None else "is not valid JSON"
    (line,) = done.stderr.splitlines()
    assert line.startswith("mesh-client route: the flag source did not load: ")
    assert problem in line
    assert line.endswith("; every route above is the fallback, default_route haproxy")


def test_route_exits_1_when_launchdarkly_has_no_sdk_key(registry: Path) -> None:
    registry.write_text(
        REGISTRY.replace('source = "file"\npath = "flags.json"', 'source = "launchdarkly"\nsdk_key_env = "NO_SUCH_KEY"')
    )
    done = run_cli("route", str(registry), "--service", "users", env={"NO_SUCH_KEY": ""})
    assert done.returncode == 1
    assert done.stderr == (
        "mesh-client route: the flag source did not load: flags.source is 'launchdarkly' but $NO_SUCH_KEY is "
        "empty; every route above is the fallback, default_route haproxy\n"
    )


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


def test_module_entry_point_runs(registry: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh_client", "render", "haproxy", str(registry)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "frontend users" in done.stdout


def test_every_command_has_help() -> None:
    for command in ("render", "route", "demo", "doctor", "call"):
        done = subprocess.run(
            [sys.executable, "-m", "mesh_client", command, "--help"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert command in done.stdout
