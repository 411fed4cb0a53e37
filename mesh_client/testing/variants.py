"""Which variant of a service a request reached, as the rendered sidecars route it (for
:class:`~mesh_client.testing.fake.FakeMesh`'s per-variant handlers)."""

from __future__ import annotations

from ..overrides import VARIANT_HEADER
from ..policy import Route
from ..registry import MeshConfig
from ..wire import WireRequest

__all__ = ["reached_variant"]


def reached_variant(config: MeshConfig | None, request: WireRequest) -> str | None:
    """The variant ``request`` reaches (None: the service's main deployment).

    - HAProxy route: the variant whose ``haproxy`` port the request was sent to;
    - Envoy route: the variant named by ``x-mesh-variant`` (framed Thrift: by the method's
      ``service~variant:`` prefix), when the registry declares it: the rendered config has a route
      for declared variants only, so any other value falls through to the service's own route."""
    service = config.services.get(request.service) if config is not None else None
    if request.route is Route.HAPROXY:
        if service is None:
            return None
        return next((v.name for v in service.variants.values() if v.haproxy == request.address), None)
    if request.thrift is not None and not request.headers:  # framed: the name carries it
        prefix = request.target.partition(":")[0] if ":" in request.target else ""
        variant: str | None = prefix.partition("~")[2] or None
    else:
        variant = next((v for k, v in request.headers if k.lower() == VARIANT_HEADER), None)
    if variant is None or (config is not None and (service is None or variant not in service.variants)):
        return None
    return variant
