"""The I/O-free call state machine: what each attempt carries and when the client retries; and
the per-service plans a Mesh starts its calls with."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_client import DeadlineExceeded, Mesh, MeshConnectError, MeshTimeoutError, Route, call_options, deadline
from mesh_client.budget import RetryBudget, RetryBudgetConfig
from mesh_client.clock import use_virtual_clock
from mesh_client.core import (
    Attempt,
    Broken,
    CallRun,
    Done,
    Fail,
    Failure,
    Responded,
    ServicePlan,
    backoff_upper_bound,
    drive,
)
from mesh_client.envoy import classify_reply, policy_headers, timeout_ms
from mesh_client.policy import RETRY_ON_TOKENS
from mesh_client.registry import MeshConfig, load_mapping
from mesh_client.retrying import envoy_may_have_retried, response_retryable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**service: Any) -> MeshConfig:
    svc = {"haproxy": "127.0.0.1:20001", "timeout": 1.0, **service}
    failover = svc.pop("failover", True)
    return load_mapping(
        {
            "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001", "failover": failover},
            "services": {"users": svc},
        }
    )


def run(
    route: Route,
    method: str = "GET",
    clock: Callable[[], float] | None = None,
    idempotent: bool | None = None,
    **service: Any,
) -> CallRun[str]:
    cfg = config(**service)
    svc = cfg.services["users"]
    plan = ServicePlan.of(
        cfg,
        svc,
        clock=clock or FakeClock(),
        jitter=lambda low, high: high,  # the longest back-off Envoy could pick
    )
    return CallRun(plan, method, svc.policy, route, "test", idempotent=idempotent)


def first(r: CallRun[str]) -> Attempt:
    step = r.advance(None)
    assert isinstance(step, Attempt), step
    return step


def headers(attempt: Attempt) -> dict[str, str]:
    return dict(attempt.set_headers)


def ok(status: int = 200, **hdrs: str) -> Responded[str]:
    return Responded(f"response {status}", status, {k.replace("_", "-"): v for k, v in hdrs.items()})


# -- Envoy route -----------------------------------------------------------------------------------


def test_envoy_attempt_carries_policy_headers_and_goes_to_the_sidecar() -> None:
    a = first(run(Route.ENVOY, per_try_timeout=0.3, retries=2, retry_on=["5xx", "connect-failure"]))
    assert str(a.address) == "127.0.0.1:9001"
    assert headers(a) == {
        "Host": "users",
        "x-envoy-upstream-rq-timeout-ms": "1000",
        "x-envoy-upstream-rq-per-try-timeout-ms": "300",
        "x-envoy-retry-on": "5xx,connect-failure",
        "x-envoy-max-retries": "2",
    }
    # the client's own timer sits a little above Envoy's, never below it
    assert 1.0 < a.timeout <= 1.2


def test_envoy_post_with_unsafe_tokens_gets_max_retries_zero() -> None:
    a = first(run(Route.ENVOY, "POST", retries=2, retry_on=["gateway-error", "connect-failure"]))
    assert headers(a)["x-envoy-max-retries"] == "0"
    assert "x-envoy-retry-on" not in headers(a)


def test_envoy_post_keeps_retries_that_prove_nothing_was_sent() -> None:
    a = first(run(Route.ENVOY, "POST", retries=2, retry_on=["connect-failure", "reset-before-request"]))
    assert headers(a)["x-envoy-retry-on"] == "connect-failure,reset-before-request"
    assert headers(a)["x-envoy-max-retries"] == "2"


def test_post_declared_idempotent_is_retried_like_get() -> None:
    a = first(run(Route.ENVOY, "POST", idempotent=True, retries=2, retry_on=["5xx"]))
    assert headers(a)["x-envoy-retry-on"] == "5xx"


def test_envoy_drops_caller_control_headers_and_forwarded_for() -> None:
    a = first(run(Route.ENVOY))
    assert a.drops("X-Envoy-Max-Retries")
    assert a.drops("x-forwarded-for")
    assert a.drops("Host")
    assert not a.drops("traceparent")


def test_deadline_shrinks_the_timeout_sent_to_envoy() -> None:
    with deadline(0.25):
        r = run(Route.ENVOY, clock=time.monotonic)
        sent = int(headers(first(r))["x-envoy-upstream-rq-timeout-ms"])
    assert 200 <= sent <= 250


def test_deadline_already_passed_fails_without_an_attempt() -> None:
    with deadline(0.01) as at:
        while time.monotonic() <= at:  # let the real deadline pass (busy-wait, bounded: 10 ms)
            pass
        step = run(Route.ENVOY, clock=time.monotonic).advance(None)
    assert isinstance(step, Fail)
    assert step.error is DeadlineExceeded
    assert "nothing was sent" in step.message
    assert step.info.attempts == 0


def test_envoy_response_info_reads_envoy_headers() -> None:
    r = run(Route.ENVOY)
    first(r)
    step = r.advance(ok(200, x_envoy_attempt_count="3", x_envoy_upstream_service_time="12"))
    assert isinstance(step, Done)
    assert step.info.attempts == 3
    assert step.info.upstream_service_time == pytest.approx(0.012)
    assert step.info.envoy_error is None


def test_envoy_local_timeout_reply_is_returned_and_classified() -> None:
    r = run(Route.ENVOY)
    first(r)
    step = r.advance(Responded("504", 504, {"content-length": "24"}, b"upstream request timeout"))
    assert isinstance(step, Done)
    assert step.response == "504"
    assert step.info.envoy_error == "timeout"


def test_envoy_refused_fails_over_to_haproxy() -> None:
    r = run(Route.ENVOY)
    first(r)
    step = r.advance(Broken(Failure.CONNECT, ConnectionRefusedError()))
    assert isinstance(step, Attempt)
    assert step.route is Route.HAPROXY
    assert str(step.address) == "127.0.0.1:20001"
    assert not any(k.startswith("x-envoy") for k in headers(step))
    done = r.advance(ok())
    assert isinstance(done, Done)
    assert done.info.failed_over
    assert done.info.route is Route.HAPROXY
    assert done.info.attempts == 1


def test_envoy_refused_without_failover_is_a_connect_error() -> None:
    r = run(Route.ENVOY, failover=False)
    first(r)
    step = r.advance(Broken(Failure.CONNECT, ConnectionRefusedError()))
    assert isinstance(step, Fail)
    assert step.error is MeshConnectError
    assert "Envoy sidecar at 127.0.0.1:9001" in step.message
    assert "failover is off" in step.message


def test_envoy_client_timeout_blames_the_sidecar() -> None:
    clock = FakeClock()
    r = run(Route.ENVOY, clock=clock)
    attempt = first(r)
    clock.now += attempt.timeout
    step = r.advance(Broken(Failure.TIMEOUT, TimeoutError()))
    assert isinstance(step, Fail)
    assert step.error is MeshTimeoutError
    assert "stuck" in step.message


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY])
def test_a_timeout_raised_before_the_time_is_up_says_so_with_the_librarys_words(route: Route) -> None:
    # (a mocking library's "no response" is a timeout exception, raised at once)
    clock = FakeClock()
    r = run(route, clock=clock, retries=0)
    attempt = first(r)
    clock.now += 0.002
    step = r.advance(Broken(Failure.TIMEOUT, TimeoutError(), "TimeoutException: No response can be found"))
    assert isinstance(step, Fail)
    assert step.error is MeshTimeoutError
    assert "No response can be found" in step.message
    assert "stuck" not in step.message
    assert f"{attempt.timeout:.3f} s" not in step.message or "before the attempt's" in step.message


# -- HAProxy route ---------------------------------------------------------------------------------


def test_haproxy_attempt_has_no_envoy_header() -> None:
    a = first(run(Route.HAPROXY, per_try_timeout=0.3, retries=2, retry_on=["5xx"]))
    assert str(a.address) == "127.0.0.1:20001"
    assert headers(a) == {"Host": "users", "x-mesh-timeout-ms": "300"}
    assert a.drops("x-envoy-retry-on")
    assert a.timeout == pytest.approx(0.3)


def test_haproxy_retries_503_with_envoy_backoff_then_succeeds() -> None:
    clock = FakeClock()
    r = run(Route.HAPROXY, clock=clock, retries=2, retry_on=["gateway-error"])
    first(r)
    delays = []
    for _ in range(2):
        step = r.advance(ok(503))
        assert isinstance(step, Attempt)
        delays.append(step.delay)
        clock.now += step.delay
    done = r.advance(ok(200))
    assert isinstance(done, Done)
    assert done.info.attempts == 3
    assert delays == [backoff_upper_bound(1), backoff_upper_bound(2)] == [0.025, 0.050]


def test_haproxy_returns_the_last_response_when_retries_run_out() -> None:
    r = run(Route.HAPROXY, retries=1, retry_on=["5xx"])
    first(r)
    assert isinstance(r.advance(ok(500)), Attempt)
    done = r.advance(ok(500))
    assert isinstance(done, Done)
    assert done.response == "response 500"
    assert done.info.attempts == 2


def test_haproxy_post_is_not_retried_after_a_response() -> None:
    r = run(Route.HAPROXY, "POST", retries=2, retry_on=["gateway-error", "connect-failure"])
    first(r)
    done = r.advance(ok(503))
    assert isinstance(done, Done)
    assert done.info.attempts == 1


def test_haproxy_post_is_retried_when_nothing_was_sent() -> None:
    r = run(Route.HAPROXY, "POST", retries=1, retry_on=["connect-failure"])
    first(r)
    assert isinstance(r.advance(Broken(Failure.CONNECT, ConnectionRefusedError())), Attempt)


def test_haproxy_reset_is_not_retried_under_connect_failure_only() -> None:
    r = run(Route.HAPROXY, retries=2, retry_on=["connect-failure"])
    first(r)
    step = r.advance(Broken(Failure.RESET, ConnectionResetError(), "reset"))
    assert isinstance(step, Fail)
    assert "broke" in step.message


def test_haproxy_per_try_timeout_is_retried_but_the_total_ends_the_call() -> None:
    clock = FakeClock()
    r = run(Route.HAPROXY, clock=clock, per_try_timeout=0.4, retries=5, retry_on=["5xx"])
    a = first(r)
    assert a.per_try_limited
    clock.now += a.timeout
    b = r.advance(Broken(Failure.TIMEOUT, TimeoutError()))
    assert isinstance(b, Attempt)
    clock.now += b.delay + b.timeout
    c = r.advance(Broken(Failure.TIMEOUT, TimeoutError()))
    assert isinstance(c, Attempt)
    # the third attempt only gets what is left of the 1 s total
    assert c.timeout == pytest.approx(1.0 - 0.8 - b.delay - c.delay)
    assert not c.per_try_limited
    clock.now += c.delay + c.timeout
    end = r.advance(Broken(Failure.TIMEOUT, TimeoutError()))
    assert isinstance(end, Fail)
    assert end.error is MeshTimeoutError
    assert "3 attempts" in end.message


def test_a_timeout_of_the_whole_call_is_never_retried_even_when_reported_early() -> None:
    """Only a per-try timeout is retried. An attempt given all the time the call had left that
    times out ends the call, even if the wire reports it before the core's clock says the time is
    up (a socket's clock and ``mesh_client.clock`` need not agree)."""
    clock = FakeClock()
    r = run(Route.HAPROXY, clock=clock, retries=5, retry_on=["5xx", "reset"])
    a = first(r)
    assert not a.per_try_limited
    clock.now += a.timeout / 2  # half the call's time still left by the core's clock
    end = r.advance(Broken(Failure.TIMEOUT, TimeoutError()))
    assert isinstance(end, Fail)
    assert end.error is MeshTimeoutError
    assert "1 attempt " in end.message


def test_backoff_that_would_pass_the_total_timeout_is_not_taken() -> None:
    clock = FakeClock()
    r = run(Route.HAPROXY, clock=clock, retries=3, retry_on=["5xx"])
    first(r)
    clock.now += 0.99  # 10 ms left; the back-off ceiling before retry 1 is 25 ms
    done = r.advance(ok(503))
    assert isinstance(done, Done)
    assert done.info.attempts == 1


def test_non_replayable_body_is_retried_only_when_nothing_was_sent() -> None:
    cfg = config(retries=2, retry_on=["5xx"])
    svc = cfg.services["users"]
    plan = ServicePlan.of(cfg, svc, clock=FakeClock(), jitter=lambda low, high: 0.0)
    r: CallRun[str] = CallRun(plan, "PUT", svc.policy, Route.HAPROXY, "test", replayable=False)
    first(r)
    assert isinstance(r.advance(ok(503)), Done)


def test_backoff_bounds_follow_envoy() -> None:
    """Envoy 1.40's router: an interval of 25 ms doubling per retry, capped at 10 x 25 ms (the
    figures measured through real Envoy by the conformance suite's back-off test)."""
    bounds = [backoff_upper_bound(n) for n in (1, 2, 3, 4, 5, 6, 10, 100)]
    assert bounds == [0.025, 0.050, 0.100, 0.200, 0.250, 0.250, 0.250, 0.250]


def test_drive_discards_retried_responses_and_returns_the_last() -> None:
    discarded: list[str] = []
    statuses = iter([503, 503, 200])
    r = run(Route.HAPROXY, retries=2, retry_on=["5xx"])

    def send(attempt: Attempt) -> Responded[str]:
        status = next(statuses)
        return Responded(f"r{attempt.number}-{status}", status, {})

    result = drive(r, send, discarded.append, sleep=lambda s: None)
    assert isinstance(result, Done)
    assert result.response == "r3-200"
    assert discarded == ["r1-503", "r2-503"]


HAPROXY_NO_SERVER = (
    b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
)


def haproxy_page(status: int, body: bytes) -> Responded[str]:
    headers = {"content-type": "text/html", "content-length": str(len(body))}
    return Responded(f"haproxy {status}", status, headers, body)


def test_haproxy_no_server_page_is_a_connect_failure_even_for_post() -> None:
    r = run(Route.HAPROXY, "POST", retries=2, retry_on=["connect-failure"])
    a = first(r)
    page = haproxy_page(503, HAPROXY_NO_SERVER)
    assert r.wants_body(page.status, page.headers)
    assert isinstance(r.advance(page), Attempt)
    assert a.route is Route.HAPROXY


def test_an_application_503_is_not_a_connect_failure() -> None:
    r = run(Route.HAPROXY, retries=2, retry_on=["connect-failure"])
    first(r)
    done = r.advance(Responded("app 503", 503, {"content-type": "application/json", "content-length": "2"}, b"{}"))
    assert isinstance(done, Done)


def test_haproxy_bad_gateway_is_retried_like_a_reset_for_get_only() -> None:
    page = haproxy_page(
        502,
        b"<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response.\n"
        b"</body></html>\n",
    )
    get = run(Route.HAPROXY, retries=1, retry_on=["reset"])
    first(get)
    assert isinstance(get.advance(page), Attempt)
    post = run(Route.HAPROXY, "POST", retries=1, retry_on=["reset"])
    first(post)
    assert isinstance(post.advance(page), Done)


def test_caller_set_stock_envoy_headers_are_dropped_under_a_custom_prefix() -> None:
    cfg = load_mapping(
        {
            "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001", "header_prefix": "x-foo"},
            "services": {"users": {"haproxy": "127.0.0.1:20001"}},
        }
    )
    svc = cfg.services["users"]
    r: CallRun[str] = CallRun(ServicePlan.of(cfg, svc), "GET", svc.policy, Route.ENVOY, "test")
    a = first(r)
    assert "x-foo-upstream-rq-timeout-ms" in headers(a)
    assert a.drops("x-foo-max-retries")
    assert a.drops("x-envoy-max-retries")


def test_an_error_escaping_send_still_ends_the_call_span() -> None:
    from mesh_client.telemetry import CallTelemetry

    ended: list[str | None] = []

    class Recording(CallTelemetry):
        def finish(self, info: Any, **outcome: Any) -> None:
            ended.append(outcome.get("error_kind"))
            super().finish(info, **outcome)

    cfg = config()
    svc = cfg.services["users"]
    r: CallRun[str] = CallRun(
        ServicePlan.of(cfg, svc), "GET", svc.policy, Route.HAPROXY, "test", telemetry=Recording("users", "GET")
    )

    def send(attempt: Attempt) -> Responded[str]:
        raise KeyError("a bug in the caller's hook")

    with pytest.raises(KeyError):
        drive(r, send, lambda response: None)
    assert ended == ["error"]


# -- the per-service plans a Mesh starts its calls with --------------------------------------------


def envoy_attempt(mesh: Mesh, service: Any = None) -> Attempt:
    run = mesh.start_call(service or mesh.config.services["users"], "GET")
    attempt = run.advance(None)
    assert isinstance(attempt, Attempt)
    run.abort(RuntimeError("no request is sent"))
    return attempt


def test_the_plans_policy_headers_are_the_general_ones(plain_mesh: Mesh) -> None:
    for options in ({}, {"retries": 1}, {"per_try_timeout": 0.2}, {"idempotent": False}, {"retry_on": ["5xx"]}):
        for _ in range(2):  # the second call takes the plan's cached template
            with call_options(**options):
                attempt = envoy_attempt(plain_mesh)
            sent = dict(attempt.set_headers)
            policy = plain_mesh.config.services["users"].policy.new(
                **{k: v for k, v in options.items() if k != "idempotent"}
            )
            idempotent = options.get("idempotent")
            expected = policy_headers(
                "x-envoy",
                timeout=int(sent["x-envoy-upstream-rq-timeout-ms"]) / 1000,
                per_try_timeout=policy.per_try_timeout,
                retries=policy.retries,
                retry_on=policy.retry_tokens_for("GET", idempotent if isinstance(idempotent, bool) else None),
                retriable_status_codes=policy.retriable_status_codes,
            )
            assert [(n, v) for n, v in attempt.set_headers if n.startswith("x-envoy-")] == expected


def test_a_service_config_not_from_the_registry_gets_a_plan_of_its_own(plain_mesh: Mesh) -> None:
    registered = plain_mesh.config.services["users"]
    stranger = dataclasses.replace(registered, policy=registered.policy.new(timeout=0.2))
    with use_virtual_clock():  # (no time passes between the start of a call and its attempt)
        assert dict(envoy_attempt(plain_mesh, stranger).set_headers)["x-envoy-upstream-rq-timeout-ms"] == "200"
        assert dict(envoy_attempt(plain_mesh).set_headers)["x-envoy-upstream-rq-timeout-ms"] == "1000"
    # both draw on the service's one retry budget
    assert plain_mesh.start_call(stranger, "GET").plan.budget is plain_mesh.retry_budget("users")


def test_a_calls_info_has_each_field_from_its_run() -> None:
    """Every CallInfo field carries what the run knows (the core builds it positionally)."""
    clock = FakeClock()
    r = run(Route.HAPROXY, clock=clock, retries=2, retry_on="5xx")
    r.route_reason = "a reason"
    r.variant, r.haproxy_variant, r.stage = "canary", "canary-haproxy", "live"
    first(r)
    clock.now += 0.25
    step = r.advance(ok(503))
    assert isinstance(step, Attempt), step
    r.budget_exhausted = True
    clock.now += 0.5
    done = r.advance(ok(200))
    assert isinstance(done, Done), done
    assert dataclasses.asdict(done.info) == {
        "service": "users",
        "route": Route.HAPROXY,
        "attempts": 2,
        "failed_over": False,
        "upstream_service_time": None,
        "envoy_error": None,
        "route_reason": "a reason",
        "elapsed": pytest.approx(0.75),
        "retry_budget_exhausted": True,
        "variant": "canary-haproxy",
        "stage": "live",
    }


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 302, 409, 429, 502, 503]),
    tokens=st.lists(st.sampled_from(sorted(RETRY_ON_TOKENS)), unique=True, min_size=1, max_size=5),
    codes=st.lists(st.sampled_from([200, 302, 409, 503]), unique=True, min_size=1, max_size=3),
    names=st.sets(st.sampled_from(["x-envoy-ratelimited", "x-envoy-overloaded"])),
    body=st.sampled_from([None, b"", b"<h1>502 Bad Gateway</h1>", b"No server is available to handle this request"]),
    proxy_error=st.sampled_from([None, "connect_failure", "upstream_reset", "overloaded"]),
)
def test_the_core_retries_an_answer_exactly_when_the_retry_rules_say_so(
    status: int, tokens: list[str], codes: list[int], names: set[str], body: bytes | None, proxy_error: str | None
) -> None:
    """On the route where the client retries (HAProxy, Thrift), an answer is retried exactly when
    ``response_retryable`` says so: the core's shortcut for the usual answer skips no retry."""
    r = run(Route.HAPROXY, retries=2, retry_on=tokens, retriable_status_codes=codes)
    first(r)
    outcome = Responded("answer", status, dict.fromkeys(names, "1"), body, proxy_error=proxy_error)
    expected = response_retryable(outcome, r.tokens, tuple(codes), "x-envoy", replayable=True, pause_fits=True)
    assert isinstance(r.advance(outcome), Attempt) == expected


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 204, 302, 399, 409, 429, 502, 503, 504]),
    tokens=st.lists(st.sampled_from(sorted(RETRY_ON_TOKENS)), unique=True, max_size=5),
    codes=st.lists(st.sampled_from([200, 302, 409, 503]), unique=True, min_size=1, max_size=3),
    names=st.sets(
        st.sampled_from(
            ["x-envoy-ratelimited", "x-envoy-overloaded", "x-envoy-drop-overload", "x-envoy-upstream-service-time"]
        )
    ),
    body=st.sampled_from([None, b"", b"no healthy upstream", b"upstream request timeout"]),
)
def test_an_envoy_answer_is_charged_to_the_budget_exactly_as_the_retry_rules_say(
    status: int, tokens: list[str], codes: list[int], names: set[str], body: bytes | None
) -> None:
    """On the Envoy route, an answer without Envoy's attempt count is charged all the retries
    Envoy was allowed exactly when ``envoy_may_have_retried`` says Envoy could have retried it:
    the core's shortcut for the usual answer charges nothing it should have."""
    cfg = config(retries=2, retry_on=tokens, retriable_status_codes=codes)
    svc = cfg.services["users"]
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(min_per_second=10.0), clock=clock)
    plan = ServicePlan.of(cfg, svc, clock=clock, budget=budget)
    r: CallRun[str] = CallRun(plan, "GET", svc.policy, Route.ENVOY, "test")
    first(r)
    before = budget.available()
    outcome = Responded("answer", status, dict.fromkeys(names, "1"), body)
    assert isinstance(r.advance(outcome), Done)
    may = envoy_may_have_retried(
        outcome, classify_reply(status, outcome.headers, body, "x-envoy"), r.tokens, tuple(codes), "x-envoy"
    )
    assert before - budget.available() == (r.envoy_retries if may else 0)


@pytest.mark.parametrize("route", [Route.ENVOY, Route.HAPROXY])
def test_a_framed_thrift_call_sets_no_headers_and_a_theader_one_does(route: Route) -> None:
    """Framed Thrift has nowhere to put headers: its attempts set none (no request id is made for
    it, no timeout header built); a THeader call carries the request id and its time budget."""
    for transport, carried in (("framed", False), ("header", True)):
        cfg = load_mapping(
            {
                "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001", "envoy_thrift": "127.0.0.1:9002"},
                "services": {"users": {"protocol": "thrift", "transport": transport, "haproxy": "127.0.0.1:20001"}},
            }
        )
        mesh = Mesh(cfg)
        try:
            with call_options(route=route):
                r = mesh.start_call(cfg.services["users"], "get")
            attempt = first(r)
        finally:
            mesh.close()
        names = {name for name, _ in attempt.set_headers}
        assert ("x-request-id" in names) is carried
        assert ("x-mesh-timeout-ms" in names) is carried
        assert bool(r.context_headers) is carried


@settings(max_examples=300, deadline=None)
@given(
    timeout=st.floats(0.01, 120.0),
    per_try_share=st.none() | st.floats(0.05, 0.95),
    retries=st.integers(0, 3),
    tokens=st.lists(st.sampled_from(sorted(RETRY_ON_TOKENS)), unique=True, max_size=4),
    codes=st.lists(st.sampled_from([409, 503]), unique=True, max_size=2),
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    # (clock readings below 1e5 s: above, ``start + timeout - start`` loses enough bits that the
    # rules' own millisecond count can come out one lower than the prepared one, from the timeout)
    starts=st.lists(st.floats(0.0, 1e5), min_size=2, max_size=4),
    budget_left=st.sampled_from([-1, 0, 1, 5]),
)
def test_the_usual_calls_prepared_first_attempt_is_the_one_the_rules_make(
    timeout: float,
    per_try_share: float | None,
    retries: int,
    tokens: list[str],
    codes: list[int],
    method: str,
    starts: list[float],
    budget_left: int,
) -> None:
    """A usual call's first Envoy attempt comes from the plan once a call of the method has made
    it: it is the attempt the rules make for a plan that never prepared one, whenever the call
    starts, and whatever the budget allows (-1: no budget)."""
    per_try = None if per_try_share is None else timeout * per_try_share
    cfg = config(
        timeout=timeout, per_try_timeout=per_try, retries=retries, retry_on=tokens, retriable_status_codes=codes
    )
    svc = cfg.services["users"]
    warm = ServicePlan.of(cfg, svc, clock=FakeClock())
    context = (("x-request-id", "same-for-both"),)

    def attempt_of(plan: ServicePlan, start: float) -> tuple[Attempt, int, bool]:
        plan.clock.now = start  # type: ignore[attr-defined]
        r: CallRun[str] = CallRun(plan, method, svc.policy, Route.ENVOY, "test", context)
        r._budget_left = budget_left  # (as RetryBudget.deposit would have answered)
        attempt = first(r)
        # (the socket timeout from the policy's timeout, or from the clock's readings: the same
        # to the last bits of a float)
        return attempt._replace(call=0, timeout=round(attempt.timeout, 6)), r.envoy_retries, r.budget_exhausted

    for start in starts:
        prepared = attempt_of(warm, start)
        assert prepared == attempt_of(ServicePlan.of(cfg, svc, clock=FakeClock()), start)
        assert dict(prepared[0].set_headers)["x-envoy-upstream-rq-timeout-ms"] == str(timeout_ms(timeout))
    # prepared unless the budget cut the call's retries short
    cut = 0 <= budget_left < retries and svc.policy.retry_tokens_for(method, None)
    assert list(warm.first_envoy) == ([] if cut else [method])
