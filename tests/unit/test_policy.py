"""Call policies, per-call options (``call_options``) and deadlines."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading

import pytest

import mesh_client
from mesh_client import CallOptions, CallPolicy, Route, call_options, deadline, time_left
from mesh_client.deadline import current_deadline
from mesh_client.policy import NEVER_SENT_TOKENS, NO_OPTIONS, UNSET, current_options

DEFAULT_TOKENS = ("connect-failure", "refused-stream", "reset-before-request")

# ---------------------------------------------------------------------------------------------
# CallPolicy


def test_call_policy_defaults_match_the_registry_defaults() -> None:
    policy = CallPolicy()

    assert policy.timeout == 1.0
    assert policy.per_try_timeout is None
    assert policy.retries == 1
    assert policy.retry_on == DEFAULT_TOKENS
    assert policy.retriable_status_codes == ()
    assert policy.idempotent_methods == {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}


def test_default_retry_tokens_are_all_never_sent_tokens() -> None:
    assert set(DEFAULT_TOKENS) <= NEVER_SENT_TOKENS
    assert frozenset({"connect-failure", "refused-stream", "reset-before-request"}) == NEVER_SENT_TOKENS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("timeout", 0, id="timeout-zero"),
        pytest.param("timeout", -1.0, id="timeout-negative"),
        pytest.param("timeout", math.nan, id="timeout-nan"),
        pytest.param("timeout", math.inf, id="timeout-inf"),
        pytest.param("timeout", "1", id="timeout-string"),
        pytest.param("timeout", None, id="timeout-none"),
        pytest.param("timeout", True, id="timeout-bool"),
        pytest.param("per_try_timeout", 0.0, id="per-try-zero"),
        pytest.param("per_try_timeout", -0.5, id="per-try-negative"),
        pytest.param("per_try_timeout", math.nan, id="per-try-nan"),
        pytest.param("retries", -1, id="retries-negative"),
        pytest.param("retries", 11, id="retries-too-many"),
        pytest.param("retries", True, id="retries-bool"),
        pytest.param("retries", 1.0, id="retries-float"),
        pytest.param("retry_on", ("connect-failure", "bogus"), id="retry-on-unknown-token"),
        pytest.param("retry_on", ("retriable-headers",), id="retry-on-unsupported-token"),
        pytest.param("retriable_status_codes", (99,), id="status-code-too-small"),
        pytest.param("retriable_status_codes", (600,), id="status-code-too-large"),
        pytest.param("retriable_status_codes", ("503",), id="status-code-string"),
        pytest.param("idempotent_methods", frozenset({""}), id="empty-method"),
        pytest.param("idempotent_methods", "GET", id="methods-string"),
    ],
)
def test_call_policy_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        CallPolicy(**{field: value})  # type: ignore[arg-type]


def test_call_policy_is_frozen() -> None:
    policy = CallPolicy()

    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 5  # type: ignore[misc]
    assert policy.retries == 1


def test_new_returns_a_changed_copy_and_leaves_the_original() -> None:
    policy = CallPolicy(timeout=2.0, retries=3)

    changed = policy.new(timeout=0.5, per_try_timeout=0.1)

    assert changed.timeout == 0.5
    assert changed.per_try_timeout == 0.1
    assert changed.retries == 3
    assert policy.timeout == 2.0
    assert policy.per_try_timeout is None


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"timeout": -1}, id="negative-timeout"),
        pytest.param({"retries": 99}, id="too-many-retries"),
        pytest.param({"retry_on": ("nope",)}, id="unknown-token"),
    ],
)
def test_new_validates_like_the_constructor(changes: dict[str, object]) -> None:
    policy = CallPolicy()

    with pytest.raises(ValueError, match=rf"^{next(iter(changes))}\b"):
        policy.new(**changes)


def test_call_policy_normalises_retry_on_like_call_options() -> None:
    policy = CallPolicy(retry_on="connect-failure,refused-stream")  # type: ignore[arg-type]

    assert policy.retry_on == CallOptions(retry_on="connect-failure,refused-stream").retry_on  # type: ignore[arg-type]
    assert policy.retry_tokens_for("POST") == ("connect-failure", "refused-stream")


# ---------------------------------------------------------------------------------------------
# retry_tokens_for


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_keep_every_token(method: str) -> None:
    policy = CallPolicy(retry_on=("5xx", "connect-failure", "reset"))

    assert policy.retry_tokens_for(method) == ("5xx", "connect-failure", "reset")


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
def test_non_idempotent_methods_keep_tokens_that_prove_nothing_was_sent(method: str) -> None:
    policy = CallPolicy(retry_on=DEFAULT_TOKENS)

    assert policy.retry_tokens_for(method) == DEFAULT_TOKENS


@pytest.mark.parametrize(
    "retry_on",
    [
        pytest.param(("connect-failure", "5xx"), id="with-5xx"),
        pytest.param(("refused-stream", "reset"), id="with-reset"),
        pytest.param(("gateway-error",), id="gateway-error-only"),
        pytest.param(("connect-failure", "retriable-status-codes"), id="with-status-codes"),
    ],
)
def test_post_gets_no_tokens_when_any_token_may_retry_a_delivered_request(retry_on: tuple[str, ...]) -> None:
    policy = CallPolicy(retry_on=retry_on, retriable_status_codes=(503,))

    assert policy.retry_tokens_for("POST") == ()
    assert policy.retry_tokens_for("GET") == retry_on


def test_explicit_idempotent_true_keeps_tokens_for_post() -> None:
    policy = CallPolicy(retry_on=("5xx", "connect-failure"))

    assert policy.retry_tokens_for("POST", idempotent=True) == ("5xx", "connect-failure")


def test_explicit_idempotent_false_drops_unsafe_tokens_for_get() -> None:
    policy = CallPolicy(retry_on=("5xx", "connect-failure"))

    assert policy.retry_tokens_for("GET", idempotent=False) == ()


def test_explicit_idempotent_false_still_keeps_never_sent_tokens() -> None:
    policy = CallPolicy(retry_on=DEFAULT_TOKENS)

    assert policy.retry_tokens_for("GET", idempotent=False) == DEFAULT_TOKENS


def test_registry_idempotent_methods_decide_for_other_names() -> None:
    policy = CallPolicy(retry_on=("reset",), idempotent_methods=frozenset({"get_user"}))

    assert policy.retry_tokens_for("get_user") == ("reset",)
    assert policy.retry_tokens_for("delete_user") == ()
    assert policy.retry_tokens_for("GET") == ()


@pytest.mark.parametrize(
    ("method", "idempotent"),
    [("GET", None), ("POST", None), ("POST", True), ("GET", True)],
)
def test_zero_retries_gives_no_tokens(method: str, idempotent: bool | None) -> None:
    policy = CallPolicy(retries=0, retry_on=("5xx", "connect-failure"))

    assert policy.retry_tokens_for(method, idempotent=idempotent) == ()


# ---------------------------------------------------------------------------------------------
# CallOptions


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("timeout", 0, id="timeout-zero"),
        pytest.param("timeout", -0.5, id="timeout-negative"),
        pytest.param("timeout", math.nan, id="timeout-nan"),
        pytest.param("timeout", math.inf, id="timeout-inf"),
        pytest.param("timeout", "0.5", id="timeout-string"),
        pytest.param("timeout", None, id="timeout-none"),
        pytest.param("timeout", False, id="timeout-bool"),
        pytest.param("per_try_timeout", 0, id="per-try-zero"),
        pytest.param("per_try_timeout", -1, id="per-try-negative"),
        pytest.param("per_try_timeout", "fast", id="per-try-string"),
        pytest.param("retries", -1, id="retries-negative"),
        pytest.param("retries", 11, id="retries-too-many"),
        pytest.param("retries", True, id="retries-bool"),
        pytest.param("retries", 2.0, id="retries-float"),
        pytest.param("retry_on", ("bogus",), id="retry-on-unknown"),
        pytest.param("retry_on", ("5xx", 3), id="retry-on-non-string"),
        pytest.param("retry_on", 5, id="retry-on-number"),
        pytest.param("retriable_status_codes", (99,), id="codes-too-small"),
        pytest.param("retriable_status_codes", (600,), id="codes-too-large"),
        pytest.param("retriable_status_codes", ("503",), id="codes-string"),
        pytest.param("retriable_status_codes", (True,), id="codes-bool"),
        pytest.param("idempotent", "yes", id="idempotent-string"),
        pytest.param("idempotent", 1, id="idempotent-int"),
        pytest.param("idempotent", None, id="idempotent-none"),
        pytest.param("route", "istio", id="route-unknown"),
        pytest.param("route", "ENVOY", id="route-upper-case"),
        pytest.param("route", None, id="route-none"),
    ],
)
def test_call_options_reject_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        CallOptions(**{field: value})  # type: ignore[arg-type]


def test_call_options_normalise_their_values() -> None:
    options = CallOptions(timeout=2, retry_on=["5xx", "reset", "5xx"], retriable_status_codes=[503], route="envoy")  # type: ignore[arg-type]

    assert options.timeout == 2.0
    assert isinstance(options.timeout, float)
    assert options.retry_on == ("5xx", "reset")
    assert options.retriable_status_codes == (503,)
    assert options.route is Route.ENVOY


def test_call_options_accept_per_try_none_to_switch_it_off() -> None:
    assert CallOptions(per_try_timeout=None).per_try_timeout is None


def test_empty_call_options_leave_everything_unset() -> None:
    options = CallOptions()

    for f in dataclasses.fields(options):
        assert getattr(options, f.name) is UNSET, f.name


def test_merged_inner_values_win_and_unset_keeps_outer() -> None:
    outer = CallOptions(timeout=1.0, per_try_timeout=0.2, retries=2, route=Route.ENVOY, idempotent=False)
    inner = CallOptions(timeout=0.5, per_try_timeout=None, idempotent=True)

    merged = outer.merged(inner)

    assert merged.timeout == 0.5
    assert merged.per_try_timeout is None
    assert merged.retries == 2
    assert merged.route is Route.ENVOY
    assert merged.idempotent is True
    assert merged.retry_on is UNSET
    assert merged.retriable_status_codes is UNSET
    assert outer.timeout == 1.0
    assert outer.per_try_timeout == 0.2


def test_merged_with_empty_options_changes_nothing() -> None:
    outer = CallOptions(timeout=1.0, retries=2)

    assert outer.merged(CallOptions()) == outer
    assert CallOptions().merged(outer) == outer


def test_apply_overrides_policy_fields() -> None:
    policy = CallPolicy(timeout=2.0, per_try_timeout=0.5, retries=2, retry_on=("5xx",))
    options = CallOptions(
        timeout=0.75,
        per_try_timeout=None,
        retries=0,
        retry_on=("connect-failure",),
        retriable_status_codes=(503,),
        idempotent=True,
        route="haproxy",
    )

    applied = options.apply(policy)

    assert applied == CallPolicy(
        timeout=0.75,
        per_try_timeout=None,
        retries=0,
        retry_on=("connect-failure",),
        retriable_status_codes=(503,),
        idempotent_methods=policy.idempotent_methods,
    )
    assert policy.timeout == 2.0
    assert policy.per_try_timeout == 0.5


def test_apply_with_unset_fields_keeps_the_policy() -> None:
    policy = CallPolicy(timeout=2.0, per_try_timeout=0.5, retries=3)

    assert CallOptions().apply(policy) == policy
    assert CallOptions(idempotent=True, route="envoy").apply(policy) == policy
    assert CallOptions(retries=0).apply(policy) == policy.new(retries=0)


# ---------------------------------------------------------------------------------------------
# call_options()


def test_no_options_outside_any_block() -> None:
    assert current_options() == NO_OPTIONS


def test_call_options_block_sets_and_restores() -> None:
    with call_options(timeout=0.5, retries=0, idempotent=True, route="envoy"):
        inside = current_options()

    assert inside.timeout == 0.5
    assert inside.retries == 0
    assert inside.idempotent is True
    assert inside.route is Route.ENVOY
    assert current_options() == NO_OPTIONS


def test_call_options_accept_iterables() -> None:
    with call_options(retry_on=iter(["5xx", "reset"]), retriable_status_codes=[503, 504]):
        inside = current_options()

    assert inside.retry_on == ("5xx", "reset")
    assert inside.retriable_status_codes == (503, 504)


def test_nested_call_options_merge_and_restore_outer_values() -> None:
    with call_options(timeout=2.0, retries=3, route="haproxy"):
        with call_options(timeout=0.5, per_try_timeout=None):
            inner = current_options()
            with call_options(retries=0):
                innermost = current_options()
            after_innermost = current_options()
        after_inner = current_options()

    assert (inner.timeout, inner.per_try_timeout, inner.retries, inner.route) == (0.5, None, 3, Route.HAPROXY)
    assert (innermost.timeout, innermost.retries, innermost.route) == (0.5, 0, Route.HAPROXY)
    assert after_innermost == inner
    assert after_inner.timeout == 2.0
    assert after_inner.per_try_timeout is UNSET
    assert after_inner.retries == 3
    assert current_options() == NO_OPTIONS


def test_call_options_restore_when_the_block_raises() -> None:
    class Boom(Exception):
        pass

    with call_options(timeout=2.0):
        with pytest.raises(Boom), call_options(timeout=0.1, retries=0):
            raise Boom
        after_inner = current_options()

    assert after_inner == CallOptions(timeout=2.0)
    assert current_options() == NO_OPTIONS


def _enter_call_options(ran: list[str], **kwargs: object) -> None:
    with call_options(**kwargs):  # type: ignore[arg-type]
        ran.append("body")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"timeout": -1}, "timeout", id="timeout"),
        pytest.param({"timeout": math.nan}, "timeout", id="timeout-nan"),
        pytest.param({"per_try_timeout": 0}, "per_try_timeout", id="per-try"),
        pytest.param({"retries": -1}, "retries", id="retries"),
        pytest.param({"retry_on": ["sometimes"]}, "retry_on", id="retry-on"),
        pytest.param({"retriable_status_codes": [42]}, "retriable_status_codes", id="codes"),
        pytest.param({"idempotent": "yes"}, "idempotent", id="idempotent"),
        pytest.param({"route": "istio"}, "route", id="route"),
    ],
)
def test_call_options_bad_values_raise_before_the_block_runs(kwargs: dict[str, object], field: str) -> None:
    ran: list[str] = []

    with call_options(timeout=3.0):
        with pytest.raises(ValueError, match=rf"^{field}\b"):
            _enter_call_options(ran, **kwargs)
        after = current_options()

    assert ran == []
    assert after == CallOptions(timeout=3.0)


def test_call_options_are_not_shared_between_threads() -> None:
    barrier = threading.Barrier(3, timeout=10)
    seen: dict[str, object] = {}

    def with_block(name: str, timeout: float) -> None:
        with call_options(timeout=timeout):
            barrier.wait()  # every thread is inside its block (or has none) now
            seen[name] = current_options().timeout
            barrier.wait()

    def without_block() -> None:
        barrier.wait()
        seen["plain"] = current_options()
        barrier.wait()

    threads = [
        threading.Thread(target=with_block, args=("a", 0.25)),
        threading.Thread(target=with_block, args=("b", 0.75)),
        threading.Thread(target=without_block),
    ]
    with call_options(timeout=5.0):
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        main_inside = current_options().timeout

    assert seen == {"a": 0.25, "b": 0.75, "plain": NO_OPTIONS}
    assert main_inside == 5.0


def test_call_options_are_not_shared_between_asyncio_tasks() -> None:
    async def main() -> dict[str, object]:
        a_inside = asyncio.Event()
        b_inside = asyncio.Event()
        seen: dict[str, object] = {}

        async def task_a() -> None:
            with call_options(timeout=0.25):
                a_inside.set()
                await b_inside.wait()
                seen["a"] = current_options().timeout

        async def task_b() -> None:
            await a_inside.wait()
            seen["b_before_own_block"] = current_options()
            with call_options(timeout=0.75):
                b_inside.set()
                seen["b"] = current_options().timeout

        await asyncio.wait_for(asyncio.gather(task_a(), task_b()), timeout=10)
        seen["main"] = current_options()
        return seen

    seen = asyncio.run(main())

    assert seen == {"a": 0.25, "b_before_own_block": NO_OPTIONS, "b": 0.75, "main": NO_OPTIONS}


def test_asyncio_task_started_inside_a_block_inherits_its_options() -> None:
    async def main() -> tuple[object, object]:
        async def child() -> object:
            return current_options().timeout

        with call_options(timeout=0.4):
            task = asyncio.ensure_future(child())
        return await task, current_options()

    child_timeout, after = asyncio.run(main())

    assert child_timeout == 0.4
    assert after == NO_OPTIONS


# ---------------------------------------------------------------------------------------------
# deadline()


def test_no_deadline_outside_any_block() -> None:
    assert time_left() is None
    assert current_deadline() is None


def test_deadline_sets_time_left_and_restores() -> None:
    with deadline(30.0) as at:
        left = time_left()
        assert current_deadline() == at

    assert left is not None
    assert 29.0 < left <= 30.0
    assert time_left() is None


def test_time_left_is_measured_from_the_given_now() -> None:
    with deadline(5.0) as at:
        assert time_left(now=at - 2.0) == pytest.approx(2.0)
        assert time_left(now=at + 1.0) == pytest.approx(-1.0)


def test_inner_longer_deadline_does_not_extend_the_outer_one() -> None:
    with deadline(0.5) as outer_at:
        outer_left = time_left()
        with deadline(30.0) as inner_at:
            inner_left = time_left()
            inner_current = current_deadline()
        after_inner = current_deadline()

    assert inner_at == outer_at
    assert inner_current == outer_at
    assert outer_left is not None
    assert inner_left is not None
    assert inner_left <= outer_left <= 0.5
    assert after_inner == outer_at
    assert time_left() is None


def test_inner_shorter_deadline_shrinks_and_outer_comes_back() -> None:
    with deadline(30.0) as outer_at:
        with deadline(0.5) as inner_at:
            inner_left = time_left()
        after_inner_left = time_left()
        after_inner = current_deadline()

    assert inner_at < outer_at
    assert inner_left is not None
    assert inner_left <= 0.5
    assert after_inner == outer_at
    assert after_inner_left is not None
    assert after_inner_left > 0.5


def test_deadline_restores_when_the_block_raises() -> None:
    class Boom(Exception):
        pass

    with deadline(30.0) as outer_at:
        with pytest.raises(Boom), deadline(0.5):
            raise Boom
        after_inner = current_deadline()

    assert after_inner == outer_at
    assert time_left() is None


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(0, id="zero"),
        pytest.param(0.0, id="zero-float"),
        pytest.param(-1.0, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param("1.5", id="string"),
        pytest.param(None, id="none"),
    ],
)
def test_deadline_rejects_bad_values_before_the_block_runs(seconds: object) -> None:
    ran: list[str] = []

    def enter() -> None:
        with deadline(seconds):  # type: ignore[arg-type]
            ran.append("body")

    with pytest.raises(ValueError, match="deadline"):
        enter()

    assert ran == []
    assert time_left() is None


def test_deadlines_are_not_shared_between_threads() -> None:
    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, float | None] = {}

    def other_thread() -> None:
        barrier.wait()
        seen["other"] = time_left()
        barrier.wait()

    thread = threading.Thread(target=other_thread)
    with deadline(30.0):
        thread.start()
        barrier.wait()
        seen["main"] = time_left()
        barrier.wait()
        thread.join(timeout=10)

    assert seen["other"] is None
    assert seen["main"] is not None


def test_public_names() -> None:
    assert mesh_client.deadline is deadline
    assert mesh_client.time_left is time_left
    assert mesh_client.call_options is call_options
    assert mesh_client.CallOptions is CallOptions
    assert mesh_client.CallPolicy is CallPolicy


def test_unset_is_a_public_type_for_the_call_options_annotations() -> None:
    from mesh_client.policy import UNSET, CallOptions, Unset

    assert isinstance(UNSET, Unset)
    assert repr(UNSET) == "UNSET"
    assert CallOptions().timeout is UNSET
    assert "Unset" in CallOptions.__annotations__["timeout"]
