"""Migration stages a route flag may answer (LaunchDarkly's migration flag values).

=============  ==============  =================  ================
flag value     stage in force  who answers         the copy goes
=============  ==============  =================  ================
``off``        ``off``         HAProxy             (no copy)
``dualwrite``  ``off``         HAProxy             (no copy)
``shadow``     ``shadow``      HAProxy             via Envoy
``live``       ``live``        Envoy               via HAProxy
``rampdown``   ``complete``    Envoy               (no copy)
``complete``   ``complete``    Envoy               (no copy)
=============  ==============  =================  ================

LaunchDarkly's ``dualwrite`` and ``rampdown`` stages write to both origins; mesh_client never
sends a write twice, so they read as ``off`` and ``complete``.
"""

from __future__ import annotations

from typing import Final

from ..policy import Route

__all__ = ["COPYING", "STAGES", "STAGE_VALUES", "copy_route", "stage_of"]

#: flag value -> (the stage in force, the route that answers)
STAGES: Final[dict[str, tuple[str, Route]]] = {
    "off": ("off", Route.HAPROXY),
    "dualwrite": ("off", Route.HAPROXY),
    "shadow": ("shadow", Route.HAPROXY),
    "live": ("live", Route.ENVOY),
    "rampdown": ("complete", Route.ENVOY),
    "complete": ("complete", Route.ENVOY),
}
#: LaunchDarkly's migration flag variations, in its order
STAGE_VALUES: Final = ("off", "dualwrite", "shadow", "live", "rampdown", "complete")
#: the stages at which calls are copied down the other route
COPYING: Final = frozenset({"shadow", "live"})


def stage_of(value: object) -> tuple[str, Route] | None:
    """(stage in force, answering route) for a flag value, None when it is no migration stage."""
    return STAGES.get(value) if isinstance(value, str) else None


def copy_route(stage: str) -> Route:
    """Where the copy of a call goes at ``stage`` (``shadow`` or ``live``): the other route."""
    return Route.ENVOY if stage == "shadow" else Route.HAPROXY
