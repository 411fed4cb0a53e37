"""The LaunchDarkly clients of the ``file`` and ``launchdarkly`` flag sources, each on a feature
store that drops the router's cached decisions at every write, and the start-up check of a flag
file. :func:`mesh_client.routing.make_router` picks the source."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .flag_router import CONTEXT_KIND, FlagRouter, log
from .registry import MeshConfig

__all__ = ["file_router", "launchdarkly_router"]


def file_router(config: MeshConfig, cache: bool) -> FlagRouter:
    """A router on LaunchDarkly's file data source over ``flags.path``, polled for edits."""
    from ldclient import LDClient
    from ldclient.config import Config
    from ldclient.integrations import Files

    flags = config.flags
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


def launchdarkly_router(config: MeshConfig, cache: bool) -> FlagRouter:
    """A router on LaunchDarkly itself, with the SDK key from ``$sdk_key_env`` (none without one:
    every call then takes ``default_route``, and a warning says so)."""
    from ldclient import LDClient
    from ldclient.config import Config

    flags = config.flags
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
