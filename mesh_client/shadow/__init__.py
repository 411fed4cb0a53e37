"""Shadow reads: migration stages in the route flag, and copies of calls compared across routes.

The route flag of a service may answer one of LaunchDarkly's migration stages besides
``"haproxy"`` / ``"envoy"`` (:mod:`mesh_client.shadow.stages`). At ``shadow`` the caller gets
HAProxy's answer and a copy of a sample of its idempotent calls goes via Envoy; at ``live`` Envoy
answers and the copy goes via HAProxy. The two answers are compared
(:mod:`mesh_client.shadow.compare`, pure), off the caller's path (:mod:`mesh_client.shadow.runner`),
and counted (:meth:`mesh_client.Mesh.shadow_stats`). See docs/shadow.md.

This package's ``__init__`` holds constants only: :mod:`mesh_client.context` and
:mod:`mesh_client.flag_router` import from it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SHADOW_HEADER"]

#: Carried by every copy, and by every call made while serving a request that arrived with it: such
#: a request makes no copies of its own calls (a shadow read never fans out into more copies).
SHADOW_HEADER: Final = "x-mesh-shadow"
