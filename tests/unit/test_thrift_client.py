"""Pieces of the Thrift client that need no network."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import thriftpy2.thrift
from thriftpy2.thrift import TApplicationException

from mesh_client import Mesh
from mesh_client._compat import forced_fallback
from mesh_client._compat import thriftpy2 as compat
from mesh_client.thrift.client import _classify_envoy_reply

from ..conftest import load_idl

INTERNAL, UNKNOWN = TApplicationException.INTERNAL_ERROR, TApplicationException.UNKNOWN_METHOD


@pytest.mark.parametrize(
    ("error_type", "message", "kind"),
    [
        (INTERNAL, "no healthy upstream for 'users-thrift'", "no_healthy_upstream"),
        (
            INTERNAL,
            "connection failure before response start: remote connection failure '127.0.0.1:1'",
            "upstream_reset",
        ),
        (UNKNOWN, "no route for method 'ping'", "no_route"),
        (INTERNAL, "unknown cluster 'nosuch'", "no_cluster"),
        (INTERNAL, "maintenance mode for cluster 'users'", "overloaded"),
        (INTERNAL, "thrift upstream request: too many connections", "overloaded"),
    ],
)
def test_envoy_replies_are_recognised(error_type: int, message: str, kind: str) -> None:
    classified = _classify_envoy_reply(TApplicationException(error_type, message))
    assert classified is not None
    assert classified[0] == kind


@pytest.mark.parametrize(
    ("error_type", "message"),
    [
        (INTERNAL, "the database said: no healthy upstream for 'users'"),  # a server's own message
        (UNKNOWN, "no healthy upstream for 'users'"),  # wrong type
        (INTERNAL, "Internal error"),
        (INTERNAL, ""),
    ],
)
def test_a_servers_own_errors_are_not_taken_for_envoys(error_type: int, message: str) -> None:
    assert _classify_envoy_reply(TApplicationException(error_type, message)) is None


# -- a call's arguments: thriftpy2's args_to_kwargs when probed, else the fallback from the spec -


IDL = """
struct User {1: i64 id, 2: string name}
service Users { User find(2: string name, 1: required i64 id, 3: i32 limit) }
"""
MAPPERS = {"thriftpy2": thriftpy2.thrift.args_to_kwargs, "fallback": compat.spec_kwargs}


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "client_args_users_thrift")


@pytest.fixture(params=MAPPERS.keys())
def mapper(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Each way of mapping arguments, installed as the one the client uses."""
    chosen = MAPPERS[request.param]
    monkeypatch.setattr(compat, "_ARGS_TO_KWARGS", chosen if request.param == "thriftpy2" else None)
    return chosen


@pytest.fixture
def client(users: Any) -> Iterator[Any]:
    data = {
        "mesh": {"caller": "test", "envoy_http": "127.0.0.1:1", "envoy_thrift": "127.0.0.1:1"},
        "services": {"users": {"protocol": "thrift", "haproxy": "127.0.0.1:1", "retries": 0}},
    }
    mesh = Mesh.from_dict(data)
    yield mesh.thrift_client(users.Users, "users")
    mesh.close()


def test_the_probe_takes_this_thriftpy2s_args_to_kwargs_unless_the_fallback_is_forced() -> None:
    assert compat._probe_args_to_kwargs() is (None if forced_fallback() else thriftpy2.thrift.args_to_kwargs)


def test_positional_arguments_follow_the_idl_order(users: Any, mapper: Any) -> None:
    spec = users.Users.find_args.thrift_spec
    assert mapper(spec, "ada", 7) == {"name": "ada", "id": 7}
    assert mapper(spec, "ada", 7, 3) == {"name": "ada", "id": 7, "limit": 3}
    assert mapper(spec, None, 7, name="kw") == {"name": "kw", "id": 7}  # a positional None is left out
    assert mapper(spec, "pos", 7, name="kw") == {"name": "pos", "id": 7}  # a positional wins
    assert mapper(spec, id=7) == {"id": 7}
    assert compat.call_kwargs(spec, "ada", 7) == {"name": "ada", "id": 7}


def test_too_many_positional_arguments_are_a_type_error(users: Any, mapper: Any) -> None:
    with pytest.raises(TypeError):
        mapper(users.Users.find_args.thrift_spec, "ada", 7, 3, 4)
    with pytest.raises(TypeError):
        compat.call_kwargs(users.Users.find_args.thrift_spec, "ada", 7, 3, 4)


def test_a_missing_required_argument_is_a_value_error_naming_it(users: Any, mapper: Any) -> None:
    with pytest.raises(ValueError, match=r"^id$"):
        mapper(users.Users.find_args.thrift_spec, "ada")
    with pytest.raises(ValueError, match=r"^id$"):
        compat.call_kwargs(users.Users.find_args.thrift_spec, limit=3)


def test_an_unknown_keyword_is_left_for_the_args_struct_to_refuse(users: Any, mapper: Any) -> None:
    fields = mapper(users.Users.find_args.thrift_spec, id=7, nosuch=1)
    assert fields == {"id": 7, "nosuch": 1}
    with pytest.raises(TypeError, match="nosuch"):
        users.Users.find_args(**fields)


def test_the_client_refuses_bad_arguments_alike_before_any_io(client: Any, mapper: Any) -> None:
    with pytest.raises(TypeError):
        client.find("ada", 7, 3, 4)
    with pytest.raises(TypeError, match="nosuch"):
        client.find(id=7, nosuch=1)
    with pytest.raises(TApplicationException, match=r"^id is required argument for Users\.find$") as caught:
        client.find("ada")
    assert caught.value.type == TApplicationException.UNKNOWN_METHOD
