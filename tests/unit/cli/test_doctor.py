"""``mesh-client doctor`` without proxies: the command's output and exit codes, and each check's
decisions over Envoy configs and answers given to it (the rendered bootstrap, edited).

Addresses in these registries are free loopback ports nothing listens on, so every connection is
refused at once; no test needs a server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_client.cli import main
from mesh_client.cli.doctor import Check, diagnose, envoy_config, exit_code
from mesh_client.cli.doctor.context import Context
from mesh_client.cli.doctor.envoy_config import Admin
from mesh_client.cli.doctor.header_check import (
    ConfigEvidence,
    Evidence,
    check_headers,
    config_evidence,
    probe_evidence,
    weigh_headers,
)
from mesh_client.cli.doctor.network import Reply
from mesh_client.cli.doctor.reporting_check import check_reporting
from mesh_client.cli.doctor.variants_check import check_variants
from mesh_client.registry import load_file
from mesh_client.routing import rollout_flag, route_flag

from .helpers import rendered_hcm, verdicts, write_registry

# -- doctor ----------------------------------------------------------------------------------------


def test_check_lines_carry_the_fix_only_when_not_ok() -> None:
    assert Check("flags", "OK", "fine", "unused").line() == "OK    flags                fine"
    assert Check("haproxy users", "FAIL", "refused", "start it").line() == (
        "FAIL  haproxy users        refused -> fix: start it"
    )
    assert exit_code([Check("a", "WARN", ""), Check("b", "SKIP", "")]) == 0
    assert exit_code([Check("a", "OK", ""), Check("b", "FAIL", "")]) == 1


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
    checks = {c.name: c for c in diagnose(write_registry(tmp_path), timeout=0.2)}
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
    checks = {c.name: c for c in diagnose(write_registry(tmp_path, flags="launchdarkly"), timeout=0.2)}
    assert checks["flags"].verdict == "FAIL"
    assert "$MESH_TEST_NO_SUCH_KEY is empty" in checks["flags"].detail
    assert checks["flags"].fix == "export MESH_TEST_NO_SUCH_KEY=<the LaunchDarkly server-side SDK key>"


def test_doctor_no_flag_source_is_ok(tmp_path: Path) -> None:
    path = write_registry(tmp_path)
    path.write_text(path.read_text().replace('source = "file"\npath = "flags.json"', 'source = "none"'))
    checks = {c.name: c for c in diagnose(path, timeout=0.2)}
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


def test_the_rendered_listener_has_what_the_client_needs(registry: Path) -> None:
    listener, hcm = rendered_hcm(registry)
    assert envoy_config.hcms(listener) == [hcm]
    assert envoy_config.hcm_problems(hcm, ["127.0.0.1"]) == []
    assert envoy_config.hcm_problems(hcm, ["::1"]) == []


def test_listener_problems_are_named(registry: Path) -> None:
    _, hcm = rendered_hcm(registry)
    assert envoy_config.hcm_problems({**hcm, "use_remote_address": False}, ["127.0.0.1"]) == [
        "use_remote_address is not true"
    ]
    without = {k: v for k, v in hcm.items() if k != "internal_address_config"}
    assert envoy_config.hcm_problems(without, ["127.0.0.1"]) == ["it has no internal_address_config"]
    narrow = {**hcm, "internal_address_config": {"cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}}
    assert envoy_config.hcm_problems(narrow, ["127.0.0.1"]) == [
        "internal_address_config does not cover 127.0.0.1 (cidr_ranges: 10.0.0.0/8)"
    ]


def test_the_listener_is_found_by_the_egress_address(registry: Path) -> None:
    config = load_file(registry)
    listener, _ = rendered_hcm(registry)
    dump = {"configs": [{"listener": listener}, {"active_state": {"listener": {"name": "other"}}}]}
    listeners = envoy_config.listeners(dump)
    assert [lst.get("name") for lst in listeners] == ["egress_http", "other"]
    assert envoy_config.listener_at(listeners, config.envoy_http, "127.0.0.1") is listener
    wildcard = {**listener, "address": {"socket_address": {"address": "0.0.0.0", "port_value": config.envoy_http.port}}}
    assert envoy_config.listener_at([wildcard], config.envoy_http, "127.0.0.1") is wildcard
    assert envoy_config.listener_at(listeners, config.services["users"].haproxy, "127.0.0.1") is None


def test_config_evidence_names_a_missing_listener_and_a_prefix_mismatch(registry: Path) -> None:
    config = load_file(registry)
    listener, _ = rendered_hcm(registry)
    ctx = Context(str(registry), 0.2, "/", lambda check: None)
    state, found, fix = config_evidence(
        ctx, config, Admin(listeners=[listener], header_prefix="x-envoy"), ["127.0.0.1"]
    )
    assert (state, fix) == ("ok", "")
    assert found == "listener egress_http: use_remote_address true, internal_address_config covers 127.0.0.1"
    state, found, fix = config_evidence(ctx, config, Admin(listeners=[listener], header_prefix="x-acme"), ["127.0.0.1"])
    assert state == "bad"
    assert "Envoy's header_prefix is 'x-acme' but mesh.header_prefix is 'x-envoy'" in found
    assert "set mesh.header_prefix = 'x-acme'" in fix
    moved = {**listener, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}
    state, found, fix = config_evidence(ctx, config, Admin(listeners=[moved]), ["127.0.0.1"])
    assert state == "bad"
    assert f"has no listener at {config.envoy_http} (its listeners: egress_http at 127.0.0.1:1)" in found
    assert fix.startswith("mesh.envoy_http and mesh.envoy_admin must name the same Envoy")
    assert config_evidence(ctx, config, None, ["127.0.0.1"])[0] == "unknown"


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
def test_how_the_header_check_weighs_config_and_probes(config_state: str, probes: list[str], verdict: str) -> None:
    results = iter(Evidence(kind, f"{kind} probe") for kind in probes)  # type: ignore[arg-type]
    # Envoy reports attempt counts: the retry probe first, the timeout probe only if it was inconclusive
    evidence = probe_evidence(True, lambda: next(results), lambda: next(results))
    assert next(results, None) is None  # the timeout probe runs only after an inconclusive retry probe
    found = ConfigEvidence(config_state, f"config {config_state}", "the fix")  # type: ignore[arg-type]
    texts = [f"via users: {e.text}" for e in evidence]
    check = weigh_headers(found, texts, evidence, egress_up=True, admin_configured=True)
    assert check.name == "envoy headers"
    assert check.verdict == verdict
    assert f"config {config_state}" in check.detail
    assert all(f"{kind} probe" in check.detail for kind in probes)
    if verdict != "OK":
        assert check.fix


def test_the_header_check_without_a_probe_skips_or_asks_for_the_admin_endpoint(registry: Path) -> None:
    config = load_file(registry)
    checks: list[Check] = []
    ctx = Context(str(registry), 0.2, "/", checks.append)
    check_headers(ctx, config, None, None, {})  # the egress refused the connection: nothing to probe
    check_headers(ctx, config, None, "127.0.0.1", {})  # the egress answered, no service did
    check_headers(ctx, config, Admin(error="GET /config_dump answered 403 Forbidden"), "127.0.0.1", {})
    assert [c.verdict for c in checks] == ["SKIP", "WARN", "WARN"]
    skipped, unknown, unreadable = checks
    assert skipped.detail == (
        "not checked: no mesh.envoy_admin, so the listener config was not read; "
        "no probe (Envoy's egress does not accept connections)"
    )
    assert unknown.detail.endswith("; no probe (no HTTP service answered through Envoy)")
    assert unknown.fix.startswith("set mesh.envoy_admin to the sidecar's admin address")
    assert "the listener config could not be read (GET /config_dump answered 403 Forbidden)" in unreadable.detail
    assert unreadable.fix == "make Envoy's admin endpoint (mesh.envoy_admin) readable from this machine"


def test_doctor_help_documents_the_checks_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["doctor", "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "--timeout S" in out
    assert "x-envoy-* headers" in out


# -- doctor: the settings that make Envoy report attempts ----------------------------------------------


def reporting(registry: Path, admin: Admin | None, routed: dict[str, Reply] | None = None) -> Check:
    config = load_file(registry)
    checks: list[Check] = []
    ctx = Context(str(registry), 0.2, "/", checks.append, egress_ip="127.0.0.1")
    check_reporting(ctx, config, admin, routed or {})
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
    assert envoy_config.virtual_host_for(config, "USERS") is exact
    assert envoy_config.virtual_host_for(config, "a.svc") is suffix
    assert envoy_config.virtual_host_for(config, "players") is suffix  # a suffix wildcard beats a prefix one
    assert envoy_config.virtual_host_for(config, "useless") is prefix
    assert envoy_config.virtual_host_for(config, "cart") is anything
    assert envoy_config.virtual_host_for({"virtual_hosts": [exact]}, "orders") is None


def test_reporting_is_ok_on_the_rendered_config(registry: Path) -> None:
    listener, _ = rendered_hcm(registry)
    check = reporting(registry, Admin(listeners=[listener]))
    assert (check.verdict, check.detail) == (
        "OK",
        "virtual host users: include_attempt_count_in_response and include_request_attempt_count set",
    )


def test_reporting_names_each_missing_setting_with_what_it_costs(registry: Path) -> None:
    listener, hcm = rendered_hcm(registry)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    vhost["name"] = "users_vh"
    del vhost["include_attempt_count_in_response"]
    check = reporting(registry, Admin(listeners=[listener]))
    assert check.verdict == "WARN"
    assert check.detail == (
        "include_attempt_count_in_response is not set on virtual host users_vh (for users): call_info().attempts "
        "stays 1, and the retry budget charges every retryable answer all the retries Envoy was allowed (it cannot "
        "see Envoy's retries that ended in a success)"
    )
    assert check.fix.startswith("set include_attempt_count_in_response: true on the virtual hosts named (")
    vhost["include_request_attempt_count"] = False
    check = reporting(registry, Admin(listeners=[listener]))
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
    check = reporting(registry, Admin(listeners=[listener], route_configs=envoy_config.route_configs(dump)))
    assert check.verdict == "WARN"
    assert check.detail.startswith("include_request_attempt_count is not set on virtual host users:")
    # the route configuration named is not known: doctor says it cannot tell rather than guess
    check = reporting(registry, Admin(listeners=[listener]))
    assert check.verdict == "WARN"
    assert check.detail.startswith("cannot tell: the virtual hosts for users are not in the route configuration")


def test_reporting_without_envoys_config_judges_by_the_answers(registry: Path) -> None:
    counted = Reply(200, "OK", {"x-envoy-attempt-count": "1"}, None, 0.001)
    uncounted = Reply(200, "OK", {}, None, 0.001)
    assert reporting(registry, None).verdict == "SKIP"  # no config and no answer
    check = reporting(registry, None, {"users": counted})
    assert check.verdict == "OK"
    assert "include_request_attempt_count was not checked" in check.detail
    check = reporting(registry, Admin(error="GET /config_dump answered 403 Forbidden"), {"users": uncounted})
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


def variant_check(registry: Path, admin: Admin | None) -> list[Check]:
    checks: list[Check] = []
    ctx = Context(str(registry), 0.2, "/", checks.append, egress_ip="127.0.0.1")
    check_variants(ctx, load_file(registry), admin)
    return checks


def test_doctor_finds_the_variant_routes_of_the_rendered_config(tmp_path: Path) -> None:
    path = write_registry(tmp_path, extra=VARIANTS)
    listener, _ = rendered_hcm(path)
    (check,) = variant_check(path, Admin(listeners=[listener]))
    assert (check.name, check.verdict) == ("envoy variants", "OK")
    assert check.detail == "x-mesh-variant routed ahead of the default route for users:canary, users:pr-12"


def test_doctor_fails_a_missing_or_shadowed_variant_route(tmp_path: Path) -> None:
    path = write_registry(tmp_path, extra=VARIANTS)
    listener, hcm = rendered_hcm(path)
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    canary, pr, default = vhost["routes"]
    vhost["routes"] = [canary, default, pr]  # pr-12's route comes after the catch-all: never reached
    (check,) = variant_check(path, Admin(listeners=[listener]))
    assert check.verdict == "FAIL"
    assert check.detail.startswith("no route for x-mesh-variant ahead of the default route for users:pr-12:")
    assert "mesh-client render envoy" in check.fix
    vhost["routes"] = [default]
    (check,) = variant_check(path, Admin(listeners=[listener]))
    assert "for users:canary, users:pr-12:" in check.detail


def test_doctor_skips_the_variant_check_without_the_config_or_variants(tmp_path: Path, registry: Path) -> None:
    (tmp_path / "variants").mkdir()
    path = write_registry(tmp_path / "variants", extra=VARIANTS)
    (check,) = variant_check(path, None)
    assert (check.verdict, check.detail) == (
        "SKIP",
        "not checked: no mesh.envoy_admin, so the route config was not read",
    )
    assert variant_check(registry, Admin()) == []  # no variants: no check
