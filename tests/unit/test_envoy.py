"""What mesh_client says to Envoy (policy headers) and how it reads Envoy's replies."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from mesh_client.envoy import (
    ENVOY_ERROR_KINDS,
    attempt_count,
    classify_reply,
    may_be_local_reply,
    policy_header_template,
    policy_headers,
    read_answer,
    upstream_service_time,
)

PREFIX = "x-envoy"


def _policy_headers(
    prefix: str = PREFIX,
    *,
    timeout: float = 1.0,
    per_try_timeout: float | None = None,
    retries: int = 1,
    retry_on: tuple[str, ...] = ("connect-failure",),
    retriable_status_codes: tuple[int, ...] = (),
) -> dict[str, str]:
    pairs = policy_headers(
        prefix,
        timeout=timeout,
        per_try_timeout=per_try_timeout,
        retries=retries,
        retry_on=retry_on,
        retriable_status_codes=retriable_status_codes,
    )
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a header is sent twice: {names}"
    return dict(pairs)


# ---------------------------------------------------------------------------------------------
# policy_headers


def test_full_policy_becomes_envoy_headers() -> None:
    headers = _policy_headers(
        timeout=1.0,
        per_try_timeout=0.3,
        retries=2,
        retry_on=("connect-failure", "refused-stream", "gateway-error"),
    )

    assert headers == {
        "x-envoy-upstream-rq-timeout-ms": "1000",
        "x-envoy-upstream-rq-per-try-timeout-ms": "300",
        "x-envoy-retry-on": "connect-failure,refused-stream,gateway-error",
        "x-envoy-max-retries": "2",
    }


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        pytest.param(0.0001, "1", id="0.1ms-floors-to-1"),
        pytest.param(0.000001, "1", id="1us-floors-to-1"),
        pytest.param(0.001, "1", id="1ms"),
        pytest.param(0.0019, "1", id="1.9ms-rounds-down"),
        pytest.param(0.25, "250", id="250ms"),
        pytest.param(0.9999, "999", id="999.9ms-rounds-down"),
        pytest.param(1, "1000", id="int-seconds"),
        pytest.param(15.0, "15000", id="15s"),
    ],
)
def test_timeout_is_whole_milliseconds_never_zero(timeout: float, expected: str) -> None:
    headers = _policy_headers(timeout=timeout)

    assert headers["x-envoy-upstream-rq-timeout-ms"] == expected


def test_tiny_per_try_timeout_is_never_zero() -> None:
    headers = _policy_headers(timeout=1.0, per_try_timeout=0.0001)

    assert headers["x-envoy-upstream-rq-per-try-timeout-ms"] == "1"


@pytest.mark.parametrize(
    "per_try_timeout",
    [pytest.param(None, id="none"), pytest.param(0.5, id="equal"), pytest.param(0.8, id="above")],
)
def test_per_try_header_only_when_below_the_timeout(per_try_timeout: float | None) -> None:
    headers = _policy_headers(timeout=0.5, per_try_timeout=per_try_timeout)

    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in headers
    assert headers["x-envoy-upstream-rq-timeout-ms"] == "500"


def test_per_try_header_when_below_a_shrunk_timeout() -> None:
    headers = _policy_headers(timeout=0.35, per_try_timeout=0.3)

    assert headers["x-envoy-upstream-rq-timeout-ms"] == "350"
    assert headers["x-envoy-upstream-rq-per-try-timeout-ms"] == "300"


def test_retry_on_is_comma_joined_without_spaces() -> None:
    headers = _policy_headers(retries=3, retry_on=("5xx", "reset", "connect-failure"))

    assert headers["x-envoy-retry-on"] == "5xx,reset,connect-failure"
    assert headers["x-envoy-max-retries"] == "3"


@pytest.mark.parametrize(
    ("retries", "retry_on"),
    [
        pytest.param(0, ("5xx", "connect-failure"), id="zero-retries"),
        pytest.param(3, (), id="no-tokens"),
        pytest.param(0, (), id="neither"),
    ],
)
def test_no_retry_sends_only_max_retries_zero(retries: int, retry_on: tuple[str, ...]) -> None:
    headers = _policy_headers(timeout=0.5, retries=retries, retry_on=retry_on, retriable_status_codes=(503,))

    assert headers == {"x-envoy-upstream-rq-timeout-ms": "500", "x-envoy-max-retries": "0"}


def test_retriable_status_codes_sent_with_their_token() -> None:
    headers = _policy_headers(
        retries=2, retry_on=("connect-failure", "retriable-status-codes"), retriable_status_codes=(503, 429)
    )

    assert headers["x-envoy-retry-on"] == "connect-failure,retriable-status-codes"
    assert headers["x-envoy-retriable-status-codes"] == "503,429"


def test_retriable_status_codes_not_sent_without_their_token() -> None:
    headers = _policy_headers(retries=2, retry_on=("5xx",), retriable_status_codes=(503,))

    assert "x-envoy-retriable-status-codes" not in headers
    assert headers["x-envoy-retry-on"] == "5xx"


def test_retriable_status_codes_header_not_sent_empty() -> None:
    headers = _policy_headers(retries=2, retry_on=("retriable-status-codes",), retriable_status_codes=())

    assert "x-envoy-retriable-status-codes" not in headers


def test_custom_prefix_is_used_for_every_header() -> None:
    headers = _policy_headers(
        "x-foo",
        timeout=2.0,
        per_try_timeout=0.5,
        retries=1,
        retry_on=("retriable-status-codes",),
        retriable_status_codes=(503,),
    )

    assert headers == {
        "x-foo-upstream-rq-timeout-ms": "2000",
        "x-foo-upstream-rq-per-try-timeout-ms": "500",
        "x-foo-retry-on": "retriable-status-codes",
        "x-foo-max-retries": "1",
        "x-foo-retriable-status-codes": "503",
    }


def test_custom_prefix_without_retries() -> None:
    assert _policy_headers("x-foo", timeout=1.0, retries=0) == {
        "x-foo-upstream-rq-timeout-ms": "1000",
        "x-foo-max-retries": "0",
    }


def test_policy_headers_reuse_the_policy_part_and_accept_lists() -> None:
    a = policy_headers(
        "x-envoy", timeout=0.75, per_try_timeout=0.3, retries=2, retry_on=("5xx",), retriable_status_codes=()
    )
    b = policy_headers(
        "x-envoy", timeout=0.5, per_try_timeout=0.3, retries=2, retry_on=["5xx"], retriable_status_codes=[]
    )
    assert a[0] == ("x-envoy-upstream-rq-timeout-ms", "750")
    assert b[0] == ("x-envoy-upstream-rq-timeout-ms", "500")
    assert a[1:] == b[1:]
    assert policy_header_template("x-envoy", 0.3, 2, ("5xx",), ()) is policy_header_template(
        "x-envoy", 0.3, 2, ("5xx",), ()
    )
    # the per-try header only while it is below the call's timeout
    c = policy_headers(
        "x-envoy", timeout=0.25, per_try_timeout=0.3, retries=2, retry_on=("5xx",), retriable_status_codes=()
    )
    assert [n for n, _ in c] == ["x-envoy-upstream-rq-timeout-ms", "x-envoy-retry-on", "x-envoy-max-retries"]


# ---------------------------------------------------------------------------------------------
# classify_reply

CONNECT_ERROR = "upstream connect error or disconnect/reset before headers. reset reason: "
UST = {"x-envoy-upstream-service-time": "12"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        pytest.param(504, {}, b"upstream request timeout", "timeout", id="504-timeout"),
        pytest.param(503, {}, b"no healthy upstream", "no_healthy_upstream", id="503-no-healthy-upstream"),
        pytest.param(
            503, {}, (CONNECT_ERROR + "remote connection failure").encode(), "connect_failure", id="remote-conn-failure"
        ),
        pytest.param(
            503, {}, (CONNECT_ERROR + "local connection failure").encode(), "connect_failure", id="local-conn-failure"
        ),
        pytest.param(503, {}, (CONNECT_ERROR + "connection timeout").encode(), "connect_failure", id="connect-timeout"),
        pytest.param(
            503, {}, (CONNECT_ERROR + "connection failure").encode(), "connect_failure", id="old-envoy-conn-failure"
        ),
        pytest.param(
            503,
            {},
            b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
            b"remote connection failure, transport failure reason: delayed connect error: 111",
            "connect_failure",
            id="retried-conn-failure-with-transport-reason",
        ),
        pytest.param(
            503, {}, (CONNECT_ERROR + "connection termination").encode(), "upstream_reset", id="conn-termination"
        ),
        pytest.param(503, {}, (CONNECT_ERROR + "remote reset").encode(), "upstream_reset", id="remote-reset"),
        pytest.param(502, {}, (CONNECT_ERROR + "protocol error").encode(), "upstream_reset", id="502-protocol-error"),
        pytest.param(
            503, {"x-envoy-overloaded": "true"}, b"maintenance mode", "overloaded", id="maintenance-mode-header"
        ),
        pytest.param(
            503,
            {"x-envoy-overloaded": "true"},
            (CONNECT_ERROR + "overflow").encode(),
            "overloaded",
            id="circuit-breaker-overflow",
        ),
        pytest.param(503, {"x-envoy-drop-overload": "true"}, b"drop overload", "overloaded", id="drop-overload"),
        pytest.param(503, {}, b"envoy overloaded", "overloaded", id="envoy-overloaded-body"),
        pytest.param(429, {"x-envoy-ratelimited": "true"}, b"", "rate_limited", id="429-ratelimited"),
        pytest.param(
            429, {"x-envoy-ratelimited": "true", **UST}, b"slow down", "rate_limited", id="ratelimited-with-body"
        ),
        pytest.param(404, {"content-length": "0"}, b"", "no_route", id="404-empty-no-route"),
        pytest.param(404, {"content-length": "0", **UST}, b"", None, id="404-empty-from-app"),
        pytest.param(404, {}, b"no such user", None, id="404-with-app-body"),
        pytest.param(503, {}, b"", "no_cluster", id="503-empty-no-cluster"),
        pytest.param(503, UST, b"", None, id="503-empty-from-app"),
        pytest.param(
            507, {}, b"exceeded request buffer limit while retrying upstream", "buffer_limit", id="507-buffer-limit"
        ),
        pytest.param(
            400,
            {},
            b"invalid header 'x-envoy-max-retries' with value 'many'",
            "invalid_header",
            id="400-invalid-header",
        ),
        pytest.param(504, {}, b"upstream max stream duration reached", "stream_duration", id="stream-duration"),
        pytest.param(200, {}, b"OK", None, id="200"),
        pytest.param(200, {}, b"no healthy upstream", None, id="200-with-envoy-like-body"),
        pytest.param(204, {}, b"", None, id="204"),
        pytest.param(503, {}, b'{"error": "down for maintenance"}', None, id="app-503-json"),
        pytest.param(503, UST, b"Service Unavailable", None, id="app-503-text"),
        pytest.param(500, {}, b"", None, id="app-500-empty"),
        pytest.param(504, {}, b"gateway timeout", None, id="app-504"),
        pytest.param(504, {}, None, None, id="body-not-read"),
        pytest.param(503, {"x-envoy-overloaded": "true"}, None, "overloaded", id="body-not-read-overloaded"),
    ],
)
def test_classify_reply(status: int, headers: dict[str, str], body: bytes | None, expected: str | None) -> None:
    kind = classify_reply(status, headers, body, PREFIX)

    assert kind == expected
    assert kind is None or kind in ENVOY_ERROR_KINDS


def test_remote_envoy_local_reply_is_recognised_by_its_body() -> None:
    assert classify_reply(503, UST, b"no healthy upstream", PREFIX) == "no_healthy_upstream"
    assert classify_reply(504, UST, b"upstream request timeout", PREFIX) == "timeout"


def test_classify_reply_uses_the_custom_prefix() -> None:
    assert classify_reply(503, {"x-foo-overloaded": "true"}, b"", "x-foo") == "overloaded"
    assert classify_reply(429, {"x-foo-ratelimited": "true"}, b"", "x-foo") == "rate_limited"
    assert classify_reply(404, {"x-foo-upstream-service-time": "3"}, b"", "x-foo") is None
    assert classify_reply(429, {"x-envoy-ratelimited": "true"}, b"slow down", "x-foo") is None


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(CaseInsensitiveDict({"X-Envoy-Upstream-Service-Time": "5"}), id="requests"),
        pytest.param(httpx.Headers({"X-Envoy-Upstream-Service-Time": "5"}), id="httpx"),
    ],
)
def test_classify_reply_reads_real_response_headers_case_insensitively(headers: Mapping[str, str]) -> None:
    assert classify_reply(404, headers, b"", PREFIX) is None
    assert upstream_service_time(headers, PREFIX) == 0.005
    assert may_be_local_reply(404, headers, PREFIX) is False


# ---------------------------------------------------------------------------------------------
# may_be_local_reply, upstream_service_time, attempt_count


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        pytest.param(503, {"content-length": "19"}, True, id="503-small"),
        pytest.param(504, {"content-length": "24"}, True, id="504-small"),
        pytest.param(404, {"content-length": "0"}, True, id="404-empty"),
        pytest.param(507, {"content-length": "53"}, True, id="507"),
        pytest.param(503, {"content-length": "1024"}, True, id="at-the-size-limit"),
        pytest.param(503, {"content-length": "1025"}, False, id="above-the-size-limit"),
        pytest.param(503, {"content-length": "19", **UST}, False, id="from-upstream"),
        pytest.param(503, {}, False, id="no-content-length"),
        pytest.param(503, {"content-length": "lots"}, False, id="malformed-content-length"),
        pytest.param(200, {"content-length": "2"}, False, id="200"),
        pytest.param(500, {"content-length": "0"}, False, id="500-never-local"),
        pytest.param(429, {"content-length": "0"}, False, id="429"),
    ],
)
def test_may_be_local_reply(status: int, headers: dict[str, str], expected: bool) -> None:
    assert may_be_local_reply(status, headers, PREFIX) is expected


def test_may_be_local_reply_uses_the_custom_prefix() -> None:
    assert may_be_local_reply(503, {"content-length": "0", "x-foo-upstream-service-time": "1"}, "x-foo") is False
    assert may_be_local_reply(503, {"content-length": "0", "x-envoy-upstream-service-time": "1"}, "x-foo") is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("12", 0.012, id="12ms"),
        pytest.param("0", 0.0, id="0ms"),
        pytest.param("1500", 1.5, id="1500ms"),
        pytest.param(" 7 ", 0.007, id="padded"),
        pytest.param("", None, id="empty"),
        pytest.param("abc", None, id="garbage"),
        pytest.param("1.5", None, id="fraction"),
        pytest.param("-3", None, id="negative"),
        pytest.param("12ms", None, id="with-unit"),
    ],
)
def test_upstream_service_time(value: str, expected: float | None) -> None:
    assert upstream_service_time({"x-envoy-upstream-service-time": value}, PREFIX) == expected


def test_upstream_service_time_absent() -> None:
    assert upstream_service_time({}, PREFIX) is None
    assert upstream_service_time({"x-envoy-upstream-service-time": "12"}, "x-foo") is None
    assert upstream_service_time({"x-foo-upstream-service-time": "12"}, "x-foo") == 0.012


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1", 1, id="one"),
        pytest.param("3", 3, id="three"),
        pytest.param(" 2 ", 2, id="padded"),
        pytest.param("0", None, id="zero"),
        pytest.param("-1", None, id="negative"),
        pytest.param("two", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param("1.0", None, id="fraction"),
    ],
)
def test_attempt_count(value: str, expected: int | None) -> None:
    assert attempt_count({"x-envoy-attempt-count": value}, PREFIX) == expected


def test_attempt_count_absent() -> None:
    assert attempt_count({}, PREFIX) is None
    assert attempt_count({"x-envoy-attempt-count": "2"}, "x-foo") is None
    assert attempt_count({"x-foo-attempt-count": "2"}, "x-foo") == 2


def test_circuit_breaker_overflow_is_overloaded_not_an_ambiguous_reset() -> None:
    body = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
    assert classify_reply(503, {"content-length": str(len(body))}, body, "x-envoy") == "overloaded"


_ANSWER_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "x-envoy-attempt-count",
            "x-envoy-upstream-service-time",
            "x-envoy-overloaded",
            "x-envoy-drop-overload",
            "x-envoy-ratelimited",
            "content-length",
        ]
    ),
    st.sampled_from(["1", "3", "0", "-2", " 12 ", "abc", "99999999999999999999999", ""]),
)


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([200, 204, 302, 399, 400, 404, 409, 429, 503, 504]),
    headers=_ANSWER_HEADERS,
    body=st.sampled_from(
        [None, b"", b"no healthy upstream", b"upstream request timeout", b"maintenance mode", b"hello"]
    ),
)
def test_read_answer_is_the_three_readers_at_once(status: int, headers: dict[str, str], body: bytes | None) -> None:
    """The core reads every Envoy-route answer with ``read_answer``: it must say exactly what
    ``attempt_count``, ``upstream_service_time`` and ``classify_reply`` say."""
    assert read_answer(status, headers, body, PREFIX) == (
        attempt_count(headers, PREFIX),
        upstream_service_time(headers, PREFIX),
        classify_reply(status, headers, body, PREFIX),
    )
