"""``mesh-client call`` without proxies: arguments, errors, the text and JSON output.

Addresses in these registries are free loopback ports nothing listens on, so every connection is
refused at once; the tests that need an answer start a :class:`~mesh_client.testing.Backend` or use
``fake_mesh``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import requests

from mesh_client import Route
from mesh_client.cli import main
from mesh_client.cli.call.arguments import ArgumentProblem, parse_header, parse_overrides, read_data
from mesh_client.cli.call.outcome import Body, Outcome, as_json, print_text
from mesh_client.info import CallInfo
from mesh_client.registry import load_file
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import free_port
from mesh_client.testing import Backend, FakeMesh, reply

from .helpers import run_cli, write_registry

# -- call: arguments -------------------------------------------------------------------------------


def test_override_arguments_merge_and_a_later_one_wins() -> None:
    assert parse_overrides([]) == {}
    merged = parse_overrides(["users=canary", "search=pr-12;users=blue"])
    assert list(merged.items()) == [("search", "pr-12"), ("users", "blue")]


@pytest.mark.parametrize("route", ["haproxy", "envoy"])
def test_call_with_an_override_reaches_the_variant(
    tmp_path: Path, fake_mesh: FakeMesh, capsys: pytest.CaptureFixture[str], route: str
) -> None:
    write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", route)])
    extra = f'[services.users.variants.canary]\nhaproxy = "127.0.0.1:{free_port()}"\n'
    path = write_registry(tmp_path, extra=extra)
    fake_mesh.mesh(str(path))  # (the fake learns the registry's variants)
    fake_mesh.add("users", reply(200, text="canary"), variant="canary")
    assert main(["call", str(path), "users", "GET", "/v1/x", "--override", "users=canary", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["body"], result["variant"], result["route"]) == ("canary", "canary", route)
    assert fake_mesh.last_call().headers["x-mesh-override"] == "users=canary"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Accept: application/json", ("Accept", "application/json")),
        ("X-Empty:", ("X-Empty", "")),
        ("  X-Spaces  :   a b  ", ("X-Spaces", "a b")),
        ("X-Colon: a:b", ("X-Colon", "a:b")),
    ],
)
def test_headers_parse(text: str, expected: tuple[str, str]) -> None:
    assert parse_header(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no colon here", "no ':' found"),
        (": value", "the header name is empty"),
        ("Bad Name: v", "'Bad Name' is not a valid header name"),
        ("X-A: line\nbreak", "line break"),
    ],
)
def test_malformed_headers_are_named(text: str, problem: str) -> None:
    with pytest.raises(ArgumentProblem, match=problem):
        parse_header(text)


def test_data_is_text_a_file_or_stdin(tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(b"\x00\x01binary")
    assert read_data(None) is None
    assert read_data("héllo") == "héllo".encode()
    assert read_data(f"@{body}") == b"\x00\x01binary"
    assert read_data("@-", stdin=io.BytesIO(b"from stdin")) == b"from stdin"
    with pytest.raises(ArgumentProblem, match=r"--data @.*missing\.json: cannot read the file: No such file"):
        read_data(f"@{tmp_path / 'missing.json'}")
    with pytest.raises(ArgumentProblem, match="name a file after '@'"):
        read_data("@")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope", "GET", "/"], "no service 'nope' in {registry} (services: users)"),
        (["users", "GET", "/", "-H", "NoColon"], "-H 'NoColon': expected 'Name: value'"),
        (["users", "POST", "/", "--data", "@/no/such/file"], "--data @/no/such/file: cannot read the file"),
        (["users", "GET", "v1/users"], "PATH 'v1/users' must start with '/'"),
        (["users", "GET", "http://users/v1"], "is a URL; give only the path"),
        (["users", "GET", "/a b"], "contains spaces"),
        (["users", "G(T", "/"], "METHOD 'G(T' is not an HTTP method"),
        (["users", "GET", "/", "--override", "users"], "--override 'users': expected SERVICE=VARIANT"),
        (["users", "GET", "/", "--override", "Users=canary"], "--override 'Users=canary': expected SERVICE=VARIANT"),
    ],
)
def test_call_bad_arguments_exit_2_naming_the_problem(
    registry: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["call", str(registry), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mesh-client call: ")
    assert message.format(registry=registry) in captured.err
    assert captured.out == ""


def test_call_of_a_thrift_service_is_a_bad_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_flag_file(tmp_path / "flags.json", [])
    path = write_registry(tmp_path)
    text = path.read_text().replace("[mesh]\n", f'[mesh]\nenvoy_thrift = "127.0.0.1:{free_port()}"\n')
    text += f'[services.ledger]\nprotocol = "thrift"\nhaproxy = "127.0.0.1:{free_port()}"\n'
    path.write_text(text)
    assert main(["call", str(path), "ledger", "ping", "/"]) == 2
    assert "service 'ledger' uses protocol 'thrift'" in capsys.readouterr().err


def test_call_invalid_registry_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mesh]\ncaller = "c"\nenvoy_http = "nowhere"\n')
    assert main(["call", str(bad), "users", "GET", "/"]) == 1
    err = capsys.readouterr().err
    assert "mesh-client call: invalid registry: mesh.envoy_http" in err
    assert str(bad) in err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--timeout", "0"], "argument --timeout: must be a number of seconds greater than 0"),
        (["--timeout", "soon"], "argument --timeout: must be a number of seconds, got 'soon'"),
        # what no socket takes: refused here, not a traceback from the library later
        (["--timeout", "1e10"], "argument --timeout: must be at most 86400 seconds (a day), got '1e10'"),
        (["--route", "nginx"], "argument --route: invalid choice: 'nginx'"),
        (["--max-body", "-1"], "argument --max-body: must be 0 (no limit) or more"),
    ],
)
def test_call_bad_option_values_exit_2(
    registry: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["call", str(registry), "users", "GET", "/", *option])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_call_warns_about_headers_the_client_controls(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "call",
            str(registry),
            "users",
            "GET",
            "/",
            "--route",
            "haproxy",
            "-H",
            "x-envoy-max-retries: 5",
            "-H",
            "Host: x",
        ]
    )
    assert code == 1  # nothing listens: a transport error
    err = capsys.readouterr().err
    assert "note: header 'x-envoy-max-retries' is removed by mesh_client" in err
    assert "note: header 'Host' is replaced by the service's envoy_host" in err


# -- call: output ----------------------------------------------------------------------------------


def test_call_transport_error_prints_the_error_classes_and_call_info(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", str(registry), "users", "GET", "/v1/users/1", "--route", "haproxy"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "GET http://users/v1/users/1"
    fields = dict(line.strip().split(None, 1) for line in lines[1:])
    assert fields["error"].startswith("MeshConnectError (also requests.exceptions.ConnectionError): GET to service")
    assert fields["route"] == "haproxy"
    assert fields["attempts"] == "1"
    assert fields["failed_over"] == "no"
    assert fields["route_reason"] == "forced to haproxy by call options"
    assert fields["elapsed"].endswith(" s")
    assert "status" not in fields


def test_call_transport_error_as_json(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the sidecar refused the connection: failover to HAProxy, which refused it too; the route asked
    # for was not the one taken, so 3 (not 1), whatever the outcome
    assert main(["call", str(registry), "users", "GET", "/", "--route", "envoy", "--json", "--timeout", "0.5"]) == 3
    captured = capsys.readouterr()
    assert captured.err.startswith("mesh-client call: --route envoy was asked for, but the call went via haproxy")
    result = json.loads(captured.out)
    assert result["ok"] is False
    assert result["status"] is None
    assert result["body"] is None
    assert result["route"] == "haproxy"
    assert result["failed_over"] is True
    assert "failed over to HAProxy" in result["route_reason"]
    assert result["error"]["type"] == "MeshConnectError"
    assert result["error"]["classes"] == ["MeshConnectError", "requests.exceptions.ConnectionError"]
    assert "cannot connect to haproxy" in result["error"]["message"]


def test_call_forced_route_that_was_not_taken_exits_3(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # nothing listens at mesh.envoy_http: the call fails over to "HAProxy" (a backend on its port)
    config = load_file(registry)
    with Backend("users", port=config.services["users"].haproxy.port):
        assert main(["call", str(registry), "users", "GET", "/", "--route", "envoy"]) == 3
        captured = capsys.readouterr()
        assert "  status                  200 OK" in captured.out  # the answer is still shown
        assert "  failed_over             yes" in captured.out
        assert captured.err == (
            "mesh-client call: --route envoy was asked for, but the call went via haproxy "
            "(Envoy refused the connection, failed over to HAProxy)\n"
        )
        # the route asked for and taken: 0; no route asked for: the flag decides, nothing to hold it to
        assert main(["call", str(registry), "users", "GET", "/", "--route", "haproxy"]) == 0
        assert main(["call", str(registry), "users", "GET", "/"]) == 0
        assert capsys.readouterr().err == ""


def test_call_with_a_flag_source_that_fails_notes_it_in_one_line(tmp_path: Path) -> None:
    path = write_registry(tmp_path)  # flags.json was never written
    config = load_file(path)
    with Backend("users", port=config.services["users"].haproxy.port):
        done = run_cli("call", str(path), "users", "GET", "/")
    assert done.returncode == 0, done.stderr  # the call itself worked, on the fallback route
    assert done.stderr == (
        f"mesh-client call: note: the flag source did not load: cannot read flag file {tmp_path / 'flags.json'}: "
        "No such file or directory; the call takes the fallback route\n"
    )
    assert "route_reason            flag mesh-route-users has no value" in done.stdout


def fake_response(status: int, body: bytes, content_type: str = "application/json") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = {200: "OK", 503: "Service Unavailable"}.get(status, "")
    response._content = body
    response.headers["content-type"] = content_type
    response.headers["content-length"] = str(len(body))
    return response


def outcome(status: int, body: bytes, max_body: int, content_type: str = "application/json") -> Outcome:
    response = fake_response(status, body, content_type)
    info = CallInfo("users", Route.ENVOY, 2, upstream_service_time=0.012, route_reason="flag says so", elapsed=0.0153)
    return Outcome(
        "users",
        "GET",
        "/x",
        response=response,
        body=Body.of(body, content_type, max_body),
        info=info,
    )


def test_text_output_shows_the_call_info_and_a_truncated_body() -> None:
    out = io.StringIO()
    print_text(out, outcome(200, b'{"a": "' + b"x" * 100 + b'"}', 20), include=False)
    lines = out.getvalue().splitlines()
    fields = dict(line.strip().split(None, 1) for line in lines[1:-2])
    assert fields["status"] == "200 OK"
    assert fields["route"] == "envoy"
    assert fields["attempts"] == "2"
    assert fields["upstream_service_time"] == "0.012 s"
    assert fields["envoy_error"] == "-"
    assert fields["elapsed"] == "0.015 s"
    assert fields["body"] == "109 bytes, application/json; first 20 shown, --max-body 0 shows all"
    assert lines[-2:] == ['{"a": "xxxxxxxxxxxxx', "[...]"]


def test_text_output_does_not_print_binary_bodies() -> None:
    out = io.StringIO()
    print_text(out, outcome(200, b"\x89PNG\x00\x01", 4096, "image/png"), include=True)
    text = out.getvalue()
    assert "6 bytes of binary data, image/png (not shown; --json shows base64)" in text
    assert "    content-type: image/png" in text  # --include


def test_json_output_is_one_object_with_the_body() -> None:
    result = as_json(outcome(503, b"\xff\xfe", 1))
    assert result["status"] == 503
    assert result["ok"] is False
    assert result["attempts"] == 2
    assert result["route"] == "envoy"
    assert result["body"] is None
    assert result["body_base64"] == "/w=="
    assert result["body_bytes"] == 2
    assert result["body_truncated"] is True
    assert result["error"] is None
    json.dumps(result)  # serialisable as is


def test_call_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["call", "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "--route {envoy,haproxy}" in out


def test_repeated_headers_are_joined_for_every_command_that_takes_h() -> None:
    from mesh_client.cli.call.arguments import merge_headers

    assert merge_headers([("X-Tenant", "a"), ("x-tenant", "b"), ("Accept", "*/*")]) == {
        "X-Tenant": "a, b",
        "Accept": "*/*",
    }
