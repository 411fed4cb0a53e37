"""Switching one seam of mesh_client._compat.httpx to its fast path or its fallback, in this
process, whatever MESH_CLIENT_COMPAT_FALLBACK says (the tests of both paths of each seam)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mesh_client._compat import FALLBACK_ENV
from mesh_client._compat import httpx as httpx_compat

#: seam -> (the module's flag, its probe, the flag's value when the probe fails)
HTTPX_SEAMS: dict[str, tuple[str, Callable[[], Any], Any]] = {
    "header list": ("_HEADER_LIST", httpx_compat._probe_header_list, False),
    "request state": ("_REQUEST_STATE", httpx_compat._probe_request_state, False),
    "url parts": ("_URL_PARTS", httpx_compat._probe_url_parts, False),
    "proxy reader": ("_PROXY_READER", httpx_compat._probe_proxy_reader, None),
    "read timeout": ("_READ_TIMEOUT", httpx_compat._probe_read_timeout, False),
    "network stream": ("_NETWORK_STREAM", httpx_compat._probe_network_stream, False),
    "pool state": ("_POOL_STATE", httpx_compat._probe_pool_state, False),
}

#: the two paths, as test parameters
PATHS = ["probed", "fallback"]


def use_path(monkeypatch: pytest.MonkeyPatch, seam: str, path: str) -> bool:
    """Set ``seam`` to ``path`` ("probed": the probe's own answer, run again here without the
    forcing variable, and required to succeed with the installed httpx; "fallback": the answer of a
    failed probe) until the test ends; True on the probed path."""
    flag, probe, failed = HTTPX_SEAMS[seam]
    if path == "probed":
        with monkeypatch.context() as env:
            env.delenv(FALLBACK_ENV, raising=False)
            value = probe()
        assert value not in (False, None), f"the {seam} probe fails with the installed httpx/httpcore"
    else:
        value = failed
    monkeypatch.setattr(httpx_compat, flag, value)
    return path == "probed"
