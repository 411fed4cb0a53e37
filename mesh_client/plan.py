"""What every call to one service shares: the :class:`ServicePlan`, and which of the caller's
headers never go out on a mesh call.

A :class:`~mesh_client.Mesh` keeps one plan per service (see :mod:`mesh_client.mesh`); each
:class:`~mesh_client.core.CallRun` reads it. Pure: no I/O, no clock reads here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from . import clock as _clock
from . import envoy
from ._cache import BoundedCache
from .budget import RetryBudget
from .circuit import SidecarCircuit
from .context import MESH_TIMEOUT_HEADER, REQUEST_ID_HEADER
from .policy import CallPolicy
from .registry import Address, MeshConfig, ServiceConfig
from .shadow import SHADOW_HEADER

__all__ = ["DROPPED_HEADERS", "DROP_WITH_REQUEST_ID", "ServicePlan", "drop_names"]

#: Caller-set request headers that never go out on a mesh call (besides the Envoy prefixes and the
#: names mesh_client sets itself): hop-by-hop headers and forwarding claims of a previous hop.
DROPPED_HEADERS: Final = frozenset(
    {
        "host",
        "forwarded",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "grpc-timeout",
        MESH_TIMEOUT_HEADER,
        SHADOW_HEADER,  # set by mesh_client only: on copies, and while serving a copy
    }
)

_DROP_PREFIXES: BoundedCache[str, tuple[str, ...]] = BoundedCache(64)
#: the names come from propagators and the registry: a few sets
_DROP_NAMES: BoundedCache[tuple[str, ...], frozenset[str]] = BoundedCache(256)
#: what :func:`drop_names` answers in the usual case (no trace context, no inbound request)
DROP_WITH_REQUEST_ID: Final = DROPPED_HEADERS | {REQUEST_ID_HEADER}


def _drop_prefixes(header_prefix: str) -> tuple[str, ...]:
    """Caller-set Envoy control headers never go out (configured or stock prefix), nor a previous
    hop's X-Forwarded-* claims (with X-Forwarded-For, Envoy would ignore every x-envoy-* header),
    nor mesh_client's own ``x-mesh-*`` headers (routing overrides, variant, shadow copies: only the
    library sets them)."""
    prefixes = _DROP_PREFIXES.get(header_prefix)
    if prefixes is None:
        prefixes = tuple(dict.fromkeys((header_prefix + "-", "x-envoy-", "x-forwarded-", "proxy-", "x-mesh-")))
        _DROP_PREFIXES.put(header_prefix, prefixes)
    return prefixes


def drop_names(context_headers: tuple[tuple[str, str], ...]) -> frozenset[str]:
    """:data:`DROPPED_HEADERS` and the context headers' names (which mesh_client sets itself),
    made once per set of names rather than once per call."""
    if len(context_headers) == 1 and context_headers[0][0] == REQUEST_ID_HEADER:
        return DROP_WITH_REQUEST_ID  # the usual case: no trace context, no inbound request
    key = tuple([name for name, _ in context_headers])
    names = _DROP_NAMES.get(key)
    if names is None:
        names = _DROP_NAMES.put(key, DROPPED_HEADERS | {name.lower() for name in key})
    return names


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """What every call to one service through one mesh shares, worked out once: where the Envoy
    route goes, who enforces the policy, the service's retry budget and sidecar circuit, and the
    header rules. ``Mesh.start_call`` keeps one per service;
    the caches at the end fill as calls are made (per method, per retry count)."""

    mesh: MeshConfig
    service: ServiceConfig
    #: where the Envoy route goes (the HTTP egress listener unless told otherwise)
    envoy_address: Address
    #: Envoy applies timeouts and retries itself (HTTP); False: the client does it on both routes,
    #: because the proxy cannot (Envoy's thrift_proxy has neither)
    envoy_enforces: bool = True
    budget: RetryBudget | None = None
    circuit: SidecarCircuit | None = None
    clock: Callable[[], float] = _clock.monotonic
    jitter: Callable[[float, float], float] = random.uniform
    #: the service policy's retry-on tokens per method (for calls that do not declare idempotence)
    tokens: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False, repr=False)
    #: (per-try timeout applies, retries, tokens) -> the service policy's Envoy header template
    envoy_headers: dict[tuple[bool, int, tuple[str, ...]], tuple[str, tuple[tuple[str, str], ...]]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: method -> the usual call's first Envoy attempt, as far as it is the same on every such call
    #: (see :meth:`CallRun._attempt <mesh_client.core.CallRun>`): the headers after the context
    #: headers, the client's socket timeout, and the x-envoy-max-retries it allows
    first_envoy: dict[str, tuple[tuple[tuple[str, str], ...], float, int]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: caller-set headers with these prefixes never go out (see :func:`_drop_prefixes`)
    drop_prefixes: tuple[str, ...] = field(init=False, compare=False, repr=False)
    #: ``("Host", service.envoy_host)``
    host_header: tuple[str, str] = field(init=False, compare=False, repr=False)
    #: whether the service's calls can carry headers: False for framed Thrift, which has nowhere
    #: to put them (its calls get no context headers and their attempts no headers to set)
    carries_headers: bool = field(init=False, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        mesh: MeshConfig,
        service: ServiceConfig,
        *,
        envoy_address: Address | None = None,
        envoy_enforces: bool = True,
        budget: RetryBudget | None = None,
        circuit: SidecarCircuit | None = None,
        clock: Callable[[], float] = _clock.monotonic,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> ServicePlan:
        return cls(
            mesh,
            service,
            envoy_address or mesh.envoy_http,
            envoy_enforces,
            budget,
            circuit,
            clock,
            jitter,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_prefixes", _drop_prefixes(self.mesh.header_prefix))
        object.__setattr__(self, "host_header", ("Host", self.service.envoy_host))
        service = self.service
        object.__setattr__(self, "carries_headers", service.protocol != "thrift" or service.transport == "header")

    def envoy_template(
        self, policy: CallPolicy, per_try_applies: bool, retries: int, tokens: tuple[str, ...]
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        """:func:`envoy.policy_header_template` for ``policy``, remembered here for the service's
        own policy (a dictionary read instead of the cache's five-argument key)."""
        own = policy is self.service.policy
        if own:
            found = self.envoy_headers.get((per_try_applies, retries, tokens))
            if found is not None:
                return found
        template = envoy.policy_header_template(
            self.mesh.header_prefix,
            policy.per_try_timeout if per_try_applies else None,
            retries,
            tokens,
            policy.retriable_status_codes,
        )
        if own and len(self.envoy_headers) < 64:
            self.envoy_headers[(per_try_applies, retries, tokens)] = template
        return template

    def tokens_for(self, policy: CallPolicy, method: str, idempotent: bool | None) -> tuple[str, ...]:
        """``policy.retry_tokens_for(method, idempotent)``, remembered per method for the
        service's own policy (the usual call)."""
        if idempotent is not None or policy is not self.service.policy:
            return policy.retry_tokens_for(method, idempotent)
        tokens = self.tokens.get(method)
        if tokens is None:
            tokens = policy.retry_tokens_for(method, None)
            if len(self.tokens) < 64:  # methods are few (HTTP) or bounded by the IDL (Thrift)
                self.tokens[method] = tokens
        return tokens
