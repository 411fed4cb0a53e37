"""The proxies httpx itself takes from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``, read by ``urllib.request.getproxies``), as URL patterns for an
``httpx.Client``'s ``mounts``: pattern -> proxy URL, or None where no proxy may be used.

httpx reads them only when a client is given no ``transport``; a client from
``mesh.httpx_client()`` always has one (the mesh transport), so it mounts them itself. httpx's own
reader is private (``httpx._utils.get_environment_proxies``): it is used through
:mod:`mesh_client._compat.httpx` alone, with :func:`parse_environment_proxies` (the same rules,
written here) when it is missing or answers otherwise than expected.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable, Mapping

from .._compat import httpx as httpx_compat

__all__ = ["environment_proxies", "parse_environment_proxies"]


def environment_proxies(reader: Callable[[], object] | None = None) -> dict[str, str | None]:
    """The environment's proxy mounts as httpx makes them: by ``reader`` (httpx's own by default,
    see :func:`mesh_client._compat.httpx.environment_proxies`), or by the rules written here when
    it is missing or answers otherwise than expected."""
    found = httpx_compat.environment_proxies(reader)
    return found if found is not None else parse_environment_proxies()


def parse_environment_proxies(proxies: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """httpx's rules, on ``proxies`` (``urllib.request.getproxies()`` by default): one mount per
    scheme proxied (``http://``, ``https://``, ``all://``; a proxy given without a scheme is an
    ``http://`` one), and one None mount per ``NO_PROXY`` entry: an address as itself, ``localhost``
    as itself, a name for itself and its subdomains (``all://*name``), an entry with a scheme as it
    is written; ``NO_PROXY=*`` turns every proxy off."""
    found = urllib.request.getproxies() if proxies is None else proxies
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            mounts[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for entry in (part.strip() for part in found.get("no", "").split(",")):
        if entry == "*":
            return {}
        if entry:
            mounts[_no_proxy_pattern(entry)] = None
    return mounts


def _no_proxy_pattern(entry: str) -> str:
    if "://" in entry:
        return entry
    address = entry.split("/", maxsplit=1)[0]  # (a network: 10.0.0.0/8 matches as its first address)
    for kind, pattern in ((ipaddress.IPv4Address, "all://{}"), (ipaddress.IPv6Address, "all://[{}]")):
        try:
            kind(address)
        except ValueError:
            continue
        return pattern.format(entry)
    if entry.lower() == "localhost":
        return f"all://{entry}"
    return f"all://*{entry}"
