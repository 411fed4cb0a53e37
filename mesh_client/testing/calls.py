"""What ``fake_mesh`` records of each call: :class:`Call` (one call of the application), its
:class:`ProxyRequest` attempts at the local proxies and the :class:`UpstreamRequest` each instance
of the service received, with their :class:`Headers`. ``ScriptedUpstream`` records the same
:class:`UpstreamRequest` for the real proxies."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..policy import Route
from ..shadow import SHADOW_HEADER

__all__ = ["Call", "Headers", "ProxyRequest", "UpstreamRequest"]


class Headers(Mapping[str, str]):
    """Request or response headers, in order, looked up case-insensitively (first value)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = tuple((str(k), str(v)) for k, v in items)
        self._index: dict[str, str] = {}
        for k, v in self._items:
            self._index.setdefault(k.lower(), v)

    def __getitem__(self, name: str) -> str:
        return self._index[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every header as sent, with its original spelling."""
        return self._items

    def __repr__(self) -> str:
        return f"Headers({dict(self._index)!r})"


@dataclass(frozen=True)
class UpstreamRequest:
    """A request as an instance of the service received it (after the proxy)."""

    service: str
    route: Route
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    #: 1-based: which upstream try of the client's attempt this was (Envoy retries count up)
    attempt: int
    #: Thrift: the decoded arguments, by name
    args: dict[str, Any] = field(default_factory=dict)
    #: when the instance received it (``mesh_client.clock`` seconds: virtual time under the fake)
    received_at: float = 0.0
    #: the variant of the service that received it (None: its main deployment)
    variant: str | None = None

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclass(frozen=True)
class ProxyRequest:
    """An attempt as the client sent it to a local proxy."""

    route: Route
    address: str
    headers: Headers
    timeout: float
    #: what the client got back: a status (``"504 upstream request timeout"``) or a failure
    outcome: str = ""


@dataclass
class Call:
    """One call of the application to a service: its attempts at the proxies and the requests
    the service's instances received."""

    service: str
    method: str
    path: str
    body: bytes
    sent: list[ProxyRequest] = field(default_factory=list)
    upstream: list[UpstreamRequest] = field(default_factory=list)

    @property
    def route(self) -> Route:
        """The route of the call's last attempt."""
        return self.sent[-1].route

    @property
    def routes(self) -> list[Route]:
        return [p.route for p in self.sent]

    @property
    def headers(self) -> Headers:
        """The headers of the call's first attempt, as the client sent them to the proxy."""
        return self.sent[0].headers

    @property
    def shadow_copy(self) -> bool:
        """Whether this call is a shadow copy of another (it carries ``x-mesh-shadow``)."""
        return SHADOW_HEADER in self.headers

    @property
    def variant(self) -> str | None:
        """The variant of the service that received the call last (None: its main deployment)."""
        return self.upstream[-1].variant if self.upstream else None

    @property
    def attempts(self) -> int:
        """How many requests the service's instances received for this call."""
        return len(self.upstream)

    @property
    def outcome(self) -> str:
        return self.sent[-1].outcome

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def describe(self) -> str:
        routes = " then ".join(dict.fromkeys(r.value for r in self.routes))
        what = f"{self.method} {self.path}" if self.path != self.method else self.method
        service = self.service if self.variant is None else f"{self.service} (variant {self.variant})"
        return f"{what} to {service} via {routes}: {self.attempts} upstream request(s), {self.outcome}"
