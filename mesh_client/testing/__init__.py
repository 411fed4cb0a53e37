"""Testing code that calls services through the mesh.

- :class:`FakeMesh` (the ``fake_mesh`` fixture): an in-process Envoy and HAProxy with Envoy's
  timeout and retry semantics, on a virtual clock; handlers built from :func:`reply`,
  :func:`thrift_reply`, :func:`refuse`, :func:`reset` and :func:`hang`.
- :class:`MeshFlags` (the ``mesh_flags`` fixture): route flags evaluated by the real LaunchDarkly SDK.
- :class:`EnvoySidecar` / :class:`HAProxySidecar` (the ``envoy_sidecar`` / ``haproxy_sidecar``
  fixtures): the real processes, with their counters.
- :class:`Backend`: a recording HTTP server for integration tests.

The fixtures come from the pytest plugin :mod:`mesh_client.testing.plugin`, active once
mesh_client is installed. The names here are imported on first use, so that loading the plugin
costs a project's test runs nothing it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Backend, Record
    from .fake import Call, FakeMesh, Headers, ProxyRequest, UpstreamRequest
    from .flags import MeshFlags
    from .replies import Reply, hang, refuse, reply, reset, thrift_reply
    from .sidecars import EnvoySidecar, HAProxySidecar

_WHERE = {
    "Backend": "backend",
    "Record": "backend",
    "Call": "fake",
    "FakeMesh": "fake",
    "Headers": "fake",
    "ProxyRequest": "fake",
    "UpstreamRequest": "fake",
    "MeshFlags": "flags",
    "Reply": "replies",
    "hang": "replies",
    "refuse": "replies",
    "reply": "replies",
    "reset": "replies",
    "thrift_reply": "replies",
    "EnvoySidecar": "sidecars",
    "HAProxySidecar": "sidecars",
}

__all__ = [
    "Backend",
    "Call",
    "EnvoySidecar",
    "FakeMesh",
    "HAProxySidecar",
    "Headers",
    "MeshFlags",
    "ProxyRequest",
    "Record",
    "Reply",
    "UpstreamRequest",
    "hang",
    "refuse",
    "reply",
    "reset",
    "thrift_reply",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh_client.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
