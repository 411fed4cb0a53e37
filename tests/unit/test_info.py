"""``new_call_info``, the core's fast way to make a :class:`CallInfo`: the same object as
``CallInfo(...)`` in every way a user can observe."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_client import CallInfo, Route
from mesh_client.info import new_call_info

_VALUES = st.tuples(
    st.text(max_size=8),
    st.sampled_from(list(Route)),
    st.integers(0, 5),
    st.booleans(),
    st.none() | st.floats(0, 10),
    st.none() | st.sampled_from(["timeout", "overloaded"]),
    st.text(max_size=20),
    st.floats(0, 10),
    st.booleans(),
    st.none() | st.text(max_size=8),
    st.none() | st.sampled_from(["off", "shadow", "live", "complete"]),
)


@given(_VALUES)
def test_new_call_info_is_callinfo_made_the_usual_way(values: tuple[object, ...]) -> None:
    made, usual = new_call_info(*values), CallInfo(*values)  # type: ignore[arg-type]
    assert type(made) is CallInfo
    assert made == usual
    assert hash(made) == hash(usual)
    assert repr(made) == repr(usual)
    assert dataclasses.astuple(made) == values
    assert pickle.loads(pickle.dumps(made)) == usual


def test_new_call_info_is_frozen_like_any_callinfo() -> None:
    info = new_call_info("users", Route.ENVOY, 1, False, None, None, "", 0.0, False, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.attempts = 2  # type: ignore[misc]
    assert dataclasses.replace(info, attempts=3).attempts == 3


def test_new_call_info_takes_every_field_of_callinfo() -> None:
    """One argument per field, in field order: a field added to CallInfo must be added here too
    (the module's setter unpacking fails at import until it is)."""
    import inspect

    names = list(inspect.signature(new_call_info).parameters)
    assert names == [field.name for field in dataclasses.fields(CallInfo)]
