"""The pure comparison of two answers (mesh_client.shadow.compare), and the stage flags' shape."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from mesh_client import Route
from mesh_client.shadow.answers import decoded, thrift_outcome
from mesh_client.shadow.compare import MAX_DIFFERENCES, Answer, compare, is_json, parse_json_path
from mesh_client.shadow.flags import stage_flag, stage_rollout_flag
from mesh_client.shadow.stages import copy_route, stage_of


def js(value: Any, status: int = 200, content_type: str = "application/json") -> Answer:
    return Answer(status=status, body=json.dumps(value).encode(), content_type=content_type)


def where(primary: Answer, copy: Answer, **kwargs: Any) -> list[str]:
    return [d.where for d in compare(primary, copy, **kwargs).differences]


def test_identical_answers_match() -> None:
    result = compare(js({"a": 1}), js({"a": 1}))
    assert result.outcome == "match"
    assert result.matched
    assert result.differences == ()


def test_json_is_compared_structurally_not_by_bytes() -> None:
    primary = Answer(status=200, body=b'{"a": 1, "b": [1, 2]}', content_type="application/json; charset=utf-8")
    copy = Answer(status=200, body=b'{"b":[1,2],"a":1}', content_type="application/json")
    assert compare(primary, copy).outcome == "match"
    # the same bytes as non-JSON differ
    plain = Answer(status=200, body=primary.body, content_type="text/plain")
    assert compare(plain, Answer(status=200, body=copy.body, content_type="text/plain")).outcome == "mismatch"


def test_the_differing_members_are_named_with_both_values() -> None:
    result = compare(js({"user": {"name": "ann", "tier": "gold"}}), js({"user": {"name": "ann", "tier": "silver"}}))
    assert result.outcome == "mismatch"
    (diff,) = result.differences
    assert diff.where == "body $.user.tier"
    assert (diff.primary, diff.copy) == ('"gold"', '"silver"')


def test_ignored_paths_are_left_out_on_both_sides() -> None:
    mine = {"generated_at": 1, "items": [{"id": 1, "etag": "a"}, {"id": 2, "etag": "b"}], "n": 1}
    theirs = {"generated_at": 2, "items": [{"id": 1, "etag": "x"}, {"id": 2}], "n": 1}
    ignore = ["generated_at", "items[].etag"]
    assert compare(js(mine), js(theirs), ignore_json=ignore).outcome == "match"
    # without them, each volatile member is a difference: the ignore list is what made them match
    assert where(js(mine), js(theirs)) == [
        "body $.generated_at",
        "body $.items[0].etag",
        "body $.items[1].etag",
    ]
    # an ignored path hides only itself: a real difference next to it still shows
    theirs["items"][1]["id"] = 3
    assert where(js(mine), js(theirs), ignore_json=ignore) == ["body $.items[1].id"]


def test_ignored_subtrees_top_level_lists_and_whole_lists() -> None:
    assert compare(js({"meta": {"a": 1}}), js({"meta": {"b": 2}}), ignore_json=["meta"]).matched
    assert compare(js([{"etag": 1}, {"etag": 2}]), js([{"etag": 3}, {"etag": 4}]), ignore_json=["[].etag"]).matched
    assert compare(js({"xs": [1, 2]}), js({"xs": [3]}), ignore_json=["xs[]"]).matched


def test_absent_members_lists_of_another_length_and_types() -> None:
    assert where(js({"a": 1}), js({"b": 1})) == ["body $.a", "body $.b"]
    result = compare(js({"xs": [1, 2, 3]}), js({"xs": [1, 5]}))
    assert [(d.where, d.primary, d.copy) for d in result.differences] == [
        ("body $.xs", "3 items", "2 items"),
        ("body $.xs[1]", "2", "5"),
    ]
    assert compare(js({"n": 1}), js({"n": 1.0})).matched  # the same JSON number
    assert not compare(js({"n": 1}), js({"n": True})).matched
    assert not compare(js({"n": "1"}), js({"n": 1})).matched
    assert where(js({"a b": 1}), js({"a b": 2})) == ['body $["a b"]']


def test_status_and_named_headers_are_compared() -> None:
    mine = Answer(status=200, headers=(("etag", "1"), ("cache-control", None)), body=b"x")
    theirs = Answer(status=404, headers=(("etag", "2"), ("cache-control", "no-cache")), body=b"x")
    result = compare(mine, theirs, compare_headers=["etag", "cache-control"])
    assert [(d.where, d.primary, d.copy) for d in result.differences] == [
        ("status", "200", "404"),
        ("header etag", "'1'", "'2'"),
        ("header cache-control", "(absent)", "'no-cache'"),
    ]
    assert where(mine, theirs) == ["status"]  # headers only when named


def test_other_bodies_are_compared_byte_for_byte_and_shown_around_the_first_difference() -> None:
    mine = Answer(status=200, body=b"hello world" * 10)
    theirs = Answer(status=200, body=b"hello world" * 5 + b"HELLO")
    (diff,) = compare(mine, theirs).differences
    assert diff.where == "body"
    assert diff.primary.startswith("110 bytes, at 55: ")
    assert diff.copy.startswith("60 bytes, at 55: ")
    assert "HELLO" in diff.copy
    assert "HELLO" not in diff.primary


def test_json_that_does_not_parse_falls_back_to_bytes() -> None:
    result = compare(Answer(status=200, body=b"{", content_type="application/json"), js({"a": 1}))
    assert [d.where for d in result.differences] == ["body"]


def test_a_side_that_failed_is_an_error_and_nothing_is_compared() -> None:
    assert compare(Answer(error="timeout"), js(1)).outcome == "error"
    assert compare(js(1), Answer(error="refused")).outcome == "error"


def test_the_list_of_differences_and_the_values_are_capped() -> None:
    result = compare(js({f"k{i}": i for i in range(50)}), js({f"k{i}": -i - 1 for i in range(50)}))
    assert result.count == 50
    assert len(result.differences) == MAX_DIFFERENCES
    (long,) = compare(js({"a": "x" * 1000}), js({"a": "y"})).differences
    assert len(long.primary) == 200
    assert long.primary.endswith("...")


def test_thrift_results_and_exception_types() -> None:
    assert compare(thrift_outcome({"id": 1}), thrift_outcome({"id": 1})).matched
    (diff,) = compare(thrift_outcome({"id": 1}), thrift_outcome({"id": 2})).differences
    assert diff.where == "result"
    # exceptions compare by type only
    assert compare(thrift_outcome(raised=KeyError("a")), thrift_outcome(raised=KeyError("b"))).matched
    (diff,) = compare(thrift_outcome(raised=KeyError("a")), thrift_outcome({"id": 1})).differences
    assert diff.primary == "raised KeyError"


def test_encoded_bodies_are_decoded_before_the_comparison() -> None:
    raw = gzip.compress(b'{"a": 1}')
    answer = decoded(Answer(status=200, body=raw, content_type="application/json", content_encoding="gzip"))
    assert answer.body == b'{"a": 1}'
    assert answer.content_encoding == ""
    broken = Answer(status=200, body=b"not gzip", content_encoding="gzip")
    assert decoded(broken) == broken  # compared as received


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("generated_at", ("generated_at",)),
        ("items[].etag", ("items", "[]", "etag")),
        ("a.b.c", ("a", "b", "c")),
        ("[].etag", ("[]", "etag")),
        ("grid[][]", ("grid", "[]", "[]")),
    ],
)
def test_json_paths(path: str, parsed: tuple[str, ...]) -> None:
    assert parse_json_path(path) == parsed


@pytest.mark.parametrize("path", ["", "a..b", "items[.etag", "a.[]", "a[0]", ".a", "a."])
def test_malformed_json_paths(path: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse_json_path(path)


def test_json_content_types() -> None:
    assert is_json("application/json")
    assert is_json("application/problem+json; charset=utf-8")
    assert not is_json("text/json-ish")
    assert not is_json("")


def test_stages_and_their_routes() -> None:
    assert stage_of("off") == ("off", Route.HAPROXY)
    assert stage_of("dualwrite") == ("off", Route.HAPROXY)
    assert stage_of("shadow") == ("shadow", Route.HAPROXY)
    assert stage_of("live") == ("live", Route.ENVOY)
    assert stage_of("rampdown") == ("complete", Route.ENVOY)
    assert stage_of("complete") == ("complete", Route.ENVOY)
    assert stage_of("envoy") is None
    assert stage_of(None) is None
    assert copy_route("shadow") is Route.ENVOY
    assert copy_route("live") is Route.HAPROXY


def test_stage_flags_are_launchdarkly_migration_flags() -> None:
    flag = stage_flag("mesh-route-users", "shadow", version=3)
    assert flag["variations"] == ["off", "dualwrite", "shadow", "live", "rampdown", "complete"]
    assert flag["variations"][flag["fallthrough"]["variation"]] == "shadow"
    assert flag["variations"][flag["offVariation"]] == "off"
    assert flag["version"] == 3
    rollout = stage_rollout_flag("k", {"shadow": 90, "live": 10})["fallthrough"]["rollout"]
    assert rollout["contextKind"] == "service"
    assert rollout["variations"] == [{"variation": 2, "weight": 90_000}, {"variation": 3, "weight": 10_000}]
    with pytest.raises(ValueError, match="add up to 100"):
        stage_rollout_flag("k", {"shadow": 90})
    with pytest.raises(ValueError, match="not a migration stage"):
        stage_flag("k", "envoy")
