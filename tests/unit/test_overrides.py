"""Routing overrides, the pure parts: the header's format and strict parsing, signing and
verification, merging of nested blocks, the context variable across threads and tasks, and the
inbound trust boundary (``[overrides]``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import hmac
import logging
from typing import Any

import pytest

import mesh_client
from mesh_client import current_overrides, route_overrides
from mesh_client.context import begin_request, current_inbound, read_inbound
from mesh_client.errors import InvalidOverride, MeshError
from mesh_client.overrides import (
    MAX_HEADER_LENGTH,
    MAX_OVERRIDES,
    MAX_SIGNATURE_TTL,
    OVERRIDE_HEADER,
    OVERRIDE_SIGNATURE_HEADER,
    Overrides,
    admit_inbound,
    format_override_header,
    in_force,
    parse_override_header,
    sign_overrides,
    signature,
    verify_signature,
)
from mesh_client.variants import OverridesConfig

from ..conftest import Otel

KEY = b"0123456789abcdef-secret"
NOW = 1_700_000_000.0


# -- the header --------------------------------------------------------------------------------------


def test_format_is_service_equals_variant_joined_by_semicolons_in_order() -> None:
    assert format_override_header({"users": "canary", "search": "pr-12"}) == "users=canary;search=pr-12"
    assert format_override_header({}) == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("users=canary", {"users": "canary"}),
        ("users=canary;search=pr-12", {"users": "canary", "search": "pr-12"}),
        (" users=canary ; search=pr-12 ", {"users": "canary", "search": "pr-12"}),
        ("a.b_c-d=v1.2_3-x", {"a.b_c-d": "v1.2_3-x"}),
    ],
)
def test_parse_reads_entries_in_order(value: str, expected: dict[str, str]) -> None:
    parsed = parse_override_header(value)
    assert parsed == expected
    assert list(parsed) == list(expected)


def test_a_later_entry_for_a_service_wins_and_moves_last_as_in_dtabs() -> None:
    parsed = parse_override_header("users=a;search=b;users=c")
    assert list(parsed.items()) == [("search", "b"), ("users", "c")]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "users",
        "users=",
        "=canary",
        "users=canary;",
        ";users=canary",
        "users=canary;;search=x",
        "Users=canary",
        "users=Canary",
        "users=can ary",
        "users==canary",
        "users=canary,search=x",
        "users=-canary",
        "users=" + "c" * 64,
        "üsers=canary",
        "users=canary\r\nx-evil: 1",
    ],
)
def test_parse_refuses_anything_malformed(value: str) -> None:
    with pytest.raises(ValueError, match="x-mesh-override"):
        parse_override_header(value)


def test_parse_caps_the_count_and_the_length() -> None:
    many = ";".join(f"s{i}=v" for i in range(MAX_OVERRIDES))
    assert len(parse_override_header(many)) == MAX_OVERRIDES
    with pytest.raises(ValueError, match=f"at most {MAX_OVERRIDES}"):
        parse_override_header(many + ";s99=v")
    long = "s=" + "v" * 60 + ";" + ";".join(f"{'x' * 60}{i}=v" for i in range(15))
    assert len(long) > MAX_HEADER_LENGTH
    with pytest.raises(ValueError, match=f"at most {MAX_HEADER_LENGTH}"):
        parse_override_header(long)


def test_format_then_parse_is_the_identity() -> None:
    overrides = {"users": "canary", "search": "pr-12", "a.b": "c_d"}
    assert parse_override_header(format_override_header(overrides)) == overrides


# -- signing -----------------------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_over_the_documented_message() -> None:
    expected = hmac.new(KEY, b"mesh-override-v1\n1700000300\nusers=canary", hashlib.sha256).hexdigest()
    assert signature("users=canary", KEY, 1_700_000_300) == f"exp=1700000300;v1={expected}"


def test_a_valid_signature_verifies_and_gives_its_expiry() -> None:
    signed = signature("users=canary", KEY, int(NOW) + 60)
    assert verify_signature("users=canary", signed, KEY, NOW) == int(NOW) + 60
    assert verify_signature("users=canary", signed.replace(";", " ; "), KEY, NOW) == int(NOW) + 60


@pytest.mark.parametrize(
    ("value", "signed", "why"),
    [
        ("users=main", signature("users=canary", KEY, int(NOW) + 60), "bad_signature"),
        ("users=canary", signature("users=canary", b"another-key-of-16+", int(NOW) + 60), "bad_signature"),
        ("users=canary", signature("users=canary", KEY, int(NOW) + 60)[:-1] + "0", "bad_signature"),
        ("users=canary", signature("users=canary", KEY, int(NOW) - 1), "expired"),
        ("users=canary", signature("users=canary", KEY, int(NOW)), "expired"),
        ("users=canary", signature("users=canary", KEY, int(NOW + MAX_SIGNATURE_TTL) + 5), "too_long_lived"),
        ("users=canary", "exp=1700000060", "malformed"),
        ("users=canary", "v1=" + "0" * 64, "malformed"),
        ("users=canary", "exp=-5;v1=" + "0" * 64, "malformed"),
        ("users=canary", "exp=1700000060;v1=abc", "malformed"),
        ("users=canary", "garbage", "malformed"),
    ],
)
def test_an_invalid_signature_says_why(value: str, signed: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"^{why}$"):
        verify_signature(value, signed, KEY, NOW)


def test_verification_compares_digests_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_client import overrides as module

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(module.hmac, "compare_digest", spy)
    verify_signature("users=canary", signature("users=canary", KEY, int(NOW) + 60), KEY, NOW)
    assert len(compared) == 1


def test_sign_overrides_makes_both_headers_that_a_hop_accepts() -> None:
    headers = sign_overrides({"users": "canary"}, KEY.decode(), ttl=120, now=NOW)
    assert headers[OVERRIDE_HEADER] == "users=canary"
    assert verify_signature("users=canary", headers[OVERRIDE_SIGNATURE_HEADER], KEY, NOW) == int(NOW) + 120
    assert sign_overrides("users=canary;b=c", KEY, now=NOW)[OVERRIDE_HEADER] == "users=canary;b=c"


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (({"users": "canary"}, b"short"), {}, "at least 16 bytes"),
        (({"users": "canary"}, KEY), {"ttl": 0}, "ttl must be"),
        (({"users": "canary"}, KEY), {"ttl": MAX_SIGNATURE_TTL + 1}, "ttl must be"),
        (({"Users": "canary"}, KEY), {}, "not a service name"),
        (("users=", KEY), {}, "is not 'service=variant'"),
    ],
)
def test_sign_overrides_refuses_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidOverride, match=match):
        sign_overrides(*args, **kwargs)


# -- in code: route_overrides / current_overrides ----------------------------------------------------


def test_outside_any_block_there_are_no_overrides() -> None:
    assert current_overrides() == {}
    assert in_force() is None


def test_nested_blocks_merge_and_the_inner_one_wins() -> None:
    with route_overrides({"users": "canary", "search": "pr-1"}):
        with route_overrides({"users": "pr-7", "billing": "blue"}) as inner:
            assert current_overrides() == inner == {"search": "pr-1", "users": "pr-7", "billing": "blue"}
            assert list(inner) == ["search", "users", "billing"]
            overrides = in_force()
            assert overrides is not None
            assert overrides.header == "search=pr-1;users=pr-7;billing=blue"
        assert current_overrides() == {"users": "canary", "search": "pr-1"}
    assert current_overrides() == {}


def test_an_empty_block_puts_nothing_in_force() -> None:
    with route_overrides({}) as inner:
        assert inner == {}
        assert in_force() is None
        with route_overrides({"users": "canary"}), route_overrides({}) as same:
            assert same == {"users": "canary"}


def test_current_overrides_is_a_copy() -> None:
    with route_overrides({"users": "canary"}):
        current_overrides()["users"] = "evil"
        assert current_overrides() == {"users": "canary"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"Users": "canary"}, "'Users' is not a service name"),
        ({"users": ""}, "'' is not a variant name"),
        ({"users": "a;b=c"}, "is not a variant name"),
        ({"users": 3}, "3 is not a variant name"),
        ({1: "canary"}, "1 is not a service name"),
        ("users=canary", "must be a mapping"),
        ({f"s{i}": "v" for i in range(MAX_OVERRIDES + 1)}, f"at most {MAX_OVERRIDES}"),
    ],
)
def test_bad_overrides_raise_before_anything_is_sent(overrides: Any, match: str) -> None:
    with pytest.raises(InvalidOverride, match=match) as caught, route_overrides(overrides):
        pass  # pragma: no cover - never entered
    assert isinstance(caught.value, MeshError)
    assert isinstance(caught.value, ValueError)
    assert current_overrides() == {}


def test_too_long_a_header_is_refused() -> None:
    names = {f"{'s' * 60}{i:02}": "v" * 63 for i in range(9)}
    with pytest.raises(InvalidOverride, match=f"at most {MAX_HEADER_LENGTH}"):
        Overrides.of(names)
    outer = Overrides.of(dict(list(names.items())[:4]))  # fits alone, not merged with the rest
    with pytest.raises(InvalidOverride, match="characters"):
        outer.merged(dict(list(names.items())[4:]))


def test_overrides_reach_threads_started_with_a_copied_context_and_not_others() -> None:
    with route_overrides({"users": "canary"}):
        ctx = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            copied = pool.submit(ctx.run, current_overrides).result()
            bare = pool.submit(current_overrides).result()
    assert copied == {"users": "canary"}
    assert bare == {}


def test_overrides_reach_asyncio_tasks_and_to_thread() -> None:
    async def main() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        with route_overrides({"users": "canary"}):
            task = asyncio.create_task(asyncio.sleep(0, current_overrides()))
            threaded = await asyncio.to_thread(current_overrides)
            later = asyncio.create_task(_inner_block())
            return await task, threaded, await later

    async def _inner_block() -> dict[str, str]:
        with route_overrides({"search": "pr-1"}):
            await asyncio.sleep(0)
            return current_overrides()

    assert asyncio.run(main()) == (
        {"users": "canary"},
        {"users": "canary"},
        {"users": "canary", "search": "pr-1"},
    )


def test_a_task_s_inner_block_does_not_leak_into_its_parent() -> None:
    async def main() -> dict[str, str]:
        with route_overrides({"users": "canary"}):

            async def child() -> None:
                with route_overrides({"users": "pr-9"}):
                    await asyncio.sleep(0)

            await asyncio.gather(child(), child())
            return current_overrides()

    assert asyncio.run(main()) == {"users": "canary"}


def test_the_public_names() -> None:
    assert mesh_client.route_overrides is route_overrides
    assert mesh_client.current_overrides is current_overrides


# -- inbound: the trust boundary ---------------------------------------------------------------------

ACCEPT = OverridesConfig(accept_inbound=True)
SIGNED = OverridesConfig(accept_inbound=True, secret_env="TEST_MESH_OVERRIDE_SECRET")


def dropped(otel: Otel) -> dict[str, int]:
    data = otel.metrics.get_metrics_data()
    found: dict[str, int] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "mesh_client.overrides.dropped":
                    for p in metric.data.data_points:
                        found[str(p.attributes["mesh.override.reason"])] = p.value
    return found


def grew(otel: Otel, reason: str, admit: Any) -> Any:
    before = dropped(otel).get(reason, 0)
    result = admit()
    assert dropped(otel).get(reason, 0) == before + 1
    return result


def test_no_header_means_no_overrides_and_nothing_counted(otel: Otel) -> None:
    before = dropped(otel)
    assert admit_inbound({}, ACCEPT) is None
    assert admit_inbound({"x-request-id": "r"}, SIGNED) is None
    assert dropped(otel) == before


def test_inbound_overrides_are_dropped_unless_accept_inbound(otel: Otel) -> None:
    headers = {OVERRIDE_HEADER: "users=canary"}
    assert grew(otel, "not_accepted", lambda: admit_inbound(headers, OverridesConfig())) is None
    assert grew(otel, "not_accepted", lambda: admit_inbound(headers, None)) is None


def test_accepted_overrides_keep_the_value_as_received() -> None:
    admitted = admit_inbound({OVERRIDE_HEADER: " users=a;search=b;users=canary "}, ACCEPT)
    assert admitted is not None
    assert dict(admitted.mapping) == {"search": "b", "users": "canary"}
    assert admitted.header == "users=a;search=b;users=canary"  # carried on unchanged
    assert admitted.signature is None


def test_a_malformed_inbound_override_is_dropped_whole(otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mesh_client.overrides"):
        assert grew(otel, "malformed", lambda: admit_inbound({OVERRIDE_HEADER: "users=canary;Bad"}, ACCEPT)) is None


def test_signed_overrides_are_accepted_with_a_valid_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MESH_OVERRIDE_SECRET", KEY.decode())
    headers = sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW)
    admitted = admit_inbound(headers, SIGNED, now=NOW + 59)
    assert admitted is not None
    assert dict(admitted.mapping) == {"users": "canary"}
    assert admitted.signature == headers[OVERRIDE_SIGNATURE_HEADER]
    assert admitted.expires == int(NOW) + 60


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({OVERRIDE_HEADER: "users=canary"}, "unsigned"),
        ({OVERRIDE_HEADER: "users=canary", OVERRIDE_SIGNATURE_HEADER: "x" * 300}, "unsigned"),
        ({**sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW), OVERRIDE_HEADER: "users=main"}, "bad_signature"),
        (sign_overrides({"users": "canary"}, b"not-the-key-at-all", ttl=60, now=NOW), "bad_signature"),
        (sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW - 61), "expired"),
        ({OVERRIDE_HEADER: "users=canary", OVERRIDE_SIGNATURE_HEADER: "exp=1;v1=2"}, "malformed"),
    ],
)
def test_with_secret_env_unsigned_wrong_or_expired_overrides_are_dropped(
    headers: dict[str, str], reason: str, otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MESH_OVERRIDE_SECRET", KEY.decode())
    assert grew(otel, reason, lambda: admit_inbound(headers, SIGNED, now=NOW)) is None


@pytest.mark.parametrize("value", [None, "", "too-short"])
def test_without_a_usable_key_every_inbound_override_is_dropped(
    value: str | None, otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("TEST_MESH_OVERRIDE_SECRET", raising=False)
    else:
        monkeypatch.setenv("TEST_MESH_OVERRIDE_SECRET", value)
    headers = sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW)
    assert grew(otel, "no_key", lambda: admit_inbound(headers, SIGNED, now=NOW)) is None


def test_without_secret_env_a_signature_is_kept_to_be_carried_on() -> None:
    headers = sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW)
    admitted = admit_inbound(headers, ACCEPT)
    assert admitted is not None
    assert admitted.signature == headers[OVERRIDE_SIGNATURE_HEADER]
    assert admitted.expires is None  # (not verified here)


def test_read_inbound_and_begin_request_put_accepted_overrides_in_force() -> None:
    headers = {OVERRIDE_HEADER: "users=canary", "x-request-id": "req-1"}
    inbound = read_inbound(headers, header_prefix="x-envoy", context_headers=(), overrides=ACCEPT)
    assert inbound.overrides is not None
    assert dict(inbound.overrides.mapping) == {"users": "canary"}
    assert read_inbound(headers, header_prefix="x-envoy", context_headers=()).overrides is None

    def request() -> tuple[dict[str, str], dict[str, str]]:
        end = begin_request(headers, header_prefix="x-envoy", context_headers=(), overrides=ACCEPT)
        try:
            seen = current_overrides()
            with route_overrides({"search": "pr-1"}):
                merged = current_overrides()
            assert current_inbound() is not None
            return seen, merged
        finally:
            end()

    with route_overrides({"billing": "blue"}):  # the server's own context does not leak in
        seen, merged = contextvars.copy_context().run(request)
        assert current_overrides() == {"billing": "blue"}
    assert seen == {"users": "canary"}
    assert merged == {"users": "canary", "search": "pr-1"}


def test_a_request_whose_override_is_dropped_runs_with_none_in_force() -> None:
    def request() -> dict[str, str]:
        end = begin_request({OVERRIDE_HEADER: "users=canary"}, header_prefix="x-envoy", context_headers=())
        try:
            return current_overrides()
        finally:
            end()

    with route_overrides({"billing": "blue"}):
        assert contextvars.copy_context().run(request) == {}


def test_a_merged_set_keeps_the_expiry_of_the_signed_one_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MESH_OVERRIDE_SECRET", KEY.decode())
    admitted = admit_inbound(sign_overrides({"users": "canary"}, KEY, ttl=60, now=NOW), SIGNED, now=NOW)
    assert admitted is not None
    merged = admitted.merged({"search": "pr-1"})
    assert merged.expires == admitted.expires
    assert merged.signature is None
    assert merged.header == "users=canary;search=pr-1"
    assert admitted.merged({}) is admitted
