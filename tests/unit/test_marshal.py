"""Thrift structs to and from bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_client.thrift import deserialize, serialize

IDL = "struct User {1: i64 id, 2: string name, 3: list<string> tags}\n"


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("idl") / "marshal_users.thrift"
    path.write_text(IDL)
    return thriftpy2.load(str(path), module_name="marshal_users_thrift")


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_round_trip(users: Any, protocol: Any) -> None:
    user = users.User(id=7, name="ada", tags=["a", "b"])
    data = serialize(user, protocol)
    assert deserialize(users.User, data, protocol) == user


def test_binary_and_compact_differ(users: Any) -> None:
    user = users.User(id=7, name="ada", tags=[])
    assert serialize(user, "binary") != serialize(user, "compact")


def test_garbage_is_a_clear_error(users: Any) -> None:
    with pytest.raises(ValueError, match="not a valid binary User"):
        deserialize(users.User, b"\x0b\x00\x02\xff\xff\xff\xff", "binary")


def test_bad_arguments(users: Any) -> None:
    with pytest.raises(ValueError, match="'binary' or 'compact'"):
        serialize(users.User(id=1), "json")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a thriftpy2 struct"):
        serialize({"id": 1})


@settings(max_examples=100, deadline=None)
@given(id=st.integers(-(2**63), 2**63 - 1), name=st.text(max_size=50), tags=st.lists(st.text(max_size=10), max_size=5))
def test_any_user_round_trips(users: Any, id: int, name: str, tags: list[str]) -> None:
    user = users.User(id=id, name=name, tags=tags)
    for protocol in ("binary", "compact"):
        assert deserialize(users.User, serialize(user, protocol), protocol) == user  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [0, 1, 5, 12])
def test_truncated_binary_data_is_an_error_not_a_partial_struct(users: Any, cut: int) -> None:
    data = serialize(users.User(id=7, name="ada lovelace", tags=["x"]), "binary")
    with pytest.raises(ValueError, match="not a valid binary User"):
        deserialize(users.User, data[:cut], "binary")
