"""Writing LaunchDarkly flag-data files of route flags (used by examples, fixtures, the CLI and
tests); re-exported by :mod:`mesh_client.routing`."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from .flag_router import CONTEXT_KIND
from .policy import Route

__all__ = ["rollout_flag", "route_flag", "write_flag_file"]

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
