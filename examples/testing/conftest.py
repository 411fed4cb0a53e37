"""Fixtures of the checkout service's tests.

``fake_mesh`` and ``mesh_flags`` come from mesh_client's pytest plugin (active once mesh_client
is installed); ``pytest.ini`` names the registry they use (``mesh_registry = mesh.toml``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from app import Checkout

from mesh_client.testing import FakeMesh, MeshFlags


@pytest.fixture
def checkout(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> Iterator[Checkout]:
    """The application, built the way production builds it, once the fake mesh and the route flags
    are in place (a Mesh takes its flags when it is built)."""
    with Checkout.from_registry() as app:
        yield app
