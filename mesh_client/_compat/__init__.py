"""Every use of a dependency's private internals, one module per dependency.

Each seam is a **probe** (does the internal exist and behave as this code expects?) and a
**public-API fallback** used when the probe says no. An upgrade of a dependency that moves an
internal therefore costs speed, never correctness. Setting the environment variable
``MESH_CLIENT_COMPAT_FALLBACK=1`` before ``import mesh_client`` makes every probe fail, so the
fallbacks can be tested as a whole (``tox -e compat-fallback``).

To add a seam: put the private access in the dependency's module here, behind a probe that
returns False (or None) under :func:`forced_fallback`, give it a fallback through the public API,
and test both (``tests/unit/test_compat_<dependency>.py``, plus a line in ``test_compat.py``'s check that
the environment variable forces every fallback).
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["FALLBACK_ENV", "forced_fallback"]

#: the environment variable that forces every seam's fallback
FALLBACK_ENV: Final = "MESH_CLIENT_COMPAT_FALLBACK"


def forced_fallback() -> bool:
    """Whether every probe must fail (``MESH_CLIENT_COMPAT_FALLBACK=1``, read at each probe)."""
    return os.environ.get(FALLBACK_ENV, "") == "1"
