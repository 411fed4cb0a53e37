"""The shadow-read step of ``mesh-client demo``: the comparison finds the one planted difference.

``users`` has a planted difference: on :data:`PLANTED` it answers a smaller page when the request
carries a deadline header, which only Envoy adds (a backend tuning itself to
``x-envoy-expected-rq-timeout-ms``, the kind of mismatch a route flip brings). Every other answer
differs between the routes only in the members that say which route the request came by, and the
registry's ``[services.users.shadow] ignore_json`` leaves those out.

After the flag walk, while the traffic keeps running, one caller makes :data:`CALLS` GETs at the
``shadow`` stage (HAProxy answers, a copy of each goes via Envoy and is compared), half of them on
:data:`PLANTED`. The step passes when exactly those calls mismatched, each on the planted member
alone, and every other call matched.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from ...mesh import Mesh
from ...registry import MeshConfig
from ...shadow.stats import ShadowEvent, observe
from ..shadow import StageRouter, every_call_copied, quiet_mismatch_log

__all__ = ["CALLS", "PLANTED", "PLANTED_MEMBER", "compare_some", "planted_answer", "shadow_table"]

#: The path where ``users`` answers otherwise through Envoy.
PLANTED: Final = "/v1/search"
#: The member that differs there.
PLANTED_MEMBER: Final = "page_size"
#: GETs the step makes, half of them on :data:`PLANTED`.
CALLS: Final = 20
_SERVICE: Final = "users"


def planted_answer(path: str, deadline_header: str | None) -> dict[str, int]:
    """What ``users`` adds to its answer on :data:`PLANTED`: a page of 20, or of 10 when the
    request carries a deadline header (so only through Envoy)."""
    if not path.startswith(PLANTED):
        return {}
    return {PLANTED_MEMBER: 10 if deadline_header else 20}


def shadow_table(route_members: tuple[str, ...]) -> str:
    """The registry table of ``users``' shadow reads: the members naming the route left out."""
    ignored = ", ".join(f'"{member}"' for member in route_members)
    return f"\n[services.{_SERVICE}.shadow]\nignore_json = [{ignored}]\n"


def compare_some(config: MeshConfig, caller: str) -> tuple[str, list[str]]:
    """Make the step's calls as ``caller`` at the ``shadow`` stage; (the line to show, the problems)."""
    events: list[ShadowEvent] = []
    copied = every_call_copied(config, _SERVICE, 1)
    copied = dataclasses.replace(copied, caller=caller, source=f"{config.source} as {caller} at stage shadow")
    with quiet_mismatch_log(), observe(events.append), Mesh(copied, router=StageRouter("shadow")) as mesh:
        session = mesh.requests_session()
        for n in range(CALLS):
            path = f"{PLANTED}?q={n}" if n % 2 else f"/v1/users/{n}"
            session.get(f"http://{_SERVICE}{path}", timeout=5).close()
        drained = mesh.shadow_drain(10)
        stats = mesh.shadow_stats(_SERVICE)
    mine = [e for e in events if e.service == _SERVICE]
    mismatched = [e for e in mine if e.result == "mismatch"]
    wheres = {d.where for e in mismatched if e.comparison is not None for d in e.comparison.differences}
    problems = []
    if not drained:
        problems.append("the shadow copies did not finish within 10 s")
    if (stats.compared, stats.errors, stats.skipped) != (CALLS, 0, 0):
        problems.append(
            f"shadow: {stats.compared} of {CALLS} calls compared, {stats.errors} copy error(s), {stats.skipped} skipped"
        )
    if sorted(e.target for e in mismatched) != sorted(f"{PLANTED}?q={n}" for n in range(1, CALLS, 2)):
        problems.append(f"shadow: {len(mismatched)} mismatch(es), expected exactly the {CALLS // 2} on {PLANTED}")
    if mismatched and wheres != {f"body $.{PLANTED_MEMBER}"}:
        problems.append(f"shadow: the mismatches differ in {sorted(wheres)}, not only in {PLANTED_MEMBER}")
    places = ", ".join(sorted({e.target.split("?", 1)[0] for e in mismatched})) or "none"
    line = (
        f"  shadow    {caller} -> {_SERVICE} at stage shadow, {CALLS} calls each copied via Envoy and compared: "
        f"{stats.matched} matched, {stats.mismatched} mismatched, on {places} ({'; '.join(sorted(wheres)) or '-'}): "
        + ("the planted difference, and nothing else" if not problems else "not the planted difference alone")
    )
    return line, problems
