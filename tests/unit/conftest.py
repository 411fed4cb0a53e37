"""Fixtures the unit test modules share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mesh_client import Mesh

PLAIN_REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "a", "envoy_http": "127.0.0.1:9001", "default_route": "envoy"},
    "services": {"users": {"haproxy": "127.0.0.1:20001", "timeout": 1.0}},
}


@pytest.fixture
def plain_mesh() -> Iterator[Mesh]:
    """A Mesh with no fake behind it: one service, ``users`` (1 s timeout), Envoy's route by
    default at 127.0.0.1:9001, HAProxy at 127.0.0.1:20001. Nothing listens there: a test gives
    the wrappers a transport of its own, or sends nothing."""
    with Mesh.from_dict(PLAIN_REGISTRY) as m:
        yield m
