"""Doctor's ``envoy variants`` check (only with HTTP services that declare variants): the running
Envoy routes ``x-mesh-variant`` to each declared variant ahead of the service's default route
(see docs/overrides.md)."""

from __future__ import annotations

from ...overrides import VARIANT_HEADER
from ...registry import MeshConfig
from ...sidecar.variant_routes import unrouted_variants
from .context import RENDER_HINT, Context
from .envoy_config import Admin, egress_listener, hcms, route_config_of, virtual_host_for

__all__ = ["check_variants"]


def check_variants(ctx: Context, config: MeshConfig, admin: Admin | None) -> None:
    """``envoy variants``: FAIL naming every variant Envoy's route config does not route."""
    services = [svc for svc in config.services.values() if svc.protocol == "http" and svc.variants]
    if not services:
        return
    name = "envoy variants"
    listener = egress_listener(admin, config, ctx.egress_ip)
    if listener is None:
        why = "no mesh.envoy_admin" if admin is None else admin.error or f"no listener at {config.envoy_http}"
        ctx.check(name, "SKIP", f"not checked: {why}, so the route config was not read")
        return
    assert admin is not None
    found, missing = [], []
    for svc in services:
        configs = [rc for rc in (route_config_of(hcm, admin) for hcm in hcms(listener)) if rc is not None]
        vhost = next((v for v in (virtual_host_for(rc, svc.envoy_host) for rc in configs) if v), None)
        unrouted = list(svc.variants) if vhost is None else unrouted_variants(vhost, svc)
        found += [f"{svc.name}:{v}" for v in svc.variants if v not in unrouted]
        missing += [f"{svc.name}:{v}" for v in unrouted]
    if missing:
        ctx.check(
            name,
            "FAIL",
            f"no route for {VARIANT_HEADER} ahead of the default route for {', '.join(missing)}: calls steered "
            "to them reach the main deployment",
            f"add a route matching the header {VARIANT_HEADER}: VARIANT, before the service's catch-all, to the "
            f"cluster SERVICE:VARIANT ({RENDER_HINT}; docs/overrides.md)",
        )
        return
    ctx.check(name, "OK", f"{VARIANT_HEADER} routed ahead of the default route for {', '.join(found)}")
