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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from .policy import Route
from .registry import FlagsConfig, MeshConfig
from .shadow.stages import stage_of

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

log = logging.getLogger("mesh_client.routing")

#: The LaunchDarkly context kind route flags are evaluated with.
CONTEXT_KIND: Final = "service"


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """A route and why it was chosen (``reason`` is a short human phrase). ``stage``: the
    migration stage the flag answered (``"off"``, ``"shadow"``, ``"live"``, ``"complete"``), None
    for a plain ``"haproxy"`` / ``"envoy"`` value."""

    route: Route
    reason: str
    flag_value: object = None
    stage: str | None = None


class Router(Protocol):
    """Decides the route of one call to ``service``. Must never raise."""

    def decide(self, service: str) -> RouteDecision: ...

    def close(self) -> None: ...


class _LogOnce:
    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, service: str, kind: str, message: str, *args: object) -> None:
        with self._lock:
            if (service, kind) in self._seen:
                return
            self._seen.add((service, kind))
        log.warning(message, *args)


#: LaunchDarkly error kinds that depend only on the flag data (which the cache follows), so such
#: an answer may be cached; any other error (client not ready, an exception) is evaluated anew
_CACHEABLE_ERRORS: Final = frozenset({"FLAG_NOT_FOUND", "MALFORMED_FLAG", "WRONG_TYPE", "USER_NOT_SPECIFIED"})


class FlagRouter:
    """A :class:`Router` backed by a LaunchDarkly client (or by nothing, for ``source = "none"``).

    With ``cache_routes``, each service's decision is evaluated once and kept until the flag data
    changes: the client's flag-change listeners and :meth:`invalidate` drop it (see the module
    documentation for which sources tell the listeners).
    """

    def __init__(
        self,
        config: MeshConfig,
        client: Any | None,
        source_label: str,
        *,
        cache_routes: bool = False,
        restart: Callable[[FlagRouter], Any] | None = None,
    ) -> None:
        self._flags: FlagsConfig = config.flags
        #: makes this router a fresh client in a forked child (None: the client's own postfork())
        self._restart = restart
        self._default = config.default_route
        self._client = client
        self._label = source_label
        self._last_good: dict[str, tuple[Route, str | None]] = {}
        self._log_once = _LogOnce()
        self._contexts: dict[str, Any] = {}
        self._caller = config.caller
        self._host = socket.gethostname()
        self._no_source = RouteDecision(self._default, f"no flag source; default_route {self._default.value}")
        self._cache: dict[str, RouteDecision] = {}
        self._cache_lock = threading.Lock()
        #: bumped by every invalidation: an evaluation that overlapped one is not cached
        self._generation = 0
        #: writes to the flag data in progress (see flags_changing): nothing is cached meanwhile
        self._writers = 0
        self._caching = cache_routes and client is not None
        self._listener: Callable[[Any], None] | None = None
        tracker = getattr(client, "flag_tracker", None) if self._caching else None
        if tracker is not None:
            self._listener = self._on_flag_change
            tracker.add_listener(self._listener)

    @property
    def client(self) -> Any | None:
        """The underlying ``ldclient.LDClient`` (None for ``source = "none"``)."""
        return self._client

    @property
    def caches_routes(self) -> bool:
        """Whether decisions are cached per service until the flags change."""
        return self._caching

    def invalidate(self, service: str | None = None) -> None:
        """Forget the cached decision for ``service`` (None: for every service), so the next call
        evaluates its flag again. Flag changes the SDK reports invalidate on their own; call this
        after changing flags in a way that bypasses the SDK's update sink (LaunchDarkly's
        ``TestData``, writing to the feature store directly)."""
        with self._cache_lock:
            self._generation += 1
            if service is None:
                self._cache.clear()
            else:
                self._cache.pop(service, None)

    @contextlib.contextmanager
    def flags_changing(self) -> Iterator[None]:
        """Bracket a write to the flag data: the cache is dropped before and after it, and while it
        lasts no decision is cached, so none made from the old flags outlives the write."""
        with self._cache_lock:
            self._writers += 1
            self._generation += 1
            self._cache.clear()
        try:
            yield
        finally:
            with self._cache_lock:
                self._writers -= 1
                self._generation += 1
                self._cache.clear()

    def _on_flag_change(self, change: Any) -> None:
        # a flag a route flag depends on (prerequisite, segment) is reported too: forget everything
        self.invalidate()

    def _context(self, service: str) -> Any:
        ctx = self._contexts.get(service)
        if ctx is None:
            from ldclient import Context

            ctx = (
                Context.builder(self._caller)
                .kind(CONTEXT_KIND)
                .set("destination", service)
                .set("host", self._host)
                .build()
            )
            self._contexts[service] = ctx
        return ctx

    def decide(self, service: str) -> RouteDecision:
        client = self._client
        if client is None:
            return self._no_source
        cached = self._cache.get(service)
        if cached is not None:
            return cached
        if not self._caching:
            return self._evaluate(client, service)[0]
        generation = self._generation
        decision, cacheable = self._evaluate(client, service)
        if cacheable:
            with self._cache_lock:
                # not if the flags changed while this evaluation ran (it may have read the old ones)
                if generation == self._generation and not self._writers and self._client is not None:
                    self._cache[service] = decision
        return decision

    def _evaluate(self, client: Any, service: str) -> tuple[RouteDecision, bool]:
        """The flag's decision now, and whether it may be cached until the flags change."""
        key = self._flags.key_for(service)
        try:
            detail = client.variation_detail(key, self._context(service), None)
            value, reason = detail.value, detail.reason or {}
        except Exception as exc:  # never fail a call because of flags
            value, reason = None, {"kind": "ERROR", "errorKind": f"EXCEPTION: {exc!r}"}
        cacheable = not isinstance(reason, Mapping) or (
            reason.get("kind") != "ERROR" or reason.get("errorKind") in _CACHEABLE_ERRORS
        )
        staged = stage_of(value)
        if value in ("envoy", "haproxy") or staged is not None:
            route, stage = staged[1] if staged else Route(value), staged[0] if staged else None
            self._last_good[service] = (route, stage)
            text = f"flag {key} = {value!r} ({_reason_text(reason)})"
            return RouteDecision(route, text, value, stage), cacheable
        if value is None:
            problem = f"flag {key} has no value ({_reason_text(reason)})"
        else:
            problem = f"flag {key} has value {value!r}, expected 'envoy', 'haproxy' or a migration stage"
        last = self._last_good.get(service)
        fallback = f"default_route {self._default.value}"
        if last:
            fallback = f"last good flag value {last[1] or last[0].value}"
        self._log_once(
            service, problem.split(" (")[0], "mesh_client: %s from %s; using the %s", problem, self._label, fallback
        )
        route, stage = last or (self._default, None)
        return RouteDecision(route, f"{problem}; using {fallback}", value, stage), cacheable

    def migration_variation(self, service: str) -> tuple[Any, Any] | None:
        """LaunchDarkly's ``migration_variation`` of ``service``'s route flag: (``Stage``,
        ``OpTracker``), for the migration op events of shadow reads; None without a LaunchDarkly
        client (or one without migration support). Evaluated anew, never cached."""
        client = self._client
        if client is None or not callable(getattr(client, "migration_variation", None)):
            return None
        from ldclient.migrations import Stage

        default = Stage.COMPLETE if self._default is Route.ENVOY else Stage.OFF
        key, context = self._flags.key_for(service), self._context(service)
        result: tuple[Any, Any] = client.migration_variation(key, context, default)
        return result

    def flag_version(self, service: str) -> int | None:
        """The version of ``service``'s route flag the client holds now (None: no such flag).

        Tools use it to wait until an edit of the flag file has been loaded.
        """
        if self._client is None:
            return None
        try:
            state = self._client.all_flags_state(self._context(service)).to_json_dict()
            version = state.get("$flagsState", {}).get(self._flags.key_for(service), {}).get("version")
        except Exception:
            return None
        return version if isinstance(version, int) else None

    def after_fork(self) -> None:
        """In a forked child (see :mod:`mesh_client.fork`): new locks, no cached decision, and a
        flag client whose threads run (the SDK's threads do not survive a fork): a fresh client
        on a fresh store for the ``file`` and ``launchdarkly`` sources, which loads the flags as a
        newly started process would (waiting at most ``start_wait``); for a client from
        ``client_factory``, its ``postfork()`` (LaunchDarkly SDK 9.14+). A client without one
        keeps the flags it had at the fork, and a warning says so."""
        self._cache_lock = threading.Lock()
        self._log_once = _LogOnce()
        self._cache = {}
        self._generation += 1
        self._writers = 0  # (a write the parent had in progress at the fork never ends here)
        client = self._client
        if client is None:
            return
        if self._restart is not None:
            client = self._client = self._restart(self)
        else:
            postfork = getattr(client, "postfork", None)
            if not callable(postfork):
                log.warning(
                    "mesh_client: the flag client of %s has no postfork(); in this forked process (pid %d) "
                    "route flags keep the values they had at the fork",
                    self._label,
                    os.getpid(),
                )
                return
            postfork(start_wait=self._flags.start_wait)
        tracker = getattr(client, "flag_tracker", None) if self._listener is not None else None
        if tracker is not None:  # (a new client, or postfork(), starts with no listener)
            tracker.add_listener(self._listener)

    def close(self) -> None:
        client = self._client
        if client is not None:
            self._client = None
            self.invalidate()
            if self._listener is not None:
                try:
                    client.flag_tracker.remove_listener(self._listener)
                except Exception:  # pragma: no cover - closing must not raise
                    log.exception("mesh_client: removing the flag-change listener failed")
            try:
                client.close()
            except Exception:  # pragma: no cover - closing must not raise
                log.exception("mesh_client: closing the LaunchDarkly client failed")


def _reason_text(reason: Mapping[str, Any] | Any) -> str:
    if not isinstance(reason, Mapping):
        return str(reason)
    kind = reason.get("kind", "?")
    extra = reason.get("errorKind") or reason.get("ruleId") or ""
    return f"{kind} {extra}".strip()


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
    from ldclient import LDClient
    from ldclient.config import Config

    if flags.source == "file":
        from ldclient.integrations import Files

        assert flags.path is not None
        _check_flag_file(flags.path)
        data_source = Files.new_data_source(
            paths=[str(flags.path)], auto_update=True, poll_interval=flags.poll_interval, force_polling=True
        )

        def file_client(store: Any) -> Any:
            ld_config = Config(
                "mesh-client-local-file",
                update_processor_class=data_source,
                send_events=False,
                diagnostic_opt_out=True,
                feature_store=store,
            )
            return LDClient(ld_config, start_wait=flags.start_wait)

        return _sdk_router(config, file_client, f"flag file {flags.path}", cache)
    sdk_key = os.environ.get(flags.sdk_key_env, "")
    if not sdk_key:
        log.warning(
            "mesh_client: flags.source is 'launchdarkly' but $%s is empty; every call uses default_route %s",
            flags.sdk_key_env,
            config.default_route.value,
        )
        return FlagRouter(config, None, f"LaunchDarkly (no ${flags.sdk_key_env})")

    def launchdarkly_client(store: Any) -> Any:
        client = LDClient(Config(sdk_key, feature_store=store), start_wait=flags.start_wait)
        if not client.is_initialized():
            log.warning(
                "mesh_client: LaunchDarkly did not answer within %.1f s; "
                "routes fall back to default_route %s until it does",
                flags.start_wait,
                config.default_route.value,
            )
        return client

    return _sdk_router(config, launchdarkly_client, "LaunchDarkly", cache)


def _sdk_router(config: MeshConfig, build: Callable[[Any], Any], label: str, cache: bool) -> FlagRouter:
    """A router on the ``LDClient`` that ``build(feature_store)`` makes, on a store that drops the
    router's cached decisions at every write (:class:`_StoreWatch`). In a forked child ``build``
    makes the router a fresh client on a fresh store, as a newly started process would have."""

    def restart(router: FlagRouter) -> Any:
        return build(_StoreWatch().attach(router).store())

    watch = _StoreWatch()
    client = build(watch.store())
    return watch.attach(FlagRouter(config, client, label, cache_routes=cache, restart=restart)).router


class _StoreWatch:
    """A LaunchDarkly feature store (the SDK's in-memory one) around whose every write a router's
    cached decisions are dropped. The SDK's flag-change listeners fire only for flags whose version
    went up, and only after the write; the file data source also rewrites flags edited in place
    with the same version, and a caller that saw the new version (``flag_version``) must not get
    a decision made from the old flags next."""

    def __init__(self) -> None:
        self._router: FlagRouter | None = None

    def store(self) -> Any:
        from ldclient.feature_store import InMemoryFeatureStore

        watch = self

        class WatchedStore(InMemoryFeatureStore):
            def init(self, all_data: Any) -> None:
                with watch.writing():
                    super().init(all_data)  # type: ignore[no-untyped-call]

            def upsert(self, kind: Any, item: Any) -> None:
                with watch.writing():
                    super().upsert(kind, item)  # type: ignore[no-untyped-call]

            def delete(self, kind: Any, key: str, version: int) -> None:
                with watch.writing():
                    super().delete(kind, key, version)

        return WatchedStore()  # type: ignore[no-untyped-call]

    def attach(self, router: FlagRouter) -> _StoreWatch:
        self._router = router
        return self

    @property
    def router(self) -> FlagRouter:
        assert self._router is not None
        return self._router

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        router = self._router
        if router is None:  # (the first load: no decision made yet)
            yield
            return
        with router.flags_changing():
            yield


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


def _check_flag_file(path: Path) -> None:
    """Warn (once, at start) about flag-file mistakes LaunchDarkly would silently accept."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning(
            "mesh_client: cannot read flag file %s (%s); routes use default_route until it can be read", path, exc
        )
        return
    flags = data.get("flags", {}) if isinstance(data, dict) else {}
    for key, flag in flags.items() if isinstance(flags, dict) else ():
        rollouts = [flag.get("fallthrough", {}).get("rollout")] if isinstance(flag, dict) else []
        rollouts += (
            [rule.get("rollout") for rule in flag.get("rules", []) if isinstance(rule, dict)]
            if isinstance(flag, dict)
            else []
        )
        for rollout in rollouts:
            if isinstance(rollout, dict) and rollout.get("contextKind") != CONTEXT_KIND:
                log.warning(
                    'mesh_client: flag %s in %s has a rollout without "contextKind": %r; LaunchDarkly will put '
                    "every caller in the same bucket",
                    key,
                    path,
                    CONTEXT_KIND,
                )


# --- writing flag files (used by examples, fixtures, the CLI and tests) -----------------------

_VARIATIONS: Final = ["haproxy", "envoy"]


def route_flag(key: str, route: Route | str, version: int = 1) -> dict[str, Any]:
    """A LaunchDarkly flag (flag-data JSON) that sends every caller to ``route``."""
    return {
        "key": key,
        "on": True,
        "version": version,
        "variations": list(_VARIATIONS),
        "fallthrough": {"variation": _VARIATIONS.index(Route(route).value)},
        "offVariation": 0,
        "salt": key,
    }


def rollout_flag(key: str, envoy_percent: float, version: int = 1, bucket_by: str = "key") -> dict[str, Any]:
    """A flag sending ``envoy_percent`` % of callers to Envoy, bucketed by caller (``bucket_by``).

    ``bucket_by="host"`` splits by machine instead of by caller service.
    """
    if not 0 <= envoy_percent <= 100:
        raise ValueError(f"envoy_percent must be between 0 and 100, got {envoy_percent!r}")
    envoy_weight = round(envoy_percent * 1000)
    return {
        "key": key,
        "on": True,
        "version": version,
        "variations": list(_VARIATIONS),
        "fallthrough": {
            "rollout": {
                "contextKind": CONTEXT_KIND,
                "bucketBy": bucket_by,
                "variations": [
                    {"variation": 0, "weight": 100_000 - envoy_weight},
                    {"variation": 1, "weight": envoy_weight},
                ],
            }
        },
        "offVariation": 0,
        "salt": key,
    }


def write_flag_file(path: str | Path, flags: Mapping[str, dict[str, Any]] | list[dict[str, Any]]) -> None:
    """Write a LaunchDarkly flag-data file atomically (temporary file + rename)."""
    path = Path(path)
    items = flags.values() if isinstance(flags, Mapping) else flags
    data = {"flags": {flag["key"]: flag for flag in items}}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
