"""Retry budgets, the sidecar circuit and overload signals, through the core's decisions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_client import ConfigError, Route
from mesh_client.budget import RetryBudget, RetryBudgetConfig
from mesh_client.circuit import SidecarCircuit
from mesh_client.core import Attempt, Broken, CallRun, Done, Failure, Responded, ServicePlan, parse_retry_after
from mesh_client.registry import load_mapping


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**service: Any) -> Any:
    return load_mapping(
        {
            "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:9001"},
            "services": {"users": {"haproxy": "127.0.0.1:20001", "timeout": 1.0, **service}},
        }
    )


def run(
    route: Route, budget: RetryBudget | None = None, circuit: SidecarCircuit | None = None, **service: Any
) -> CallRun[str]:
    cfg = config(**service)
    svc = cfg.services["users"]
    plan = ServicePlan.of(cfg, svc, budget=budget, circuit=circuit, clock=Clock(), jitter=lambda low, high: 0.0)
    return CallRun(plan, "GET", svc.policy, route, "test")


def test_budget_allows_the_floor_then_a_share_of_calls() -> None:
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(percent=20, min_per_second=0.5, ttl=10), clock)
    assert budget.available() == 5  # the floor: 0.5/s over 10 s
    for _ in range(100):
        budget.deposit()
    assert budget.available() == 25  # + 20 % of 100 calls
    assert sum(budget.try_withdraw() for _ in range(40)) == 25
    clock.now += 11  # deposits and withdrawals expire after ttl
    assert budget.available() == 5


class NaiveBudget:
    """The budget as specified: buckets summed on every question."""

    def __init__(self, config: RetryBudgetConfig, clock: Any) -> None:
        self.config, self.clock, self.width = config, clock, config.ttl / 10
        self.calls, self.retries = [0] * 10, [0] * 10
        self.epoch = int(clock() / self.width)

    def roll(self) -> None:
        epoch = int(self.clock() / self.width)
        for i in range(1, min(epoch - self.epoch, 10) + 1):
            self.calls[(self.epoch + i) % 10] = self.retries[(self.epoch + i) % 10] = 0
        self.epoch = max(epoch, self.epoch)

    def balance(self) -> float:
        allowed = self.config.min_per_second * self.config.ttl + sum(self.calls) * self.config.percent / 100
        return allowed - sum(self.retries)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["deposit", "withdraw", "spend", "available", "wait"]),
            st.floats(min_value=0, max_value=4),
            st.integers(min_value=0, max_value=3),
        ),
        max_size=80,
    ),
    percent=st.sampled_from([0.0, 10.0, 20.0, 33.3]),
    floor=st.sampled_from([0.0, 0.2, 1.0]),
)
def test_the_running_sums_answer_as_the_buckets_would(
    ops: list[tuple[str, float, int]], percent: float, floor: float
) -> None:
    now = [1000.0]
    config = RetryBudgetConfig(percent=percent, min_per_second=floor, ttl=10)
    budget, naive = RetryBudget(config, lambda: now[0]), NaiveBudget(config, lambda: now[0])
    for op, seconds, count in ops:
        if op == "wait":
            now[0] += seconds
        elif op == "deposit":
            left = budget.deposit()
            naive.roll()
            naive.calls[naive.epoch % 10] += 1
            assert left == max(0, int(naive.balance()))  # what available() would say next
        elif op == "withdraw":
            naive.roll()
            allowed = naive.balance() >= 1
            if allowed:
                naive.retries[naive.epoch % 10] += 1
            assert budget.try_withdraw() == allowed
        elif op == "spend":
            budget.spend(count)
            if count > 0:
                naive.roll()
                naive.retries[naive.epoch % 10] += count
        else:
            naive.roll()
            assert budget.available() == max(0, int(naive.balance()))


def test_a_failing_dependency_sees_at_most_the_budget() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=20, min_per_second=0, ttl=10), Clock())
    sent = 0
    for _ in range(1000):
        r = run(Route.HAPROXY, budget=budget, retries=3, retry_on=["5xx"])
        step = r.advance(None)
        while isinstance(step, Attempt):
            sent += 1
            step = r.advance(Responded("503", 503, {}))
    # without a budget: 4 attempts per call; with it: about 1.2
    assert 1000 <= sent <= 1200
    assert isinstance(step, Done)
    assert step.info.retry_budget_exhausted


def test_empty_budget_tells_envoy_not_to_retry_and_envoy_retries_are_spent() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=0, min_per_second=0.2, ttl=10), Clock())  # 2 retries
    first = run(Route.ENVOY, budget=budget, retries=3, retry_on=["5xx"])
    a = first.advance(None)
    assert isinstance(a, Attempt)
    assert dict(a.set_headers)["x-envoy-max-retries"] == "2"  # capped to what the budget holds
    first.advance(Responded("503", 503, {"x-envoy-attempt-count": "3"}))
    assert budget.available() == 0
    second = run(Route.ENVOY, budget=budget, retries=3, retry_on=["5xx"])
    b = second.advance(None)
    assert isinstance(b, Attempt)
    assert dict(b.set_headers)["x-envoy-max-retries"] == "0"
    done = second.advance(Responded("503", 503, {}))
    assert isinstance(done, Done)
    assert done.info.retry_budget_exhausted


def envoy_call(budget: RetryBudget, reply: Responded[str], method: str = "GET", **service: Any) -> tuple[int, Any]:
    """One call on the Envoy route answered with ``reply``: the max-retries it sent, its result."""
    cfg = config(**service)
    svc = cfg.services["users"]
    plan = ServicePlan.of(cfg, svc, budget=budget, clock=Clock(), jitter=lambda low, high: 0.0)
    r: CallRun[str] = CallRun(plan, method, svc.policy, Route.ENVOY, "test")
    attempt = r.advance(None)
    assert isinstance(attempt, Attempt)
    return int(dict(attempt.set_headers)["x-envoy-max-retries"]), r.advance(reply)


def test_without_envoys_count_a_retryable_answer_is_charged_every_retry_it_allowed() -> None:
    # a stock Envoy route reports no x-envoy-attempt-count: Envoy may have made 1 + max-retries
    # requests for each 503, so the budget is charged that, and the total stays within it
    budget = RetryBudget(RetryBudgetConfig(percent=20, min_per_second=1, ttl=10), Clock())  # floor 10
    could_have_sent = 0
    for _ in range(1000):
        retries, done = envoy_call(budget, Responded("503", 503, {}), retries=3, retry_on=["5xx"])
        could_have_sent += 1 + retries
        assert isinstance(done, Done)
        assert done.info.attempts == 1  # as far as the client knows
    assert 1000 * 1.2 <= could_have_sent <= 1000 * 1.2 + 10  # without the charge: 4,000
    assert budget.available() == 0


@pytest.mark.parametrize(
    ("status", "headers", "body", "method", "retry_on", "charged"),
    [
        (200, {}, None, "GET", ["5xx"], False),  # a healthy service pays nothing
        (404, {}, b"{}", "GET", ["5xx"], False),  # the application's own 4xx: not retried
        (503, {}, b"{}", "GET", ["5xx"], True),
        (502, {}, b"{}", "GET", ["gateway-error"], True),
        (500, {}, b"{}", "GET", ["gateway-error"], False),  # gateway-error does not cover 500
        (409, {}, b"{}", "GET", ["retriable-4xx"], True),
        (503, {}, b"no healthy upstream", "GET", ["5xx"], False),  # Envoy sent nothing upstream
        (503, {"x-envoy-overloaded": "true"}, b"maintenance mode", "GET", ["5xx"], False),
        (503, {}, b"", "GET", ["5xx"], False),  # no_cluster: the route's cluster does not exist
        (404, {}, b"", "GET", ["5xx"], False),  # no_route
        (
            503,
            {},
            b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure",
            "POST",
            ["connect-failure"],
            True,  # a POST's connect failures are retried by Envoy
        ),
        (
            503,
            {},
            b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            "GET",
            ["reset"],
            True,
        ),
        (504, {}, b"upstream request timeout", "GET", ["reset"], True),  # a per-try timeout, retried
        (503, {}, b"{}", "POST", ["5xx"], False),  # no retry allowed for a POST: max-retries 0
    ],
)
def test_what_an_answer_without_envoys_count_is_charged(
    status: int, headers: dict[str, str], body: bytes | None, method: str, retry_on: list[str], charged: bool
) -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=0, min_per_second=1, ttl=10), Clock())  # 10 retries
    length = {"content-length": str(len(body))} if body is not None else {}
    reply = Responded(str(status), status, {**headers, **length}, body)
    retries, done = envoy_call(budget, reply, method, retries=2, retry_on=retry_on)
    assert isinstance(done, Done)
    # a POST keeps only tokens that prove nothing was sent (connect-failure), else Envoy gets 0
    assert retries == (0 if method == "POST" and "5xx" in retry_on else 2)
    assert budget.available() == (10 - retries if charged else 10)


def test_envoys_count_when_reported_is_what_is_charged() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=0, min_per_second=1, ttl=10), Clock())  # 10 retries
    _, done = envoy_call(budget, Responded("200", 200, {"x-envoy-attempt-count": "2"}), retries=3, retry_on=["5xx"])
    assert isinstance(done, Done)
    assert done.info.attempts == 2
    assert budget.available() == 9  # the one retry Envoy made, though the call ended in a 200


def test_overloaded_responses_are_never_retried() -> None:
    r = run(Route.HAPROXY, retries=3, retry_on=["5xx"])
    r.advance(None)
    assert isinstance(r.advance(Responded("503", 503, {"x-envoy-overloaded": "true"})), Done)


def test_retry_after_within_the_deadline_is_honoured() -> None:
    r = run(Route.HAPROXY, retries=2, retry_on=["retriable-status-codes"], retriable_status_codes=[429])
    r.advance(None)
    step = r.advance(Responded("429", 429, {"retry-after": "0"}))
    assert isinstance(step, Attempt)
    r2 = run(Route.HAPROXY, retries=2, retry_on=["retriable-status-codes"], retriable_status_codes=[503], timeout=3.0)
    r2.advance(None)
    step = r2.advance(Responded("503", 503, {"retry-after": "1"}))
    assert isinstance(step, Attempt)
    assert step.delay == pytest.approx(1.0)


def test_retry_after_beyond_the_deadline_ends_the_call() -> None:
    r = run(Route.HAPROXY, retries=2, retry_on=["retriable-status-codes"], retriable_status_codes=[429])
    r.advance(None)
    done = r.advance(Responded("429", 429, {"retry-after": "5"}))  # the call has 1 s in all
    assert isinstance(done, Done)
    assert done.info.attempts == 1


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 0 ", 0.0), ("soon", None), ("-1", None)])
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_circuit_sends_calls_straight_to_haproxy_after_a_refusal() -> None:
    clock = Clock()
    circuit = SidecarCircuit(base=1.0, cap=4.0, clock=clock)
    first = run(Route.ENVOY, circuit=circuit)
    first.advance(None)
    failover = first.advance(Broken(Failure.CONNECT, ConnectionRefusedError()))
    assert isinstance(failover, Attempt)
    assert failover.route is Route.HAPROXY
    # the next call does not try Envoy at all while the circuit is open
    second = run(Route.ENVOY, circuit=circuit)
    step = second.advance(None)
    assert isinstance(step, Attempt)
    assert step.route is Route.HAPROXY
    assert "circuit open" in second.route_reason
    # after the pause, one call probes Envoy; an answer closes the circuit
    clock.now += 1.5
    probe = run(Route.ENVOY, circuit=circuit)
    p = probe.advance(None)
    assert isinstance(p, Attempt)
    assert p.route is Route.ENVOY
    probe.advance(Responded("ok", 200, {}))
    assert not circuit.failing


def test_circuit_pause_doubles_up_to_the_cap() -> None:
    clock = Clock()
    circuit = SidecarCircuit(base=1.0, cap=4.0, clock=clock)
    pauses = []
    for _ in range(4):
        circuit.refused()
        start = clock.now
        while circuit.is_open():
            clock.now += 0.5
        pauses.append(clock.now - start)
    assert pauses == [1.0, 2.0, 4.0, 4.0]


def test_many_concurrent_refusals_double_the_pause_once() -> None:
    # a sidecar killed under load: every call in flight is refused at about the same time
    clock = Clock()
    circuit = SidecarCircuit(base=1.0, cap=30.0, clock=clock)
    calls = [run(Route.ENVOY, circuit=circuit) for _ in range(50)]
    for call in calls:
        call.advance(None)  # all set out for Envoy before the first refusal
    for call in calls:
        step = call.advance(Broken(Failure.CONNECT, ConnectionRefusedError()))
        assert isinstance(step, Attempt)
        assert step.route is Route.HAPROXY
    clock.now += 1.0
    assert not circuit.is_open()  # the first pause, not 2^49 s capped at 30
    # the probes after the pause are refused too (all at once): the pause doubles once
    probes = [run(Route.ENVOY, circuit=circuit) for _ in range(50)]
    for call in probes:
        step = call.advance(None)
        assert isinstance(step, Attempt)
        assert step.route is Route.ENVOY
    for call in probes:
        call.advance(Broken(Failure.CONNECT, ConnectionRefusedError()))
    clock.now += 1.9
    assert circuit.is_open()
    clock.now += 0.1
    assert not circuit.is_open()


@pytest.mark.parametrize(
    ("budget", "problem"),
    [
        ({"percent": -1}, "percent"),
        ({"ttl": 0}, "ttl"),
        ({"min_per_second": "x"}, "min_per_second"),
        ({"burst": 1}, "unknown key"),
        ("lots", "must be a table"),
    ],
)
def test_bad_retry_budget_is_a_config_error(budget: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        config(retry_budget=budget)
    assert "services.users.retry_budget" in str(raised.value)
