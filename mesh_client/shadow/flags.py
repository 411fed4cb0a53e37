"""Migration-stage route flags as LaunchDarkly flag data (for flag files, fixtures and tests).

The flags have LaunchDarkly's six migration variations (``off``, ``dualwrite``, ``shadow``,
``live``, ``rampdown``, ``complete``), the shape of a LaunchDarkly migration flag, with ``off`` as
the off variation: turning the flag off sends every call via HAProxy with no copies::

    from mesh_client.routing import write_flag_file
    from mesh_client.shadow.flags import stage_flag, stage_rollout_flag

    write_flag_file("flags.json", [stage_flag("mesh-route-users", "shadow", version=2)])
    write_flag_file("flags.json", [stage_rollout_flag("mesh-route-users", {"shadow": 90, "live": 10}, version=3)])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..flag_router import CONTEXT_KIND
from .stages import STAGE_VALUES

__all__ = ["stage_flag", "stage_rollout_flag"]


def _index(stage: str) -> int:
    if stage not in STAGE_VALUES:
        raise ValueError(f"{stage!r} is not a migration stage (one of {', '.join(STAGE_VALUES)})")
    return STAGE_VALUES.index(stage)


def _flag(key: str, version: int, fallthrough: dict[str, Any]) -> dict[str, Any]:
    return {
        "key": key,
        "on": True,
        "version": version,
        "variations": list(STAGE_VALUES),
        "fallthrough": fallthrough,
        "offVariation": 0,
        "salt": key,
    }


def stage_flag(key: str, stage: str, version: int = 1) -> dict[str, Any]:
    """A migration flag answering ``stage`` to every caller."""
    return _flag(key, version, {"variation": _index(stage)})


def stage_rollout_flag(
    key: str, percents: Mapping[str, float], version: int = 1, bucket_by: str = "key"
) -> dict[str, Any]:
    """A migration flag answering each stage to its percentage of callers (``{"shadow": 90,
    "live": 10}``; the percentages add up to 100), bucketed by caller (``bucket_by="host"``: by
    machine), as :func:`~mesh_client.routing.rollout_flag` does for routes."""
    weights = {_index(stage): round(percent * 1000) for stage, percent in percents.items()}
    if any(not 0 <= percent <= 100 for percent in percents.values()) or sum(weights.values()) != 100_000:
        raise ValueError(f"stage percentages must be from 0 to 100 and add up to 100, got {dict(percents)!r}")
    rollout = {
        "contextKind": CONTEXT_KIND,
        "bucketBy": bucket_by,
        "variations": [{"variation": index, "weight": weight} for index, weight in sorted(weights.items())],
    }
    return _flag(key, version, {"rollout": rollout})
