"""``call_info(response)``: what mesh_client knows about how a response was obtained."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from .policy import Route

__all__ = ["CallInfo", "call_info", "new_call_info"]

#: Where the info rides on a response: ``httpx.Response.extensions[INFO_KEY]`` and, for
#: ``requests.Response``, the attribute of the same name.
INFO_KEY: Final = "mesh_call_info"


@dataclass(frozen=True, slots=True)
class CallInfo:
    """How one logical call went.

    - ``service``: the registry name of the service called.
    - ``route``: :attr:`Route.ENVOY` or :attr:`Route.HAPROXY`, the route that produced the answer.
    - ``attempts``: requests sent towards the upstream, as far as the client knows: the client's
      own attempts on the HAProxy route; on the Envoy route Envoy's count when it reports it
      (``x-envoy-attempt-count``, with the route's ``include_attempt_count_in_response``), else 1,
      the one request sent to Envoy, however many times Envoy retried it. A refused connection to
      Envoy before a failover is not an attempt.
    - ``failed_over``: the Envoy sidecar refused the connection and the call went via HAProxy.
    - ``upstream_service_time``: seconds, from Envoy's ``x-envoy-upstream-service-time``, or None.
    - ``envoy_error``: None, or the kind of Envoy-generated failure (see
      :data:`mesh_client.envoy.ENVOY_ERROR_KINDS`): ``"timeout"``, ``"no_healthy_upstream"``,
      ``"connect_failure"``, ``"overloaded"``, ``"rate_limited"``, ``"no_route"``...
    - ``route_reason``: why this route was chosen (flag value, fallback, forced per call).
    - ``elapsed``: seconds the whole call took in the client, retries included.
    - ``retry_budget_exhausted``: a retry the policy allowed was skipped (or Envoy was told not
      to retry) because the service's retry budget was empty.
    - ``variant``: the variant of the service the call went to under a routing override
      (``mesh_client.route_overrides``), None for the main deployment (see docs/overrides.md).
    - ``stage``: the migration stage the route flag answered for this call (``"off"``,
      ``"shadow"``, ``"live"``, ``"complete"``), None for a plain ``"haproxy"`` / ``"envoy"``
      value or a route forced by the call options (see docs/shadow.md).
    """

    service: str
    route: Route
    attempts: int
    failed_over: bool = False
    upstream_service_time: float | None = None
    envoy_error: str | None = None
    route_reason: str = ""
    elapsed: float = 0.0
    retry_budget_exhausted: bool = False
    variant: str | None = None
    stage: str | None = None


#: the setters of CallInfo's slots, in field order (unpacking fails at import if a field is added
#: and new_call_info not told)
(_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8, _S9, _S10) = (
    CallInfo.__dict__[field.name].__set__ for field in dataclasses.fields(CallInfo)
)
_new = object.__new__


def new_call_info(  # noqa: PLR0917 - one per field, in field order: what CallInfo(...) takes
    service: str,
    route: Route,
    attempts: int,
    failed_over: bool,
    upstream_service_time: float | None,
    envoy_error: str | None,
    route_reason: str,
    elapsed: float,
    retry_budget_exhausted: bool,
    variant: str | None,
    stage: str | None,
) -> CallInfo:
    """``CallInfo(...)`` with every field given, positionally, in half the time (the core makes
    one per call): each slot set by its own setter, where the frozen dataclass's ``__init__`` looks
    every field's name up again through ``object.__setattr__``. The same object: equal, hashed,
    printed and pickled alike (see tests/unit/test_info.py)."""
    info = _new(CallInfo)
    _S0(info, service)
    _S1(info, route)
    _S2(info, attempts)
    _S3(info, failed_over)
    _S4(info, upstream_service_time)
    _S5(info, envoy_error)
    _S6(info, route_reason)
    _S7(info, elapsed)
    _S8(info, retry_budget_exhausted)
    _S9(info, variant)
    _S10(info, stage)
    return info


def call_info(response: Any) -> CallInfo | None:
    """The :class:`CallInfo` of a ``requests`` or ``httpx`` response, or None when the response
    did not come from a call to a registered service."""
    extensions = getattr(response, "extensions", None)
    if isinstance(extensions, dict):
        info = extensions.get(INFO_KEY)
        if isinstance(info, CallInfo):
            return info
    info = getattr(response, INFO_KEY, None)
    return info if isinstance(info, CallInfo) else None
