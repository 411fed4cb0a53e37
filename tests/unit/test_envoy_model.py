"""The fake Envoy's own model of Envoy's router (``mesh_client.testing.envoy_model``) against a
table of Envoy's documented behaviour, and against the client's separate prediction of it
(``mesh_client.envoy`` / ``mesh_client.core``): two implementations that must agree on every
token, status and failure. Real Envoy is the judge of both in the conformance suite."""

from __future__ import annotations

import itertools
import random

import pytest

from mesh_client import envoy
from mesh_client.core import backoff_upper_bound
from mesh_client.policy import RETRY_ON_TOKENS
from mesh_client.testing.envoy_model import DEFAULT_MAX_RETRIES_IN_FLIGHT, BackOff, RetryCircuit, retried

#: Envoy's router docs, token by token: (retried failures below HTTP, retried statuses)
DOCUMENTED = {
    "5xx": ({"connect", "reset", "per_try_timeout", "refused_stream"}, set(range(500, 600))),
    "gateway-error": ({"connect", "reset", "per_try_timeout", "refused_stream"}, {502, 503, 504}),
    "reset": ({"connect", "reset", "per_try_timeout", "refused_stream"}, set()),
    "connect-failure": ({"connect"}, set()),
    "reset-before-request": ({"connect"}, set()),
    "refused-stream": ({"refused_stream"}, set()),
    "retriable-4xx": (set(), {409}),
    "retriable-status-codes": (set(), {418}),  # the codes sent: (418,)
    "envoy-ratelimited": (set(), set()),  # by header, below
}
UPSETS = ("connect", "reset", "per_try_timeout", "refused_stream")
STATUSES = (200, 204, 400, 404, 408, 409, 418, 429, 499, 500, 501, 502, 503, 504, 505, 599)


def test_the_table_names_every_token_the_client_accepts() -> None:
    assert set(DOCUMENTED) == RETRY_ON_TOKENS


@pytest.mark.parametrize("token", sorted(DOCUMENTED))
def test_each_token_retries_what_envoy_documents(token: str) -> None:
    upsets, statuses = DOCUMENTED[token]
    assert {u for u in UPSETS if retried([token], upset=u)} == upsets  # type: ignore[arg-type]
    assert {s for s in STATUSES if retried([token], status=s, codes=(418,))} == statuses & set(STATUSES)


def test_envoy_ratelimited_goes_by_the_header_under_the_mesh_prefix() -> None:
    assert retried(["envoy-ratelimited"], status=429, headers={"x-envoy-ratelimited": "true"})
    assert retried(["envoy-ratelimited"], status=200, headers={"X-Acme-RateLimited": "1"}, prefix="x-acme")
    assert not retried(["envoy-ratelimited"], status=429, headers={"retry-after": "1"})
    assert not retried(["envoy-ratelimited"], status=429, headers={"x-envoy-ratelimited": "1"}, prefix="x-acme")


def test_an_upstream_overloaded_header_does_not_stop_envoy_retrying() -> None:
    """Measured through Envoy 1.40 (the conformance scenario of the same name)."""
    assert retried(["gateway-error"], status=503, headers={"x-envoy-overloaded": "true"})


@pytest.mark.parametrize("pair", list(itertools.combinations_with_replacement(sorted(RETRY_ON_TOKENS), 2)))
def test_the_client_predicts_what_the_fake_plays(pair: tuple[str, str]) -> None:
    """The client's rules (its HAProxy-route retries, its budget charges for Envoy's) and the
    fake's, written apart, agree for every pair of tokens over HTTP/1.1 upstreams."""
    tokens = set(pair)
    for status, headers in itertools.product(STATUSES, ({}, {"x-envoy-ratelimited": "true"})):
        client = envoy.retry_on_covers_status(status, headers, tokens, (418,), "x-envoy")
        assert retried(tokens, status=status, headers=headers, codes=(418,)) == client, (status, headers)
    assert retried(tokens, upset="connect") == bool(tokens & envoy.CONNECT_FAILURE_RETRY_ON)
    assert retried(tokens, upset="reset") == bool(tokens & envoy.RESET_RETRY_ON)
    assert retried(tokens, upset="per_try_timeout") == bool(tokens & envoy.RESET_RETRY_ON)


def test_backoff_draws_whole_milliseconds_below_a_doubling_interval() -> None:
    """Envoy's JitteredExponentialBackOffStrategy, default retry_back_off: 25 ms, x2, cap 250."""
    waits: dict[int, set[float]] = {n: set() for n in range(1, 8)}
    rng = random.Random(7)
    for _ in range(3000):
        backoff = BackOff(rng)
        for seen in waits.values():
            seen.add(backoff.next_wait())
    intervals = {1: 25, 2: 50, 3: 100, 4: 200, 5: 250, 6: 250, 7: 250}
    for n, seen in waits.items():
        assert seen == {ms / 1000 for ms in range(intervals[n])}, n  # every whole ms below, none above
        assert backoff_upper_bound(n) == intervals[n] / 1000  # the client's ceiling is the same


def test_retry_circuit_allows_three_retries_in_flight_by_default() -> None:
    breaker = RetryCircuit()
    assert breaker.limit == DEFAULT_MAX_RETRIES_IN_FLIGHT == 3
    slots = [breaker.take(10.0) for _ in range(3)]
    assert all(s is not None for s in slots)
    assert breaker.take(10.1) is None  # a fourth, while three are in flight
    first = slots[0]
    assert first is not None
    breaker.give_back(first, 10.2)
    assert breaker.take(10.1) is None  # at 10.1 the first was still in flight
    assert breaker.take(10.2) is not None  # from 10.2 on it is not
    assert breaker.take(9.0) is not None  # before any of them
