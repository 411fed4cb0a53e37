"""``MeshFlags``: route flags for tests, evaluated by the real LaunchDarkly SDK.

The flags are LaunchDarkly flag data, the same documents as the flag file
(:func:`~mesh_client.routing.route_flag`, :func:`~mesh_client.routing.rollout_flag`), served to
each mesh's ``LDClient`` by an in-memory data source (what LaunchDarkly's ``TestData`` does, but
with percentage rollouts, which ``TestData`` cannot express). A change reaches every client at
once, through the SDK's update sink, so flag-change listeners fire as with the real service::

    def test_canary(mesh_flags, fake_mesh):
        mesh_flags.route("users", "envoy")
        mesh_flags.rollout("billing", envoy_percent=30)
        mesh_flags.stage("search", "shadow")     # a migration stage: HAProxy answers, Envoy gets copies
        mesh = fake_mesh.mesh("mesh.toml")       # meshes built while mesh_flags is active use it
        ...
        mesh_flags.route("users", "haproxy")     # a flip, seen by the very next call
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ldclient.config import Config
from ldclient.interfaces import FeatureStore, UpdateProcessor

from ..flag_files import rollout_flag, route_flag
from ..policy import Route
from ..registry import FlagsConfig
from ..routing import use_flag_client_factory
from ..shadow.flags import stage_flag, stage_rollout_flag

__all__ = ["MeshFlags"]


class MeshFlags:
    """Route flags per service for every mesh built while :meth:`installed` is active."""

    def __init__(self) -> None:
        self._rules: dict[str, tuple[str, Any]] = {}
        self._versions = itertools.count(1)
        self._sources: list[_Source] = []
        self._lock = threading.Lock()

    # -- the test's controls -----------------------------------------------------------------------

    def route(self, service: str, route: Route | str) -> None:
        """Send every call to ``service`` through ``route`` (``"envoy"`` or ``"haproxy"``)."""
        self._set(service, ("route", Route(route)))

    def rollout(self, service: str, envoy_percent: float, *, bucket_by: str = "key") -> None:
        """Send ``envoy_percent`` % of callers (by caller name; ``bucket_by="host"``: by machine)
        to Envoy, the rest to HAProxy, with LaunchDarkly's own bucketing."""
        rollout_flag("check", envoy_percent)  # validates the percentage now, not at evaluation
        self._set(service, ("rollout", (envoy_percent, bucket_by)))

    def stage(self, service: str, stage: str) -> None:
        """Answer the migration stage ``stage`` for ``service`` (``"off"``, ``"shadow"``,
        ``"live"``, ``"complete"``, ``"dualwrite"``, ``"rampdown"``; see docs/shadow.md)."""
        stage_flag("check", stage)  # validates the stage now, not at evaluation
        self._set(service, ("stage", stage))

    def stage_rollout(self, service: str, percents: Mapping[str, float], *, bucket_by: str = "key") -> None:
        """Answer each stage to its percentage of callers (``{"shadow": 50, "off": 50}``)."""
        stage_rollout_flag("check", percents)  # validates now
        self._set(service, ("stages", (dict(percents), bucket_by)))

    def clear(self, service: str) -> None:
        """Delete ``service``'s flag. As with LaunchDarkly, a mesh that has seen a value keeps the
        last good one; a mesh that never saw one takes the registry's ``default_route``."""
        self._set(service, None)

    def _set(self, service: str, rule: tuple[str, Any] | None) -> None:
        with self._lock:
            if rule is None:
                self._rules.pop(service, None)
            else:
                self._rules[service] = rule
            version = next(self._versions)
            sources = list(self._sources)
        for source in sources:
            source.push(service, version)

    def flag(self, key: str, service: str, version: int) -> dict[str, Any] | None:
        """The flag document for ``service`` under ``key`` (None: no flag)."""
        rule = self._rules.get(service)
        if rule is None:
            return None
        kind, arg = rule
        if kind == "route":
            return route_flag(key, arg, version)
        if kind == "stage":
            return stage_flag(key, arg, version)
        if kind == "stages":
            return stage_rollout_flag(key, arg[0], version, bucket_by=arg[1])
        percent, bucket_by = arg
        return rollout_flag(key, percent, version, bucket_by=bucket_by)

    # -- wiring into the SDK -----------------------------------------------------------------------

    def client(self, flags: FlagsConfig) -> Any:
        """An ``LDClient`` serving these flags under the registry's flag keys (no network, no events)."""
        from ldclient import LDClient

        def data_source(config: Config, store: FeatureStore, ready: threading.Event) -> UpdateProcessor:
            source = _Source(self, flags, config.data_source_update_sink or store, ready)
            with self._lock:
                self._sources.append(source)
            return source

        config = Config(
            "mesh-client-test-flags", update_processor_class=data_source, send_events=False, diagnostic_opt_out=True
        )
        return LDClient(config, start_wait=5)

    @contextlib.contextmanager
    def installed(self) -> Iterator[MeshFlags]:
        """Every :class:`~mesh_client.Mesh` built inside the block takes its route flags from here."""
        with use_flag_client_factory(self.client):
            yield self

    def _forget(self, source: _Source) -> None:
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)


class _Source(UpdateProcessor):
    """A LaunchDarkly data source (``update_processor_class``) fed by a :class:`MeshFlags`."""

    def __init__(self, owner: MeshFlags, flags: FlagsConfig, sink: Any, ready: threading.Event) -> None:
        self._owner = owner
        self._flags = flags
        self._sink = sink
        self._ready = ready

    def _key(self, service: str) -> str:
        return self._flags.key_for(service)

    def start(self) -> None:
        from ldclient.versioned_data_kind import FEATURES

        owner = self._owner
        with owner._lock:
            services = list(owner._rules)
            version = next(owner._versions)
        docs = {}
        for service in services:
            doc = owner.flag(self._key(service), service, version)
            if doc is not None:
                docs[doc["key"]] = doc
        self._sink.init({FEATURES: docs})
        self._ready.set()

    def push(self, service: str, version: int) -> None:
        from ldclient.versioned_data_kind import FEATURES

        key = self._key(service)
        doc = self._owner.flag(key, service, version)
        self._sink.upsert(FEATURES, doc if doc is not None else {"key": key, "version": version, "deleted": True})

    def stop(self) -> None:
        self._owner._forget(self)

    def is_alive(self) -> bool:
        return True

    def initialized(self) -> bool:
        return True
