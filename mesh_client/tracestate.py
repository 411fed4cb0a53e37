"""The W3C ``tracestate`` rules the inbound middleware applies before the trace context is used.

OpenTelemetry's propagator parses ``tracestate`` with an older key grammar (a vendor part of at
most 14 characters after ``@``, one ``@`` at most) and drops the whole header on a duplicated key.
The current W3C Trace Context grammar (``key = ( lcalpha / DIGIT ) 0*255 ( keychar )``, ``keychar``
including ``@``) accepts keys such as ``foo@@bar`` or ``t@vvvvvvvvvvvvvvv``, and lets a vendor drop
duplicates. :func:`parse_tracestate` reads a header by those rules:

- several ``tracestate`` fields are one list, joined with ``,`` in the order received (RFC 9110);
- blanks (spaces and tabs) around a member are optional whitespace; empty members are skipped;
- a member whose key or value breaks the grammar makes the whole header unusable (None): its
  members cannot be told apart reliably any more (``foo=,bar=3`` or ``@foo=1,bar=2``);
- a key seen again is dropped (the first one, the left-most, is kept);
- more than 32 members make the whole header unusable.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_MEMBERS", "format_tracestate", "parse_tracestate"]

#: The most list members a ``tracestate`` may have.
MAX_MEMBERS: Final = 32
_MEMBER: Final = re.compile(
    r"([a-z0-9][_0-9a-z\-*/@]{0,255})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)


def parse_tracestate(value: str) -> list[tuple[str, str]] | None:
    """The (key, value) members of a ``tracestate`` value (the fields joined with ``,``), in order
    and without repeated keys; None when the header must be discarded as a whole."""
    members: dict[str, str] = {}
    for field in value.split(","):
        member = field.strip(" \t")
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None:
            return None
        key, item = match.groups()
        members.setdefault(key, item)
    if len(members) > MAX_MEMBERS:
        return None
    return list(members.items())


def format_tracestate(members: list[tuple[str, str]]) -> str:
    """The header value of ``members``, as sent (no optional whitespace)."""
    return ",".join(f"{key}={value}" for key, value in members)
