"""Route flags: which proxy each call goes through, decided by LaunchDarkly.

Sources (``[flags] source``):

- ``"file"``: LaunchDarkly's own flag-data JSON, read by the real SDK's file data source, polled
  for edits (no restart needed), never touching the network. Percentage rollouts work.
- ``"launchdarkly"``: the real SDK with the key from the environment variable ``sdk_key_env``,
  waiting at most ``start_wait`` seconds at start-up.
- ``"none"``: always ``default_route``.

The flag for a service is the string flag ``flag_key`` (``mesh-route-{service}``) with the value
``"envoy"`` or ``"haproxy"``, or a LaunchDarkly migration stage (``"off"``, ``"shadow"``,
``"live"``, ``"complete"``; ``"dualwrite"`` reads as ``"off"``, ``"rampdown"`` as ``"complete"``:
see :mod:`mesh_client.shadow.stages`). It is evaluated for a context of kind :data:`CONTEXT_KIND`
(``"service"``) whose key is the caller's name, with attributes ``destination`` (the service
called) and ``host`` (this machine's host name); percentage rollouts must name
``"contextKind": "service"`` (otherwise LaunchDarkly buckets every caller alike).

Nothing here ever fails a call: a missing flag, an unexpected value, a flag-service outage or a
malformed file falls back to the last good answer for that service, then to ``default_route``,
and is logged once (not once per call).

Decisions are cached per service: the evaluation context is the same for every call a router
makes to a service, so the cached answer is exactly what LaunchDarkly would say now, percentage
rollouts included. The cache is dropped whenever the flag data changes: for the ``file`` and
``launchdarkly`` sources by the SDK's feature store (every write, including a file edit that keeps
a flag's version) and by its flag-change listeners. A router on a client from ``client_factory``
caches only when asked to (``make_router(config, client_factory=..., cache_routes=True)``): a data
source such as LaunchDarkly's ``TestData`` writes flags without telling the listeners, so code that
changes flags that way must call :meth:`FlagRouter.invalidate` after each change. Cached decisions
are not re-evaluated, so with the ``launchdarkly`` source the SDK records an evaluation (analytics
event) when a service's decision is made, not on every call.

This module builds routers (:func:`make_router`) and re-exports the pieces, each in a module of
its own: the router and its decision cache (:mod:`mesh_client.flag_router`), the LaunchDarkly
clients of the ``file`` and ``launchdarkly`` sources (:mod:`mesh_client.flag_clients`), and the
flag-file writers (:mod:`mesh_client.flag_files`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .flag_clients import file_router, launchdarkly_router
from .flag_files import rollout_flag, route_flag, write_flag_file
from .flag_router import CONTEXT_KIND, FlagRouter, RouteDecision, Router
from .registry import FlagsConfig, MeshConfig

__all__ = [
    "CONTEXT_KIND",
    "FlagRouter",
    "RouteDecision",
    "Router",
    "make_router",
    "rollout_flag",
    "route_flag",
    "use_flag_client_factory",
    "write_flag_file",
]


def make_router(
    config: MeshConfig,
    *,
    client_factory: Callable[[FlagsConfig], Any] | None = None,
    cache_routes: bool | None = None,
) -> FlagRouter:
    """Build the router for a registry. ``client_factory`` lets tests supply an ``LDClient``
    (as does :func:`use_flag_client_factory`, for every router built inside it).

    ``cache_routes`` (default: on for the ``file`` and ``launchdarkly`` sources, off for a client
    from ``client_factory``) caches each service's decision until the flags change; with a client
    of your own, turn it on only if its data source reports changes through the SDK's update sink
    (streaming, polling, file) or if you call :meth:`FlagRouter.invalidate` after each change."""
    flags = config.flags
    client_factory = client_factory or _client_factory_override
    if client_factory is not None:
        return FlagRouter(config, client_factory(flags), "a custom flag source", cache_routes=bool(cache_routes))
    cache = cache_routes is None or cache_routes
    if flags.source == "none":
        return FlagRouter(config, None, "no flag source")
    if flags.source == "file":
        return file_router(config, cache)
    return launchdarkly_router(config, cache)


_client_factory_override: Callable[[FlagsConfig], Any] | None = None


@contextlib.contextmanager
def use_flag_client_factory(factory: Callable[[FlagsConfig], Any]) -> Iterator[None]:
    """Build every router made inside the block (every new :class:`~mesh_client.Mesh`) on the
    ``LDClient`` that ``factory`` returns, whatever the registry's flag source (the ``mesh_flags``
    fixture uses it)."""
    global _client_factory_override
    previous, _client_factory_override = _client_factory_override, factory
    try:
        yield
    finally:
        _client_factory_override = previous
