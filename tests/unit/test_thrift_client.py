"""Pieces of the Thrift client that need no network."""

from __future__ import annotations

import pytest
from thriftpy2.thrift import TApplicationException

from mesh_client.thrift.client import _classify_envoy_reply

INTERNAL, UNKNOWN = TApplicationException.INTERNAL_ERROR, TApplicationException.UNKNOWN_METHOD


@pytest.mark.parametrize(
    ("error_type", "message", "kind"),
    [
        (INTERNAL, "no healthy upstream for 'users-thrift'", "no_healthy_upstream"),
        (
            INTERNAL,
            "connection failure before response start: remote connection failure '127.0.0.1:1'",
            "upstream_reset",
        ),
        (UNKNOWN, "no route for method 'ping'", "no_route"),
        (INTERNAL, "unknown cluster 'nosuch'", "no_cluster"),
        (INTERNAL, "maintenance mode for cluster 'users'", "overloaded"),
        (INTERNAL, "thrift upstream request: too many connections", "overloaded"),
    ],
)
def test_envoy_replies_are_recognised(error_type: int, message: str, kind: str) -> None:
    classified = _classify_envoy_reply(TApplicationException(error_type, message))
    assert classified is not None
    assert classified[0] == kind


@pytest.mark.parametrize(
    ("error_type", "message"),
    [
        (INTERNAL, "the database said: no healthy upstream for 'users'"),  # a server's own message
        (UNKNOWN, "no healthy upstream for 'users'"),  # wrong type
        (INTERNAL, "Internal error"),
        (INTERNAL, ""),
    ],
)
def test_a_servers_own_errors_are_not_taken_for_envoys(error_type: int, message: str) -> None:
    assert _classify_envoy_reply(TApplicationException(error_type, message)) is None
