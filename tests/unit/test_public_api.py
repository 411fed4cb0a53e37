"""The public names of docs/ and the contract stay importable and listed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mesh_client

CONTRACT = {
    "Mesh",
    "ConfigError",
    "MeshError",
    "DeadlineExceeded",
    "CallOptions",
    "Route",
    "call_info",
    "call_options",
    "deadline",
}


def test_contract_names_are_public() -> None:
    assert set(mesh_client.__all__) >= CONTRACT


def test_every_listed_name_exists() -> None:
    for name in mesh_client.__all__:
        assert getattr(mesh_client, name) is not None, name
    assert isinstance(mesh_client.__version__, str)


def test_route_values_are_the_flag_values() -> None:
    assert [r.value for r in mesh_client.Route] == ["envoy", "haproxy"]


def test_package_is_typed() -> None:
    spec = importlib.util.find_spec("mesh_client")
    assert spec is not None
    assert spec.origin is not None

    assert (Path(spec.origin).parent / "py.typed").is_file()


def test_mesh_factories_exist() -> None:
    for name in (
        "from_file",
        "from_dict",
        "requests_session",
        "httpx_client",
        "httpx_async_client",
        "httpx_transport",
        "httpx_async_transport",
        "close",
    ):
        assert callable(getattr(mesh_client.Mesh, name)), name
