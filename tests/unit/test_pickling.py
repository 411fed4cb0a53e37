"""Pickling without a network: the registry, a Mesh, errors that are not transport failures, and
the class built at run time for a library exception that has no static combined class."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import requests

from mesh_client import ConfigError, InvalidServiceURL, Mesh, MeshConnectError, MeshError, Route
from mesh_client.errors import as_mesh_error, combined, combined_class
from mesh_client.info import CallInfo
from mesh_client.registry import load_file

REGISTRY = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001"},
    "flags": {"source": "none"},
    "services": {"users": {"haproxy": "127.0.0.1:20001", "retry_budget": {"percent": 5}}},
}


class OwnConnectionError(requests.ConnectionError):
    """What a transport of the caller's own might raise (no static combined class)."""


def test_the_registry_pickles_to_an_equal_one(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text(
        '[mesh]\ncaller = "checkout"\nenvoy_http = "127.0.0.1:9001"\n'
        '[flags]\nsource = "file"\npath = "flags.json"\n'
        '[services.users]\nhaproxy = "127.0.0.1:20001"\nretry_on = ["5xx"]\n'
    )
    config = load_file(path)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.flags.path == tmp_path / "flags.json"
    with pytest.raises(TypeError):
        copy.services["other"] = copy.services["users"]  # type: ignore[index]  # (still read-only)


def test_a_pickled_mesh_is_itself_while_open_else_the_open_mesh_of_its_registry_made_last() -> None:
    with Mesh.from_dict(REGISTRY) as first, Mesh.from_dict(REGISTRY) as second:
        assert pickle.loads(pickle.dumps(first)) is first
        assert pickle.loads(pickle.dumps(second)) is second
        pickled = pickle.dumps(first)
        first.close()
        assert pickle.loads(pickled) is second
        third = Mesh.from_dict(REGISTRY)
        assert pickle.loads(pickled) is third  # (of the open ones, the one made last)
        third.close()


def test_errors_that_are_not_transport_failures_pickle_with_their_attributes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as config_error:
        Mesh.from_dict({**REGISTRY, "services": {"users": {"haproxy": "127.0.0.1:20001", "timeout": -1}}})
    copy = pickle.loads(pickle.dumps(config_error.value))
    assert type(copy) is ConfigError
    assert (str(copy), copy.key, copy.source) == (
        str(config_error.value),
        "services.users.timeout",
        "<dict>",
    )

    with Mesh.from_dict(REGISTRY) as mesh:
        session = mesh.requests_session()
        with pytest.raises(InvalidServiceURL) as invalid:
            session.get("https://users/v1")
    copy = pickle.loads(pickle.dumps(invalid.value))
    assert (type(copy), str(copy)) == (InvalidServiceURL, str(invalid.value))
    assert isinstance(copy, ValueError)

    with pytest.raises(MeshError) as closed:
        session.get("http://users/v1")
    copy = pickle.loads(pickle.dumps(closed.value))
    assert (type(copy), str(copy)) == (MeshError, str(closed.value))


def test_a_library_class_without_a_static_combination_gets_a_picklable_one() -> None:
    info = CallInfo("users", Route.HAPROXY, 1)
    err = as_mesh_error(MeshConnectError, OwnConnectionError("refused"), "cannot connect", info)
    assert type(err).__name__ == f"MeshConnectError[{__name__}.OwnConnectionError]"
    assert type(err) is combined_class(MeshConnectError, OwnConnectionError)  # (built once)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err)
    assert isinstance(copy, OwnConnectionError)
    assert isinstance(copy, MeshConnectError)
    assert (str(copy), copy.info) == ("cannot connect", info)


def test_the_static_combined_classes_are_the_ones_raised_and_registering_twice_is_refused() -> None:
    from mesh_client.http.requests_errors import MeshConnectError_ConnectTimeout

    assert combined_class(MeshConnectError, requests.ConnectTimeout) is MeshConnectError_ConnectTimeout
    assert pickle.loads(pickle.dumps(MeshConnectError_ConnectTimeout)) is MeshConnectError_ConnectTimeout
    with pytest.raises(TypeError, match="combined already"):

        @combined
        class Again(MeshConnectError, requests.ConnectTimeout):
            pass

    with pytest.raises(TypeError, match="must derive from a MeshTransportError class, then a library's class"):

        @combined
        class Backwards(requests.ConnectTimeout, MeshConnectError):
            pass
