"""The flag router: a route decided per call from a LaunchDarkly client's route flag, with its
decision cache (see :mod:`mesh_client.routing` for the flag, its context and when the cache is
dropped). Built by :func:`mesh_client.routing.make_router`; its clients by
:mod:`mesh_client.flag_clients`."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .policy import Route
from .registry import FlagsConfig, MeshConfig
from .shadow.stages import stage_of

__all__ = ["CONTEXT_KIND", "FlagRouter", "RouteDecision", "Router"]

#: every module of the flag router logs here (the name the docs give)
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
