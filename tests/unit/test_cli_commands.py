"""``mesh-client doctor`` and ``mesh-client call`` without proxies: arguments, errors, output formats.

Addresses in these registries are free loopback ports nothing listens on, so every connection is
refused at once; no test needs a server.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from mesh_client import Route, call_cmd, doctor
from mesh_client.call_cmd import ArgumentProblem, parse_header, parse_overrides_args, read_data
from mesh_client.doctor import Check, _Admin, _Doctor, _Evidence, _Reply
from mesh_client.info import CallInfo
from mesh_client.registry import load_file
from mesh_client.routing import rollout_flag, route_flag, write_flag_file
from mesh_client.sidecar import envoy_bootstrap, free_port
from mesh_client.testing import Backend, FakeMesh, reply

from .test_cli import run_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-client")
    sub = p.add_subparsers(dest="command", required=True)
    doctor.add_parser(sub)
    call_cmd.add_parser(sub)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


def write_registry(tmp_path: Path, *, flags: str = "file", extra: str = "", admin: bool = True) -> Path:
    lines = [
        "[mesh]",
        'caller = "checkout"',
        f'envoy_http = "127.0.0.1:{free_port()}"',
        *([f'envoy_admin = "127.0.0.1:{free_port()}"'] if admin else []),
        "",
        "[flags]",
        f'source = "{flags}"',
        *(['path = "flags.json"'] if flags == "file" else ['sdk_key_env = "MESH_TEST_NO_SUCH_KEY"']),
        "",
        "[services.users]",
        f'haproxy = "127.0.0.1:{free_port()}"',
        "retries = 0",
        extra,
    ]
    path = tmp_path / "mesh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    write_flag_file(tmp_path / "flags.json", [route_flag("mesh-route-users", "haproxy")])
    return write_registry(tmp_path)


# -- call: arguments -------------------------------------------------------------------------------


def test_override_arguments_merge_and_a_later_one_wins() -> None:
    assert parse_overrides_args([]) == {}
    merged = parse_overrides_args(["users=canary", "search=pr-12;users=blue"])
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


def outcome(status: int, body: bytes, max_body: int, content_type: str = "application/json") -> Any:
    response = fake_response(status, body, content_type)
    info = CallInfo("users", Route.ENVOY, 2, upstream_service_time=0.012, route_reason="flag says so", elapsed=0.0153)
    return call_cmd._Outcome(
        "users",
        "GET",
        "/x",
        response=response,
        body=call_cmd._Body.of(body, content_type, max_body),
        info=info,
    )


def test_text_output_shows_the_call_info_and_a_truncated_body() -> None:
    out = io.StringIO()
    call_cmd._print_text(out, outcome(200, b'{"a": "' + b"x" * 100 + b'"}', 20), include=False)
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
    call_cmd._print_text(out, outcome(200, b"\x89PNG\x00\x01", 4096, "image/png"), include=True)
    text = out.getvalue()
    assert "6 bytes of binary data, image/png (not shown; --json shows base64)" in text
    assert "    content-type: image/png" in text  # --include


def test_json_output_is_one_object_with_the_body() -> None:
    result = call_cmd._as_json(outcome(503, b"\xff\xfe", 1))
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


# -- doctor ----------------------------------------------------------------------------------------


def verdicts(out: str) -> dict[str, str]:
    """The check name -> verdict of doctor's output."""
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] in ("OK", "WARN", "FAIL", "SKIP"):
            name = line[6:26].strip()
            found[name] = parts[0]
    return found


def test_check_lines_carry_the_fix_only_when_not_ok() -> None:
    assert Check("flags", "OK", "fine", "unused").line() == "OK    flags                fine"
    assert Check("haproxy users", "FAIL", "refused", "start it").line() == (
        "FAIL  haproxy users        refused -> fix: start it"
    )
    assert doctor.exit_code([Check("a", "WARN", ""), Check("b", "SKIP", "")]) == 0
    assert doctor.exit_code([Check("a", "OK", ""), Check("b", "FAIL", "")]) == 1


def test_doctor_invalid_registry_is_one_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[mesh]\ncaller = "c"\nenvoy_http = "nowhere"\n')
    assert main(["doctor", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  registry             mesh.envoy_http: 'nowhere' is not a 'host:port' address" in out
    assert f"-> fix: correct mesh.envoy_http in {bad} (docs/registry.md lists every key)" in out
    assert out.splitlines()[-1] == "1 check: 0 OK, 0 WARN, 1 FAIL: FAILED"


@pytest.mark.parametrize(
    ("content", "detail", "fix"),
    [
        (None, "cannot read the registry: No such file or directory", "pass the path of a registry TOML file"),
        ("[mesh\n", "not valid TOML: Expected ']'", "correct the file where the message says"),
    ],
)
def test_doctor_fix_for_a_registry_that_names_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, detail: str, fix: str
) -> None:
    path = tmp_path / "mesh.toml"
    if content is not None:
        path.write_text(content)
    assert main(["doctor", str(path)]) == 1
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAIL")]
    assert line.startswith(f"FAIL  registry             {detail}")
    assert f"-> fix: {fix}" in line
    assert "key" not in line.split("-> fix:")[1]  # no key is named, so the fix names none


def test_doctor_with_nothing_running_fails_each_proxy_check_with_its_fix(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", str(registry), "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert verdicts(out) == {
        "registry": "OK",
        "envoy admin": "WARN",
        "envoy egress": "FAIL",
        "envoy vhost users": "SKIP",
        "envoy headers": "SKIP",
        "envoy reporting": "SKIP",
        "haproxy users": "FAIL",
        "flags": "OK",
        "route users": "OK",
    }
    assert "refused the connection (nothing listens there)" in out
    assert "-> fix: start the Envoy sidecar, or set mesh.envoy_http" in out
    assert "-> fix: start HAProxy (SmartStack) for this machine, or set services.users.haproxy" in out
    assert "route users          haproxy: flag mesh-route-users = 'haproxy' (FALLTHROUGH) (but haproxy users" in out
    assert out.splitlines()[-1] == "9 checks: 3 OK, 1 WARN, 2 FAIL, 3 SKIP: FAILED"


UNBUCKETED = rollout_flag("mesh-route-users", 50)
del UNBUCKETED["fallthrough"]["rollout"]["contextKind"]


@pytest.mark.parametrize(
    ("content", "verdict", "message"),
    [
        (None, "FAIL", "cannot read flag file"),
        ("{not json", "FAIL", "is not valid JSON"),
        ("[1, 2]", "FAIL", "is not LaunchDarkly flag data"),
        ({"flags": {}}, "OK", "route flags for 0 of 1 service(s)"),
        ({"flags": {"mesh-route-users": UNBUCKETED}}, "WARN", 'a rollout without "contextKind": "service"'),
        (  # valid JSON that LaunchDarkly's file data source refuses: its message is shown
            {
                "flags": {
                    "mesh-route-users": {**route_flag("mesh-route-users", "envoy"), "fallthrough": {"rollout": {}}}
                }
            },
            "FAIL",
            "did not initialise from flag file {path} within flags.start_wait (1 s) (Unable to store data: "
            "ValueError('error in flag/segment data: required property \"variations\" is missing'))",
        ),
    ],
)
def test_doctor_flag_file_problems(tmp_path: Path, content: object, verdict: str, message: str) -> None:
    if content is not None:
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / "flags.json").write_text(text)
    checks = {c.name: c for c in doctor.diagnose(write_registry(tmp_path), timeout=0.2)}
    assert checks["flags"].verdict == verdict
    assert message.format(path=tmp_path / "flags.json") in checks["flags"].detail
    if verdict == "FAIL":
        assert checks["route users"].verdict == "WARN"
        assert "the flag source did not load" in checks["route users"].detail
    elif verdict == "OK":  # no flag for users: the route falls back, with the fix
        assert checks["route users"].verdict == "WARN"
        assert "create the string flag mesh-route-users" in checks["route users"].fix


def test_doctor_launchdarkly_without_sdk_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_TEST_NO_SUCH_KEY", raising=False)
    checks = {c.name: c for c in doctor.diagnose(write_registry(tmp_path, flags="launchdarkly"), timeout=0.2)}
    assert checks["flags"].verdict == "FAIL"
    assert "$MESH_TEST_NO_SUCH_KEY is empty" in checks["flags"].detail
    assert checks["flags"].fix == "export MESH_TEST_NO_SUCH_KEY=<the LaunchDarkly server-side SDK key>"


def test_doctor_no_flag_source_is_ok(tmp_path: Path) -> None:
    path = write_registry(tmp_path)
    path.write_text(path.read_text().replace('source = "file"\npath = "flags.json"', 'source = "none"'))
    checks = {c.name: c for c in doctor.diagnose(path, timeout=0.2)}
    assert checks["flags"].verdict == "OK"
    assert checks["route users"].detail.startswith("haproxy: no flag source; default_route haproxy")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--timeout", "-1"], "argument --timeout: must be a number of seconds greater than 0"),
        (["--timeout", "1e10"], "argument --timeout: must be at most 86400 seconds (a day), got '1e10'"),
        (["--path", "health"], "argument --path: must be a path starting with '/'"),
    ],
)
def test_doctor_bad_option_values_exit_2(
    registry: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["doctor", str(registry), *option])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


# -- doctor: reading Envoy's config, and how the header check decides --------------------------------


def rendered_hcm(registry: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    listener = envoy_bootstrap(load_file(registry))["static_resources"]["listeners"][0]
    return listener, listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_the_rendered_listener_has_what_the_client_needs(registry: Path) -> None:
    listener, hcm = rendered_hcm(registry)
    assert doctor._hcms(listener) == [hcm]
    assert doctor._hcm_problems(hcm, ["127.0.0.1"]) == []
    assert doctor._hcm_problems(hcm, ["::1"]) == []


def test_listener_problems_are_named(registry: Path) -> None:
    _, hcm = rendered_hcm(registry)
    assert doctor._hcm_problems({**hcm, "use_remote_address": False}, ["127.0.0.1"]) == [
        "use_remote_address is not true"
    ]
    without = {k: v for k, v in hcm.items() if k != "internal_address_config"}
    assert doctor._hcm_problems(without, ["127.0.0.1"]) == ["it has no internal_address_config"]
    narrow = {**hcm, "internal_address_config": {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}}
    assert doctor._hcm_problems(narrow, ["127.0.0.1"]) == [
        "internal_address_config does not cover 127.0.0.1 (cidr_ranges: 10.0.0.0/8)"
    ]


def test_the_listener_is_found_by_the_egress_address(registry: Path) -> None:
    config = load_file(registry)
    listener, _ = rendered_hcm(registry)
    dump = {"configs": [{"listener": listener}, {"active_state": {"listener": {"name": "other"}}}]}
    listeners = doctor._listeners(dump)
    assert [lst.get("name") for lst in listeners] == ["egress_http", "other"]
    assert doctor._listener_at(listeners, config.envoy_http, "127.0.0.1") is listener
    wildcard = {**listener, "address": {"socket_address": {"address": "0.0.0.0", "port_value": config.envoy_http.port}}}
    assert doctor._listener_at([wildcard], config.envoy_http, "127.0.0.1") is wildcard
    assert doctor._listener_at(listeners, config.services["users"].haproxy, "127.0.0.1") is None


def test_config_evidence_names_a_missing_listener_and_a_prefix_mismatch(registry: Path) -> None:
    config = load_file(registry)
    listener, _ = rendered_hcm(registry)
    d = _Doctor(str(registry), 0.2, "/", lambda check: None)
    state, found, fix = d._config_evidence(config, _Admin(listeners=[listener], header_prefix="x-envoy"), ["127.0.0.1"])
    assert (state, fix) == ("ok", "")
    assert found == "listener egress_http: use_remote_address true, internal_address_config covers 127.0.0.1"
    state, found, fix = d._config_evidence(config, _Admin(listeners=[listener], header_prefix="x-acme"), ["127.0.0.1"])
    assert state == "bad"
    assert "Envoy's header_prefix is 'x-acme' but mesh.header_prefix is 'x-envoy'" in found
    assert "set mesh.header_prefix = 'x-acme'" in fix
    moved = {**listener, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}
    state, found, fix = d._config_evidence(config, _Admin(listeners=[moved]), ["127.0.0.1"])
    assert state == "bad"
    assert f"has no listener at {config.envoy_http} (its listeners: egress_http at 127.0.0.1:1)" in found
    assert fix.startswith("mesh.envoy_http and mesh.envoy_admin must name the same Envoy")
    assert d._config_evidence(config, None, ["127.0.0.1"])[0] == "unknown"


@pytest.mark.parametrize(
    ("config_state", "probes", "verdict"),
    [
        ("ok", ["honoured"], "OK"),
        ("ok", ["inconclusive", "inconclusive"], "OK"),  # the config is decisive
        ("ok", ["ignored"], "FAIL"),  # something else removes them
        ("bad", ["honoured"], "WARN"),  # works now, but not by config
        ("bad", ["inconclusive", "inconclusive"], "FAIL"),
        ("bad", ["ignored"], "FAIL"),
        ("unknown", ["honoured"], "OK"),
        ("unknown", ["inconclusive", "ignored"], "FAIL"),
        ("unknown", ["inconclusive", "inconclusive"], "WARN"),
    ],
)
def test_how_the_header_check_weighs_config_and_probes(
    registry: Path, monkeypatch: pytest.MonkeyPatch, config_state: str, probes: list[str], verdict: str
) -> None:
    config = load_file(registry)
    results = iter(_Evidence(kind, f"{kind} probe") for kind in probes)  # type: ignore[arg-type]
    monkeypatch.setattr(_Doctor, "_config_evidence", lambda *a: (config_state, f"config {config_state}", "the fix"))
    monkeypatch.setattr(_Doctor, "_retry_probe", lambda *a: next(results))
    monkeypatch.setattr(_Doctor, "_timeout_probe", lambda *a: next(results))
    reply = _Reply(200, "OK", {"x-envoy-attempt-count": "1", "x-envoy-upstream-service-time": "1"}, None, 0.001)
    checks: list[Check] = []
    d = _Doctor(str(registry), 0.2, "/", checks.append)
    d._headers(config, _Admin(), "127.0.0.1", {"users": reply})
    (check,) = checks
    assert check.verdict == verdict
    assert f"config {config_state}" in check.detail
    assert all(f"{kind} probe" in check.detail for kind in probes)
    assert next(results, None) is None  # the timeout probe runs only after an inconclusive retry probe
    if verdict != "OK":
        assert check.fix


def test_doctor_help_documents_the_checks_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["doctor", "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "--timeout S" in out
    assert "x-envoy-* headers" in out


# -- doctor: the settings that make Envoy report attempts ----------------------------------------------


def reporting(registry: Path, admin: _Admin | None, routed: dict[str, _Reply] | None = None) -> Check:
    config = load_file(registry)
    checks: list[Check] = []
    d = _Doctor(str(registry), 0.2, "/", checks.append)
    d.egress_ip = "127.0.0.1"
    d._reporting(config, admin, routed or {})
    (check,) = checks
    assert check.name == "envoy reporting"
    return check


def test_the_virtual_host_is_picked_as_envoy_picks_it() -> None:
    exact, suffix, prefix, anything = (
        {"name": "exact", "domains": ["users", "users:*"]},
        {"name": "suffix", "domains": ["*.svc", "*ers"]},
        {"name": "prefix", "domains": ["us*"]},
        {"name": "any", "domains": ["*"]},
    )
    config = {"virtual_hosts": [anything, prefix, suffix, exact]}
    assert doctor._virtual_host_for(config, "USERS") is exact
    assert doctor._virtual_host_for(config, "a.svc") is suffix
    assert doctor._virtual_host_for(config, "players") is suffix  # a suffix wildcard beats a prefix one
    assert doctor._virtual_host_for(config, "useless") is prefix
    assert doctor._virtual_host_for(config, "cart") is anything
    assert doctor._virtual_host_for({"virtual_hosts": [exact]}, "orders") is None


def test_reporting_is_ok_on_the_rendered_config(registry: Path) -> None:
    listener, _ = rendered_hcm(registry)
    check = reporting(registry, _Admin(listeners=[listener]))
    assert (check.verdict, check.detail) == (
        "OK",
        "virtual host users: include_attempt_count_in_response and include_request_attempt_count set",
    )


def test_reporting_names_each_missing_setting_with_what_it_costs(registry: Path) -> None:
    listener, hcm = rendered_hcm(registry)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    vhost["name"] = "users_vh"
    del vhost["include_attempt_count_in_response"]
    check = reporting(registry, _Admin(listeners=[listener]))
    assert check.verdict == "WARN"
    assert check.detail == (
        "include_attempt_count_in_response is not set on virtual host users_vh (for users): call_info().attempts "
        "stays 1, and the retry budget charges every retryable answer all the retries Envoy was allowed (it cannot "
        "see Envoy's retries that ended in a success)"
    )
    assert check.fix.startswith("set include_attempt_count_in_response: true on the virtual hosts named (")
    vhost["include_request_attempt_count"] = False
    check = reporting(registry, _Admin(listeners=[listener]))
    assert (
        "; include_request_attempt_count is not set on virtual host users_vh (for users): the service" in check.detail
    )
    assert check.fix.startswith(
        "set include_attempt_count_in_response: true and include_request_attempt_count: true on the virtual hosts"
    )


def test_reporting_reads_routes_that_came_over_rds(registry: Path) -> None:
    listener, hcm = rendered_hcm(registry)
    route_config = hcm.pop("route_config")
    hcm["rds"] = {"route_config_name": "egress_routes", "config_source": {"ads": {}}}
    del route_config["virtual_hosts"][0]["include_request_attempt_count"]
    dump = {"configs": [{"version_info": "7", "route_config": {**route_config, "name": "egress_routes"}}]}
    check = reporting(registry, _Admin(listeners=[listener], route_configs=doctor._route_configs(dump)))
    assert check.verdict == "WARN"
    assert check.detail.startswith("include_request_attempt_count is not set on virtual host users:")
    # the route configuration named is not known: doctor says it cannot tell rather than guess
    check = reporting(registry, _Admin(listeners=[listener]))
    assert check.verdict == "WARN"
    assert check.detail.startswith("cannot tell: the virtual hosts for users are not in the route configuration")


def test_reporting_without_envoys_config_judges_by_the_answers(registry: Path) -> None:
    counted = _Reply(200, "OK", {"x-envoy-attempt-count": "1"}, None, 0.001)
    uncounted = _Reply(200, "OK", {}, None, 0.001)
    assert reporting(registry, None).verdict == "SKIP"  # no config and no answer
    check = reporting(registry, None, {"users": counted})
    assert check.verdict == "OK"
    assert "include_request_attempt_count was not checked" in check.detail
    check = reporting(registry, _Admin(error="GET /config_dump answered 403 Forbidden"), {"users": uncounted})
    assert check.verdict == "WARN"
    assert check.detail.startswith("Envoy's answers via users carry no x-envoy-attempt-count, so ")
    assert check.fix.startswith("set include_attempt_count_in_response: true on the virtual hosts")


# -- doctor: variant routes --------------------------------------------------------------------------

VARIANTS = """
[services.users.variants.canary]
endpoints = ["127.0.0.1:18011"]

[services.users.variants.pr-12]
endpoints = ["127.0.0.1:18012"]
"""


def variant_check(registry: Path, admin: _Admin | None) -> list[Check]:
    checks: list[Check] = []
    d = _Doctor(str(registry), 0.2, "/", checks.append)
    d.egress_ip = "127.0.0.1"
    d._variants(load_file(registry), admin)
    return checks


def test_doctor_finds_the_variant_routes_of_the_rendered_config(tmp_path: Path) -> None:
    path = write_registry(tmp_path, extra=VARIANTS)
    listener, _ = rendered_hcm(path)
    (check,) = variant_check(path, _Admin(listeners=[listener]))
    assert (check.name, check.verdict) == ("envoy variants", "OK")
    assert check.detail == "x-mesh-variant routed ahead of the default route for users:canary, users:pr-12"


def test_doctor_fails_a_missing_or_shadowed_variant_route(tmp_path: Path) -> None:
    path = write_registry(tmp_path, extra=VARIANTS)
    listener, hcm = rendered_hcm(path)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    canary, pr, default = vhost["routes"]
    vhost["routes"] = [canary, default, pr]  # pr-12's route comes after the catch-all: never reached
    (check,) = variant_check(path, _Admin(listeners=[listener]))
    assert check.verdict == "FAIL"
    assert check.detail.startswith("no route for x-mesh-variant ahead of the default route for users:pr-12:")
    assert "mesh-client render envoy" in check.fix
    vhost["routes"] = [default]
    (check,) = variant_check(path, _Admin(listeners=[listener]))
    assert "for users:canary, users:pr-12:" in check.detail


def test_doctor_skips_the_variant_check_without_the_config_or_variants(tmp_path: Path, registry: Path) -> None:
    (tmp_path / "variants").mkdir()
    path = write_registry(tmp_path / "variants", extra=VARIANTS)
    (check,) = variant_check(path, None)
    assert (check.verdict, check.detail) == (
        "SKIP",
        "not checked: no mesh.envoy_admin, so the route config was not read",
    )
    assert variant_check(registry, _Admin()) == []  # no variants: no check
