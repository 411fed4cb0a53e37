"""The routing-override step of ``mesh-client demo``: one request steered to a canary, two hops down.

``users`` gets a canary deployment (``[services.users.variants.canary]``, its own backend and
HAProxy port). After the flag walk, while the demo's traffic keeps running, one caller makes one
request under ``route_overrides({"users": "canary"})`` to ``orders`` at ``/via/users``; ``orders``
(whose server reads the inbound override as the middleware does, ``[overrides] accept_inbound``)
calls ``users`` itself, once via Envoy and once via HAProxy. Both answers must come from the canary,
and the canary must have received exactly those two requests: every other call stayed on main.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final

import requests

from ...context import begin_request
from ...info import call_info
from ...mesh import Mesh
from ...overrides import route_overrides
from ...policy import Route, call_options
from ...registry import MeshConfig

__all__ = ["CANARY", "OVERRIDES_TABLE", "VIA", "Forward", "canary_table", "forwarder", "steer_one"]

#: The variant the step steers ``users`` to.
CANARY: Final = "canary"
#: Added to the demo's registry: the services honour inbound overrides (inside the demo's mesh).
OVERRIDES_TABLE: Final = """
[overrides]
accept_inbound = true
"""
#: The second hop's path on ``orders``: ``/via/SERVICE`` makes ``orders`` call SERVICE itself.
VIA: Final = "/via/"


def canary_table(service: str, haproxy_port: int, backend: object) -> str:
    """The registry table of ``service``'s canary."""
    return (
        f'\n[services.{service}.variants.{CANARY}]\nhaproxy = "127.0.0.1:{haproxy_port}"\nendpoints = ["{backend}"]\n'
    )


Forward = Callable[[str, Mapping[str, str]], dict[str, Any]]


def forwarder(config: MeshConfig, caller: str) -> tuple[Mesh, Forward]:
    """What ``caller``'s demo server does for ``/via/SERVICE``: call SERVICE once per route from
    inside the inbound request's context (its overrides, as the middleware would keep them), and
    report each answer and ``call_info``. Returns the Mesh it calls with (closed by the caller)."""
    mesh = Mesh(dataclasses.replace(config, caller=caller, source=f"{config.source} as {caller}"))
    session = mesh.requests_session()

    def calls(service: str, headers: Mapping[str, str]) -> dict[str, Any]:
        end = begin_request(
            {k.lower(): v for k, v in headers.items()},
            header_prefix=config.header_prefix,
            context_headers=config.context_headers,
            overrides=config.overrides,
        )
        try:
            answers = {}
            for route in (Route.ENVOY, Route.HAPROXY):
                with call_options(route=route):
                    r = session.get(f"http://{service}/hop", timeout=5)
                info = call_info(r)
                answers[route.value] = {
                    "status": r.status_code,
                    "deployment": r.json().get("deployment") if r.status_code == 200 else None,
                    "variant": info.variant if info is not None else None,
                }
            return answers
        finally:
            end()

    def forward(service: str, headers: Mapping[str, str]) -> dict[str, Any]:
        return contextvars.copy_context().run(calls, service, headers)

    return mesh, forward


def steer_one(session: requests.Session, caller: str, canary_requests: Callable[[], int]) -> tuple[str, list[str]]:
    """Make the steered request with ``caller``'s ``session``; (the line to show, the problems)."""
    before = canary_requests()
    with route_overrides({"users": CANARY}):
        r = session.get(f"http://orders{VIA}users", timeout=10)
    info = call_info(r)
    first = info.route.value if info is not None else "?"
    answers: dict[str, Any] = r.json().get("next", {}) if r.status_code == 200 else {}
    problems = []
    if r.status_code != 200 or set(answers) != {"envoy", "haproxy"}:
        problems.append(f"the steered request failed: {caller} -> orders answered {r.status_code}")
    for route, answer in answers.items():
        if (answer["deployment"], answer["variant"]) != (CANARY, CANARY):
            problems.append(f"orders -> users via {route} was answered by {answer['deployment']}, not the canary")
    reached = canary_requests() - before
    if reached != 2:
        problems.append(f"the canary received {reached} request(s) during the step, expected exactly 2")
    line = (
        f"  override  {caller} -> orders ({first}) -> users, with route_overrides({{'users': '{CANARY}'}}) in "
        f"{caller}: the canary answered via Envoy and via HAProxy; it received {reached} request(s), every other "
        "call stayed on main"
    )
    return line, problems
