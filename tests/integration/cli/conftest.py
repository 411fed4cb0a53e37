"""The running mesh the command-line tests share: Envoy and HAProxy for the recording backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mesh_client.registry import load_file
from mesh_client.routing import route_flag, write_flag_file
from mesh_client.sidecar import start_envoy, start_haproxy
from mesh_client.testing import Backend

from ..conftest import registry
from .helpers import RunningMesh, write_toml


@pytest.fixture(scope="package")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[RunningMesh]:
    work = tmp_path_factory.mktemp("cli")
    flags = work / "flags.json"
    write_flag_file(flags, [route_flag("mesh-route-users", "haproxy")])
    data = registry(backend, flags)
    path = write_toml(work / "mesh.toml", data)
    config = load_file(path)
    with (
        start_envoy(config, work / "envoy", binary=envoy_bin) as envoy,
        start_haproxy(config, work / "haproxy", binary=haproxy_bin) as haproxy,
    ):
        yield RunningMesh(path, config, data, envoy, haproxy)
