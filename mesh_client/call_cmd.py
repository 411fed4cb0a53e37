"""``mesh-client call MESH.toml SERVICE METHOD PATH``: one call through the mesh, and how it went.

The call is made exactly as an application makes it: ``mesh.requests_session()`` with the
registry's policy, the route the flag picks (or ``--route``), ``--timeout`` through
:func:`mesh_client.call_options` and ``--override SERVICE=VARIANT`` through
:func:`mesh_client.route_overrides`. It prints the status, the route, the attempts, whether the call
failed over, Envoy's upstream service time and error kind, why the route was chosen, the time the
call took and the response body (the first ``--max-body`` bytes), or the error with its class
names. ``--json`` prints the same as one JSON object.

Exit codes: 0 a response with a status below 400; 1 a status of 400 or more, a transport error
(no response) or an invalid registry; 2 bad arguments (an unknown or Thrift service, a malformed
``-H`` or ``--override``, an unreadable ``--data @FILE``, a bad method or path); 3 ``--route`` was given and the call
went another way (the Envoy sidecar refused the connection and the call failed over to HAProxy),
whatever its status.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import requests

from .core import DROPPED_HEADERS
from .doctor import flag_source_problem, quiet_flag_logs, seconds_arg
from .errors import ConfigError, MeshError, combination
from .info import CallInfo, call_info
from .mesh import Mesh
from .overrides import parse_override_header, route_overrides
from .policy import UNSET, Route, call_options
from .registry import MeshConfig, load_file

__all__ = ["DEFAULT_MAX_BODY", "ArgumentProblem", "add_parser", "parse_header", "read_data", "run"]

#: Bytes of the response body shown by default (``--max-body``).
DEFAULT_MAX_BODY: Final = 4096
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


def _check_method(method: str) -> str:
    if not _TOKEN.match(method):
        raise ArgumentProblem(f"METHOD {method!r} is not an HTTP method (GET, POST, PUT, DELETE, ...)")
    return method.upper()


def _check_path(path: str) -> str:
    if "://" in path:
        raise ArgumentProblem(
            f"PATH {path!r} is a URL; give only the path (the service's name is the host), e.g. /v1/users/1"
        )
    if not path.startswith("/"):
        raise ArgumentProblem(f"PATH {path!r} must start with '/'")
    if any(c.isspace() or ord(c) < 32 for c in path):
        raise ArgumentProblem(f"PATH {path!r} contains spaces or control characters (percent-encode them)")
    return path


def _service(config: MeshConfig, name: str) -> None:
    svc = config.services.get(name)
    known = ", ".join(sorted(config.services)) or "none"
    if svc is None:
        raise ArgumentProblem(f"no service {name!r} in {config.source} (services: {known})")
    if svc.protocol != "http":
        raise ArgumentProblem(
            f"service {name!r} uses protocol {svc.protocol!r}; `mesh-client call` makes HTTP calls only "
            "(call Thrift services with mesh.thrift_client)"
        )


def _header_notes(config: MeshConfig, headers: list[tuple[str, str]]) -> list[str]:
    """What the client will do to the caller's headers that it does not send as given."""
    prefixes = tuple(dict.fromkeys((config.header_prefix + "-", "x-envoy-", "x-forwarded-", "proxy-")))
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


# -- the result ----------------------------------------------------------------------------------


def _class_names(exc: BaseException) -> list[str]:
    """The error's classes: the mesh_client class first, then the wrapped library's own."""
    cls = type(exc)
    classes = list(combination(cls) or [cls])
    names = []
    for c in classes:
        public = c.__module__.startswith("mesh_client") or c.__module__ == "builtins"
        names.append(c.__qualname__ if public else f"{c.__module__}.{c.__qualname__}")
    return names


@dataclass
class _Body:
    size: int
    text: str | None  # None: binary
    shown: bytes
    truncated: bool
    content_type: str

    @classmethod
    def of(cls, content: bytes, content_type: str, limit: int) -> _Body:
        shown = content if limit <= 0 else content[:limit]
        text: str | None
        try:
            content.decode("utf-8")
            binary = b"\0" in content
        except UnicodeDecodeError:
            binary = True
        text = None if binary else shown.decode("utf-8", errors="ignore")  # a cut may split a character
        return cls(len(content), text, shown, len(shown) < len(content), content_type)


@dataclass
class _Outcome:
    """One call's result: a response (with its body) or an error, and the call's info."""

    service: str
    method: str
    path: str
    response: requests.Response | None = None
    body: _Body | None = None
    error: BaseException | None = None
    info: CallInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None and self.response.status_code < 400


def _info_fields(info: CallInfo | None) -> dict[str, Any]:
    if info is None:
        return {}
    fields = dataclasses.asdict(info)
    fields["route"] = info.route.value
    fields["elapsed"] = round(info.elapsed, 6)
    fields.pop("service", None)
    return fields


def _as_json(call: _Outcome) -> dict[str, Any]:
    response, body, error = call.response, call.body, call.error
    result: dict[str, Any] = {
        "service": call.service,
        "method": call.method,
        "path": call.path,
        "ok": call.ok,
        "status": response.status_code if response is not None else None,
        "reason": response.reason if response is not None else None,
        **_info_fields(call.info),
        "headers": dict(response.headers) if response is not None else None,
    }
    result["body_bytes"] = body.size if body is not None else None
    result["body_truncated"] = body.truncated if body is not None else None
    result["body"] = body.text if body is not None else None
    if body is not None and body.text is None:
        result["body_base64"] = base64.b64encode(body.shown).decode("ascii")
    result["error"] = (
        None
        if error is None
        else {"type": _class_names(error)[0], "classes": _class_names(error), "message": str(error)}
    )
    return result


def _seconds_text(value: object) -> str:
    return f"{value:.3f} s" if isinstance(value, float) else "-" if value is None else str(value)


def _print_text(out: TextIO, call: _Outcome, *, include: bool) -> None:
    response, body, error = call.response, call.body, call.error
    rows: list[tuple[str, str]] = []
    if response is not None:
        rows.append(("status", f"{response.status_code} {response.reason or ''}".rstrip()))
    if error is not None:
        names = _class_names(error)
        also = f" (also {', '.join(names[1:])})" if len(names) > 1 else ""
        rows.append(("error", f"{names[0]}{also}: {error}"))
    for key, value in _info_fields(call.info).items():
        if key in ("elapsed", "upstream_service_time"):
            text = _seconds_text(value)
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        else:
            text = "-" if value is None else str(value)
        rows.append((key, text))
    print(f"{call.method} http://{call.service}{call.path}", file=out)
    width = max(len(k) for k, _ in rows) + 2
    for key, text in rows:
        print(f"  {key:<{width}}{text}", file=out)
    if response is not None and include:
        print("  headers", file=out)
        for name, value in response.headers.items():
            print(f"    {name}: {value}", file=out)
    if body is None:
        return
    kind = f", {body.content_type}" if body.content_type else ""
    if body.size == 0:
        print(f"  {'body':<{width}}empty{kind}", file=out)
        return
    if body.text is None:
        print(f"  {'body':<{width}}{body.size} bytes of binary data{kind} (not shown; --json shows base64)", file=out)
        return
    cut = f"; first {len(body.shown)} shown, --max-body 0 shows all" if body.truncated else ""
    print(f"  {'body':<{width}}{body.size} bytes{kind}{cut}", file=out)
    text = body.text if body.text.endswith("\n") else body.text + "\n"
    out.write(text + ("[...]\n" if body.truncated else ""))


# -- the command ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``mesh-client call``: 0 for a status below 400, 1 for a higher status or an error,
    2 for bad arguments, 3 when the route asked for was not the route taken."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        method = _check_method(args.method)
        path = _check_path(args.path)
        headers = [parse_header(h) for h in args.header or []]
        overrides = parse_overrides_args(args.override or [])
        data = read_data(args.data)
        config = load_file(args.registry)
        _service(config, args.service)
    except ArgumentProblem as exc:
        print(f"mesh-client call: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"mesh-client call: invalid registry: {exc}", file=err)
        return 1
    for note in _header_notes(config, headers):
        print(f"mesh-client call: note: {note}", file=err)

    call = _Outcome(args.service, method, path)
    route = Route(args.route) if args.route else UNSET
    timeout = args.timeout if args.timeout is not None else UNSET
    with quiet_flag_logs() as said:  # a flag source that fails gets one line below, not the SDK's traceback
        mesh = Mesh(config)
    problem = flag_source_problem(config, mesh, said)
    if problem and route is UNSET:
        print(
            f"mesh-client call: note: the flag source did not load: {problem}; the call takes the fallback route",
            file=err,
        )
    options = call_options(route=route, timeout=timeout)
    with quiet_flag_logs() if problem else nullcontext(), mesh, options, route_overrides(overrides):
        session = mesh.requests_session()
        merged: dict[str, str] = {}
        for name, value in headers:  # repeated -H of one name: joined, as HTTP allows
            key = next((k for k in merged if k.lower() == name.lower()), name)
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        try:
            call.response = session.request(method, f"http://{args.service}{path}", headers=merged, data=data)
            call.info = call_info(call.response)
            content_type = call.response.headers.get("content-type", "")
            call.body = _Body.of(call.response.content, content_type, args.max_body)
        except (requests.RequestException, MeshError) as exc:
            call.error = exc
            call.info = getattr(exc, "info", None)
    if args.json:
        print(json.dumps(_as_json(call), indent=2), file=out)
    else:
        _print_text(out, call, include=args.include)
    if route is not UNSET and call.info is not None and call.info.route is not route:
        why = call.info.route_reason.rsplit("; ", 1)[-1]
        print(
            f"mesh-client call: --route {route.value} was asked for, but the call went via {call.info.route.value} "
            f"({why})",
            file=err,
        )
        return 3
    return 0 if call.ok else 1


def parse_overrides_args(values: list[str]) -> dict[str, str]:
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


def _max_body(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of bytes, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {text!r}")
    return value


DESCRIPTION = """\
Makes one call to a registered HTTP service through the mesh, as an application would
(mesh.requests_session(), the registry's policy, the route the flag picks now), and prints
how it went: status, route, attempts, failed_over, upstream_service_time, envoy_error,
route_reason, elapsed (the fields of call_info) and the response body, or the error with its
class names.
"""

EPILOG = """\
examples:
  mesh-client call mesh.toml users GET /v1/users/1
  mesh-client call mesh.toml users POST /v1/users --route envoy \\
      -H 'Content-Type: application/json' --data '{"name": "Ada"}'
  mesh-client call mesh.toml users PUT /v1/users/1 --data @user.json --timeout 0.5 --json

headers the client controls (x-envoy-*, Host, X-Forwarded-*, x-request-id, ...) are removed or
replaced on mesh calls, as for any caller; a note on stderr says so.

exit codes:
  0    a response with a status below 400
  1    a status of 400 or more, a transport error (no response), or an invalid registry
  2    bad arguments: unknown or Thrift service, malformed -H, unreadable --data @FILE,
       bad METHOD or PATH, bad option values
  3    --route was given and the call went another way (it failed over to HAProxy),
       whatever its status
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``call`` on the ``mesh-client`` sub-command parsers."""
    p = subparsers.add_parser(
        "call",
        help="make one call to a service through the mesh and show how it went (route, attempts, timing)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("registry", metavar="MESH.toml", help="the registry TOML file")
    p.add_argument("service", metavar="SERVICE", help="a registered HTTP service")
    p.add_argument("method", metavar="METHOD", help="the HTTP method: GET, POST, PUT, DELETE, ...")
    p.add_argument("path", metavar="PATH", help="the path and query, starting with '/', e.g. /v1/users/1?full=1")
    p.add_argument(
        "--route", choices=[r.value for r in Route], help="force this route instead of the flag's (call_options)"
    )
    p.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="a request header; repeat for more",
    )
    p.add_argument(
        "-d", "--data", metavar="TEXT|@FILE", help="the request body: TEXT as UTF-8, @FILE's bytes, or @- for stdin"
    )
    p.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="S",
        help="the call's total timeout in seconds (call_options; default: the registry's)",
    )
    p.add_argument(
        "--override",
        action="append",
        metavar="SERVICE=VARIANT",
        help="a routing override for this call and the calls it causes (route_overrides); repeat for more",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument(
        "--max-body",
        type=_max_body,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help=f"show at most this many bytes of the body (default {DEFAULT_MAX_BODY}; 0: all)",
    )
    p.add_argument("-i", "--include", action="store_true", help="also print the response headers (text output)")
    p.set_defaults(run=run)
