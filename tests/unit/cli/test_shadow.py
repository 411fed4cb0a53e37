"""``mesh-client shadow`` without proxies: bad arguments, and the table it prints from the copies'
outcomes. (Through real Envoy and HAProxy: tests/integration/test_shadow.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_client.cli import parser
from mesh_client.cli.shadow import Tally, render
from mesh_client.routing import write_flag_file
from mesh_client.shadow.compare import Comparison, Difference
from mesh_client.shadow.stats import ShadowEvent
from mesh_client.sidecar import free_port

from .helpers import write_registry


def shadow(argv: list[str]) -> int:
    args = parser().parse_args(["shadow", *argv])
    code: int = args.run(args)
    return code


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    write_flag_file(tmp_path / "flags.json", [])
    path = write_registry(tmp_path)
    text = path.read_text().replace("[mesh]\n", f'[mesh]\nenvoy_thrift = "127.0.0.1:{free_port()}"\n')
    path.write_text(text + f'[services.ledger]\nprotocol = "thrift"\nhaproxy = "127.0.0.1:{free_port()}"\n')
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nobody"], "no service 'nobody' in {registry} (services: ledger, users)"),
        (["ledger"], "service 'ledger' uses protocol 'thrift'"),
        (["users", "--path", "v1/users"], "PATH 'v1/users' must start with '/'"),
        (["users", "--path", "http://users/x"], "PATH 'http://users/x' is a URL"),
        (["users", "-H", "no-colon"], "-H 'no-colon': expected 'Name: value'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(
    registry: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shadow([str(registry), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mesh-client shadow: ")
    assert message.format(registry=registry) in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("option", ["--count", "--concurrency"])
def test_counts_below_one_are_refused_by_the_parser(
    registry: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        shadow([str(registry), "users", option, "0"])
    assert exited.value.code == 2
    assert f"argument {option}: must be 1 or more, got '0'" in capsys.readouterr().err


def test_an_invalid_registry_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mesh]\ncaller = "c"\nenvoy_http = "nowhere"\n')
    assert shadow([str(bad), "users"]) == 1
    assert "mesh-client shadow: invalid registry: mesh.envoy_http:" in capsys.readouterr().err


def test_copies_that_fail_on_both_routes_exit_1_and_are_counted(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing listens on the registry's ports: each call fails, and so does its copy
    assert shadow([str(registry), "users", "--path", "/a", "--count", "3"]) == 1
    out = capsys.readouterr().out
    assert "users: stage shadow, haproxy answers the caller, every call copied via envoy" in out
    assert out.rstrip().endswith("3 call(s): 0 matched, 0 mismatched, 3 copy error(s), 0 skipped, 3 failed call(s)")


def mismatch(target: str, *differences: Difference) -> ShadowEvent:
    comparison = Comparison("mismatch", differences, len(differences))
    return ShadowEvent("users", "mismatch", "shadow", "GET", target, comparison)


def test_the_table_counts_per_path_and_shows_the_first_mismatches() -> None:
    tally = Tally("shadow")
    name = Difference("body $.name", '"ann"', '"ann-via-envoy"')
    etag = Difference("header etag", '"1"', "(absent)")
    for target in ("/users/1", "/users/2", "/users/2", "/users/2"):
        tally.called(target, ok=True)
    tally.called("/users/3", ok=False)
    tally.copied(ShadowEvent("users", "match", "shadow", "GET", "/users/1"))
    tally.copied(mismatch("/users/2", name, etag))
    tally.copied(mismatch("/users/2", name))
    tally.copied(ShadowEvent("users", "skipped", "shadow", "GET", "/users/2", reason="cap"))
    tally.copied(ShadowEvent("users", "error", "shadow", "GET", "/users/3"))
    lines = render(tally, service="users", details=1)
    assert lines == [
        "users: stage shadow, haproxy answers the caller, every call copied via envoy",
        "path      calls failed  matched mismatch  errors  skipped  first difference",
        "/users/1      1      0        1        0       0        0",
        '/users/2      3      0        0        2       0        1  body $.name: "ann" / "ann-via-envoy"',
        "/users/3      1      1        0        0       1        0",
        "(all)         5      1        1        2       1        1",
        "mismatch: GET /users/2 (2 difference(s))",
        '  body $.name: haproxy "ann" / envoy "ann-via-envoy"',
        '  header etag: haproxy "1" / envoy (absent)',
        "... and 1 more mismatch(es) (--details N shows more)",
    ]
    assert not tally.clean


def test_live_names_envoy_as_the_answering_route() -> None:
    tally = Tally("live")
    tally.called("/x", ok=True)
    tally.copied(ShadowEvent("users", "match", "live", "GET", "/x"))
    assert render(tally, service="users", details=5)[0] == (
        "users: stage live, envoy answers the caller, every call copied via haproxy"
    )
    assert tally.clean
