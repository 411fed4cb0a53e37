"""Whether an Envoy virtual host routes a service's variants (for ``mesh-client doctor``).

A call to a variant carries ``x-mesh-variant: NAME``; Envoy sends it to the variant only if the
service's virtual host has a route matching that header **before** a route that takes every
request (the service's default route). Pure: it reads a virtual host as Envoy's ``/config_dump``
shows it (or as :func:`mesh_client.sidecar.envoy_bootstrap` renders it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..overrides import VARIANT_HEADER
from ..registry import ServiceConfig

__all__ = ["unrouted_variants"]


def _variant_matched(route: Mapping[str, Any]) -> str | None:
    """The variant a route takes (its ``x-mesh-variant`` exact match), or None."""
    for header in route.get("match", {}).get("headers", []) or []:
        if not isinstance(header, Mapping) or str(header.get("name", "")).lower() != VARIANT_HEADER:
            continue
        exact = header.get("string_match", {}).get("exact") if "string_match" in header else header.get("exact_match")
        if isinstance(exact, str) and not header.get("invert_match"):
            return exact
    return None


def _takes_everything(route: Mapping[str, Any]) -> bool:
    """A route that matches every request: prefix ``/`` (or empty), no header or query matchers."""
    match = route.get("match", {})
    if not isinstance(match, Mapping) or match.get("headers") or match.get("query_parameters"):
        return False
    return match.get("prefix") in ("", "/") or match.get("safe_regex", {}).get("regex") in (".*", "/.*")


def unrouted_variants(vhost: Mapping[str, Any], service: ServiceConfig) -> list[str]:
    """The declared variants of ``service`` that ``vhost`` does not route (in registry order):
    no route matches their ``x-mesh-variant``, or one does only after a route that takes every
    request, so their calls reach the main deployment."""
    routed = set()
    for route in vhost.get("routes", []) or []:
        if not isinstance(route, Mapping):
            continue
        variant = _variant_matched(route)
        if variant is not None:
            routed.add(variant)
        elif _takes_everything(route):
            break
    return [name for name in service.variants if name not in routed]
