"""checkout: a tiny service that looks up users through the mesh, as application code would.

It calls the ``users`` service (see ``mesh.toml``) with ``requests`` and, for batches, with an
asyncio ``httpx`` client. The mesh decides the route (Envoy or HAProxy), the timeout and the
retries; this code only decides what to do when the answer is not usable: a slow or failing
``users`` gives a placeholder profile instead of failing the checkout page.

``test_app.py`` next to this file tests it with the ``fake_mesh`` and ``mesh_flags`` fixtures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import requests

from mesh_client import Mesh, MeshError, call_info

log = logging.getLogger("checkout")

REGISTRY = Path(__file__).with_name("mesh.toml")


class UnknownUser(LookupError):
    """``users`` does not know this id (404)."""


@dataclass(frozen=True)
class Profile:
    """What the checkout page shows about a user."""

    user_id: int
    name: str
    #: False when ``users`` could not answer and this is the placeholder
    fresh: bool = True
    #: how the lookup went, for the logs: the route ("envoy"/"haproxy") and the requests ``users`` got
    route: str | None = None
    attempts: int = 0


def placeholder(user_id: int) -> Profile:
    return Profile(user_id, "valued customer", fresh=False)


class Checkout:
    """The checkout service's outbound side: one :class:`~mesh_client.Mesh` and its clients."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.session = mesh.requests_session()

    @classmethod
    def from_registry(cls, path: str | Path = REGISTRY) -> Checkout:
        return cls(Mesh.from_file(path))

    def close(self) -> None:
        self.session.close()
        self.mesh.close()

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- with requests -----------------------------------------------------------------------------

    def profile(self, user_id: int) -> Profile:
        """The user's profile, or a placeholder when ``users`` is slow, down or failing."""
        # Via HAProxy a timeout is an exception (MeshTimeoutError, also a requests.Timeout) and no
        # proxy accepting the connection a MeshConnectError; via Envoy a timeout is a 504 response.
        try:
            response = self.session.get(f"http://users/v1/users/{user_id}")
        except (requests.Timeout, MeshError) as exc:
            log.warning("users: %s; showing a placeholder", exc)
            return placeholder(user_id)
        return _profile(user_id, response)

    def rename(self, user_id: int, name: str) -> None:
        """A write. POST is not idempotent: the mesh retries it only when it was never sent."""
        response = self.session.post(f"http://users/v1/users/{user_id}/name", json={"name": name})
        response.raise_for_status()

    # -- with httpx, asyncio -----------------------------------------------------------------------

    async def profiles(self, user_ids: Iterable[int]) -> list[Profile]:
        """Several profiles at once, concurrently."""
        async with self.mesh.httpx_async_client() as client:
            return list(await asyncio.gather(*(self._profile_async(client, i) for i in user_ids)))

    async def _profile_async(self, client: httpx.AsyncClient, user_id: int) -> Profile:
        try:
            response = await client.get(f"http://users/v1/users/{user_id}")
        except (httpx.TimeoutException, MeshError) as exc:
            log.warning("users: %s; showing a placeholder", exc)
            return placeholder(user_id)
        return _profile(user_id, response)


def _profile(user_id: int, response: requests.Response | httpx.Response) -> Profile:
    info = call_info(response)
    if response.status_code == 404:
        raise UnknownUser(user_id)
    if response.status_code >= 500:  # the instance's 5xx, or Envoy's own 504 (timeout) / 503 (no upstream)
        log.warning("users answered %s (%s); showing a placeholder", response.status_code, info and info.envoy_error)
        return placeholder(user_id)
    response.raise_for_status()
    return Profile(
        user_id,
        str(response.json()["name"]),
        route=info.route.value if info else None,
        attempts=info.attempts if info else 0,
    )
