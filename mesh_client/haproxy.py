"""How mesh_client reads HAProxy's own replies on the HAProxy route. Pure functions, no I/O.

HAProxy answers some upstream failures itself with small HTML pages. Two of them map onto Envoy
retry-on conditions, so the client can give a retry-on token the same meaning on both routes:

- 503 "No server is available to handle this request": HAProxy could not connect to any
  instance (or has none), so nothing was sent: Envoy's ``connect-failure``.
- 502 "Bad Gateway": the instance sent an invalid, empty or incomplete response: like Envoy's
  ``reset`` (the request may have been processed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["classify_reply", "may_be_local_reply"]

_MAX_BODY: Final = 1024


def may_be_local_reply(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a response could be one of HAProxy's own error pages (worth reading its body)."""
    if status not in (502, 503, 504) or not headers.get("content-type", "").startswith("text/html"):
        return False
    try:
        return int(headers.get("content-length", "")) <= _MAX_BODY
    except ValueError:
        return False


def classify_reply(status: int, body: bytes | None) -> str | None:
    """``"connect_failure"``, ``"upstream_reset"``, ``"timeout"`` for HAProxy's own pages, else None."""
    if body is None:
        return None
    text = body[:_MAX_BODY].decode("latin-1")
    if status == 503 and "No server is available to handle this request" in text:
        return "connect_failure"
    if status == 502 and "<h1>502 Bad Gateway</h1>" in text:
        return "upstream_reset"
    if status == 504 and "<h1>504 Gateway Time-out</h1>" in text:
        return "timeout"
    return None
