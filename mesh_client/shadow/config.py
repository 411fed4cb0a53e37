"""``[services.NAME.shadow]``: how a service's calls are copied and compared at the ``shadow`` and
``live`` stages. See docs/registry.md for every key and its errors."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigError
from .compare import parse_json_path

__all__ = ["DEFAULT_SHADOW", "MAX_IN_FLIGHT", "ShadowConfig", "parse_shadow"]

#: the largest ``max_in_flight`` accepted (copies in flight per service)
MAX_IN_FLIGHT: Final = 1024
_KEYS: Final = ("compare_headers", "ignore_json", "max_in_flight", "sample")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """One service's shadow settings (immutable).

    - ``sample``: the share (0 to 1) of eligible calls copied down the other route.
    - ``max_in_flight``: copies of this service's calls in flight at once; beyond it a copy is
      skipped (and counted).
    - ``ignore_json``: JSON members left out of the comparison (see
      :mod:`mesh_client.shadow.compare` for the path syntax).
    - ``compare_headers``: response headers compared as well (lower-case names).
    """

    sample: float = 0.1
    max_in_flight: int = 4
    ignore_json: tuple[str, ...] = ()
    compare_headers: tuple[str, ...] = ()


DEFAULT_SHADOW: Final = ShadowConfig()


def parse_shadow(table: object, *, prefix: str, source: str, protocol: str) -> ShadowConfig:
    """Validate a ``[services.NAME.shadow]`` table (``prefix`` is ``services.NAME.shadow``)."""

    def fail(name: str | None, message: str) -> ConfigError:
        return ConfigError(message, key=f"{prefix}.{name}" if name else prefix, source=source)

    if not isinstance(table, Mapping):
        raise fail(None, f"must be a table, got {table!r}")
    for key in table:
        if key not in _KEYS:
            raise fail(str(key), f"unknown key (known keys: {', '.join(_KEYS)})")
        if key in ("ignore_json", "compare_headers") and protocol != "http":
            raise fail(key, "only applies to services with protocol 'http'")
    sample = table.get("sample", DEFAULT_SHADOW.sample)
    if isinstance(sample, bool) or not isinstance(sample, (int, float)) or math.isnan(sample) or not 0 <= sample <= 1:
        raise fail("sample", f"must be a number from 0 to 1 (the share of calls copied), got {sample!r}")
    cap = table.get("max_in_flight", DEFAULT_SHADOW.max_in_flight)
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_IN_FLIGHT:
        raise fail("max_in_flight", f"must be a whole number from 1 to {MAX_IN_FLIGHT}, got {cap!r}")
    paths = table.get("ignore_json", [])
    if not isinstance(paths, list):
        raise fail("ignore_json", f"must be a list of JSON paths like 'generated_at' or 'items[].etag', got {paths!r}")
    for path in paths:
        try:
            parse_json_path(path)
        except ValueError as exc:
            raise fail("ignore_json", str(exc)) from None
    names = table.get("compare_headers", [])
    if not isinstance(names, list):
        raise fail("compare_headers", f"must be a list of header names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name.lower()):
            raise fail("compare_headers", f"{name!r} is not a header name")
    return ShadowConfig(
        sample=float(sample),
        max_in_flight=cap,
        ignore_json=tuple(dict.fromkeys(paths)),
        compare_headers=tuple(dict.fromkeys(name.lower() for name in names)),
    )
