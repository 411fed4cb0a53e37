"""How the routing overrides in force steer one call (the hook ``Mesh.start_call`` calls while
there are any).

Every mesh call made under overrides carries them on (``x-mesh-override``, and its signature when
there is one to send). A call to a service an override names, with that variant declared in the
registry, goes to the variant:

- **Envoy route**: with ``x-mesh-variant: NAME``, which the rendered Envoy config routes to the
  variant's cluster (``users:canary``) ahead of the service's default route;
- **HAProxy route**: to the variant's own ``haproxy`` port; a variant without one is reached via
  Envoy for that call (the route reason says so), unless the call options force HAProxy (then the
  override is not applied, and the reason says that). An Envoy-route call that fails over to
  HAProxy reaches the variant's HAProxy port, or the main deployment when it has none
  (``call_info(r).variant`` is then None).

An override naming a service that is not in the registry, or a variant the service does not
declare, is ignored for routing (logged once per name, counted in
``mesh_client.overrides.ignored``) and still carried on, for the hops that may know it.

What depends only on the overrides and the registry (which entries apply, the headers to send,
the signature) is worked out once per set of overrides and kept on it; a call then costs a few
dictionary reads.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

from . import clock as _clock
from .overrides import (
    DEFAULT_SIGNATURE_TTL,
    OVERRIDE_HEADER,
    OVERRIDE_SIGNATURE_HEADER,
    VARIANT_HEADER,
    Overrides,
    count_ignored,
    log_once,
    read_key,
    signature,
)
from .plan import ServicePlan
from .policy import Route

if TYPE_CHECKING:
    from .registry import Address, MeshConfig
    from .variants import VariantConfig

__all__ = ["Steer", "Steering"]

Headers = tuple[tuple[str, str], ...]


#: What :meth:`Steering.steer` gives (a plain tuple: made on every call under overrides): the plan,
#: route and reason of the call; the headers added to its context headers (the overrides, their
#: signature, ``x-mesh-variant``); the variant the call goes to on its route (None: the main
#: deployment), and the one it reaches if it goes (fails over) via HAProxy.
Steer = tuple[ServicePlan, Route, str, Headers, "str | None", "str | None"]


class _Entry(NamedTuple):
    """An override this registry applies, with what its calls need, made once."""

    variant: VariantConfig
    #: the overrides' headers and ``x-mesh-variant``
    headers: Headers
    #: appended to the route reason: on the route chosen, via Envoy instead of HAProxy, not applied
    applied: str
    via_envoy: str
    not_applied: str


class _Resolved(NamedTuple):
    """What a set of overrides means to one registry."""

    config: MeshConfig
    entries: dict[str, _Entry]
    headers: Headers
    #: when the signature made here must be made anew (0: never)
    refresh_at: float


class Steering:
    """The overrides hook of one :class:`~mesh_client.Mesh`."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        #: (service, variant) -> (the service's plan, the variant's plan made from it)
        self._plans: dict[tuple[str, str], tuple[ServicePlan, ServicePlan]] = {}

    def steer(self, overrides: Overrides, plan: ServicePlan, route: Route, reason: str, *, forced: bool) -> Steer:
        """Where a call under ``overrides`` goes that would otherwise go by ``plan`` on ``route``
        (``forced``: the call options chose the route): see :data:`Steer`."""
        resolved: _Resolved | None = overrides._steering
        if (
            resolved is None
            or resolved.config is not self.config
            or (resolved.refresh_at and _clock.wall() >= resolved.refresh_at)
        ):
            resolved = overrides._steering = self._resolve(overrides)
        entry = resolved.entries.get(plan.service.name)
        if entry is None:
            return plan, route, reason, resolved.headers, None, None
        variant = entry.variant
        if variant.haproxy is None:
            if route is Route.HAPROXY:
                if forced:
                    return plan, route, reason + entry.not_applied, resolved.headers, None, None
                return plan, Route.ENVOY, reason + entry.via_envoy, entry.headers, variant.name, None
            return plan, route, reason + entry.applied, entry.headers, variant.name, None
        plan = self._variant_plan(plan, variant.name, variant.haproxy)
        return plan, route, reason + entry.applied, entry.headers, variant.name, variant.name

    def _variant_plan(self, plan: ServicePlan, variant: str, haproxy: Address) -> ServicePlan:
        """``plan`` with the variant's HAProxy port (retry budget and sidecar circuit shared)."""
        key = (plan.service.name, variant)
        found = self._plans.get(key)
        if found is not None and found[0] is plan:
            return found[1]
        made = ServicePlan.of(
            plan.mesh,
            dataclasses.replace(plan.service, haproxy=haproxy),
            envoy_address=plan.envoy_address,
            envoy_enforces=plan.envoy_enforces,
            budget=plan.budget,
            circuit=plan.circuit,
            clock=plan.clock,
            jitter=plan.jitter,
        )
        self._plans[key] = (plan, made)
        return made

    def _resolve(self, overrides: Overrides) -> _Resolved:
        config = self.config
        headers = self._headers(overrides)
        entries = {}
        for service, name in overrides.mapping.items():
            svc = config.services.get(service)
            declared = svc.variants.get(name) if svc is not None else None
            if declared is None:
                why = "undeclared_service" if svc is None else "undeclared_variant"
                count_ignored(why, service if svc is not None else None)
                self._report(service, name, "the service is not in the registry" if svc is None else "no such variant")
                continue
            named = f"override {service}={name}"
            entries[service] = _Entry(
                declared,
                (*headers[0], (VARIANT_HEADER, name)),
                f"; {named}",
                f"; via Envoy: {named} and the variant has no HAProxy port",
                f"; {named} not applied: the variant has no HAProxy port and the call options force HAProxy",
            )
        return _Resolved(config, entries, headers[0], headers[1])

    def _headers(self, overrides: Overrides) -> tuple[Headers, float]:
        """The overrides' headers, and when a signature made here must be made anew (0: never).
        A hop that holds the key signs what it sends, never for longer than what it received."""
        headers: Headers = ((OVERRIDE_HEADER, overrides.header),)
        refresh_at = 0.0
        signed = overrides.signature
        secret_env = self.config.overrides.secret_env
        key = read_key(secret_env) if secret_env is not None and signed is None else None
        if key is not None:
            expires = overrides.expires
            if expires is None:
                now = _clock.wall()
                expires = now + DEFAULT_SIGNATURE_TTL
                refresh_at = now + DEFAULT_SIGNATURE_TTL / 2
            signed = signature(overrides.header, key, int(expires))
        if signed is not None:
            headers += ((OVERRIDE_SIGNATURE_HEADER, signed),)
        return headers, refresh_at

    def _report(self, service: str, variant: str, why: str) -> None:
        log_once(
            f"ignored:{self.config.source}:{service}={variant}",
            "mesh_client: override %s=%s ignored for routing (%s in %s); it is still carried on",
            service,
            variant,
            why,
            self.config.source,
        )
