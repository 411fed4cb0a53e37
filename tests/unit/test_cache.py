"""The one bounded cache type (mesh_client._cache)."""

from __future__ import annotations

import copy
import pickle

import pytest

from mesh_client._cache import BoundedCache


def test_a_full_cache_forgets_everything_before_it_keeps_the_next_entry() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3)
    for number, key in enumerate("abc"):
        assert cache.put(key, number) == number
    assert dict(cache) == {"a": 0, "b": 1, "c": 2}
    assert cache.put("d", 3) == 3
    assert dict(cache) == {"d": 3}


def test_replacing_a_key_in_a_full_cache_also_starts_it_afresh() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 9)
    assert dict(cache) == {"a": 9}


def test_a_cache_never_holds_more_than_its_limit() -> None:
    cache: BoundedCache[int, int] = BoundedCache(50)
    for key in range(1_000):
        cache.put(key, key)
        assert 1 <= len(cache) <= 50


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match=f"at least one entry, got limit={limit}"):
        BoundedCache(limit)


@pytest.mark.parametrize("duplicate", [pickle.loads, copy.copy, copy.deepcopy], ids=["pickle", "copy", "deepcopy"])
def test_a_copy_starts_empty_with_the_same_limit(duplicate: object) -> None:
    cache: BoundedCache[str, int] = BoundedCache(7)
    cache.put("a", 1)
    source = pickle.dumps(cache) if duplicate is pickle.loads else cache
    copied = duplicate(source)  # type: ignore[operator]
    assert isinstance(copied, BoundedCache)
    assert (dict(copied), copied.limit) == ({}, 7)
    assert dict(cache) == {"a": 1}
