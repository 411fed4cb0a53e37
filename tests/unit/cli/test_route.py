"""``mesh-client route MESH.toml [--service S]``: what the flags decide now, and a flag source that
does not load."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_client.cli import main

from .conftest import FIXED_REGISTRY
from .helpers import run_cli


def test_route_shows_the_flag_decision_and_the_fallback(
    fixed_registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["route", str(fixed_registry)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["users"].startswith("envoy")
    assert "mesh-route-users" in lines["users"]
    assert lines["orders"].startswith("haproxy")
    assert "default_route" in lines["orders"]


def test_unknown_service_is_an_error(fixed_registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", str(fixed_registry), "--service", "nope"]) == 2
    assert "no service 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "{not json"])
def test_route_exits_1_in_one_line_when_the_flag_file_does_not_load(fixed_registry: Path, content: str | None) -> None:
    flags = fixed_registry.parent / "flags.json"
    flags.unlink()
    if content is not None:
        flags.write_text(content)
    done = run_cli("route", str(fixed_registry))
    assert done.returncode == 1
    # the routes the fallback gives are still shown; then one line on stderr, no SDK traceback
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [["orders", "haproxy"], ["users", "haproxy"]]
    problem = f"cannot read flag file {flags}: No such file or directory" if content is None else "is not valid JSON"
    (line,) = done.stderr.splitlines()
    assert line.startswith("mesh-client route: the flag source did not load: ")
    assert problem in line
    assert line.endswith("; every route above is the fallback, default_route haproxy")


def test_route_exits_1_when_launchdarkly_has_no_sdk_key(fixed_registry: Path) -> None:
    fixed_registry.write_text(
        FIXED_REGISTRY.replace(
            'source = "file"\npath = "flags.json"', 'source = "launchdarkly"\nsdk_key_env = "NO_SUCH_KEY"'
        )
    )
    done = run_cli("route", str(fixed_registry), "--service", "users", env={"NO_SUCH_KEY": ""})
    assert done.returncode == 1
    assert done.stderr == (
        "mesh-client route: the flag source did not load: flags.source is 'launchdarkly' but $NO_SUCH_KEY is "
        "empty; every route above is the fallback, default_route haproxy\n"
    )
