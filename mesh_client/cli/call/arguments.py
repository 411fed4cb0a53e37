"""``mesh-client call``'s arguments: checked before anything is sent, each problem named."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Final

from ...envoy import DEFAULT_PREFIX
from ...overrides import parse_override_header
from ...plan import DROPPED_HEADERS
from ...registry import MeshConfig
from .._args import whole_number_arg

__all__ = [
    "ArgumentProblem",
    "check_method",
    "check_path",
    "check_service",
    "header_notes",
    "max_body_arg",
    "merge_headers",
    "parse_header",
    "parse_overrides",
    "read_data",
]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REPLACED: Final = frozenset({"x-request-id", "traceparent", "tracestate", "baggage"})


class ArgumentProblem(Exception):
    """A bad argument: the message names it; the command exits 2."""


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` as ``(name, value)``; raises :class:`ArgumentProblem` when malformed."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep:
        raise ArgumentProblem(f"-H {text!r}: expected 'Name: value' (no ':' found)")
    if not name:
        raise ArgumentProblem(f"-H {text!r}: the header name is empty")
    if not _TOKEN.match(name):
        raise ArgumentProblem(f"-H {text!r}: {name!r} is not a valid header name")
    value = value.strip(" \t")
    if any(c in value for c in "\r\n\0"):
        raise ArgumentProblem(f"-H {text!r}: the value contains a line break or NUL")
    return name, value


def merge_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Parsed ``-H`` values as one mapping: repeated names (any case) joined with ``, ``, as HTTP
    allows."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = next((k for k in merged if k.lower() == name.lower()), name)
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged


def parse_overrides(values: list[str]) -> dict[str, str]:
    """The ``--override`` values (``users=canary``, or several joined by ``;``) as one mapping; a
    later one wins. Raises :class:`ArgumentProblem` for a malformed value."""
    overrides: dict[str, str] = {}
    for value in values:
        try:
            parsed = parse_override_header(value)
        except ValueError:
            raise ArgumentProblem(
                f"--override {value!r}: expected SERVICE=VARIANT (lower-case names: letters, digits, '.', '-', '_')"
            ) from None
        for service, variant in parsed.items():
            overrides.pop(service, None)
            overrides[service] = variant
    return overrides


def read_data(text: str | None, stdin: Any = None) -> bytes | None:
    """The request body from ``--data``: the text itself, ``@FILE``'s bytes, or ``@-`` for stdin."""
    if text is None:
        return None
    if not text.startswith("@"):
        return text.encode("utf-8")
    name = text[1:]
    if not name:
        raise ArgumentProblem("--data @: name a file after '@' (or @- for stdin)")
    if name == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data: bytes = stream.read()
        return data
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise ArgumentProblem(f"--data @{name}: cannot read the file: {exc.strerror or exc}") from None


def check_method(method: str) -> str:
    """The method, upper-cased; :class:`ArgumentProblem` when it is not an HTTP token."""
    if not _TOKEN.match(method):
        raise ArgumentProblem(f"METHOD {method!r} is not an HTTP method (GET, POST, PUT, DELETE, ...)")
    return method.upper()


def check_path(path: str) -> str:
    """The path as given; :class:`ArgumentProblem` for a URL, no leading '/', spaces or controls."""
    if "://" in path:
        raise ArgumentProblem(
            f"PATH {path!r} is a URL; give only the path (the service's name is the host), e.g. /v1/users/1"
        )
    if not path.startswith("/"):
        raise ArgumentProblem(f"PATH {path!r} must start with '/'")
    if any(c.isspace() or ord(c) < 32 for c in path):
        raise ArgumentProblem(f"PATH {path!r} contains spaces or control characters (percent-encode them)")
    return path


def check_service(config: MeshConfig, name: str) -> None:
    """:class:`ArgumentProblem` unless ``name`` is a registered HTTP service."""
    svc = config.services.get(name)
    known = ", ".join(sorted(config.services)) or "none"
    if svc is None:
        raise ArgumentProblem(f"no service {name!r} in {config.source} (services: {known})")
    if svc.protocol != "http":
        raise ArgumentProblem(
            f"service {name!r} uses protocol {svc.protocol!r}; `mesh-client call` makes HTTP calls only "
            "(call Thrift services with mesh.thrift_client)"
        )


def header_notes(config: MeshConfig, headers: list[tuple[str, str]]) -> list[str]:
    """What the client will do to the caller's headers that it does not send as given."""
    prefixes = tuple(dict.fromkeys((config.header_prefix + "-", DEFAULT_PREFIX + "-", "x-forwarded-", "proxy-")))
    notes = []
    for name, _ in headers:
        lower = name.lower()
        if lower == "host":
            notes.append(f"header {name!r} is replaced by the service's envoy_host")
        elif lower.startswith(prefixes) or lower in DROPPED_HEADERS:
            notes.append(f"header {name!r} is removed by mesh_client on mesh calls")
        elif lower in _REPLACED or lower in config.context_headers:
            notes.append(f"header {name!r} is replaced by mesh_client's own value for the call")
    if notes:
        notes.append("see docs/routes.md#headers-the-client-removes")
    return notes


#: An argparse type for ``--max-body``: a whole number of bytes, 0 for no limit.
max_body_arg: Final = whole_number_arg(0, unit="bytes", least="0 (no limit)")
