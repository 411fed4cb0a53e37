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

Where the code lives: :mod:`.arguments` checks the arguments, :mod:`.outcome` shows the result;
this module makes the call.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from typing import Final, TextIO

import requests

from ...errors import ConfigError, MeshError
from ...info import call_info
from ...mesh import Mesh
from ...overrides import route_overrides
from ...policy import UNSET, Route, call_options
from ...registry import load_file
from .._args import Subparsers, add_registry, command_parser, seconds_arg
from .._flags import flag_source_problem, quiet_flag_logs
from .arguments import (
    ArgumentProblem,
    check_method,
    check_path,
    check_service,
    header_notes,
    max_body_arg,
    merge_headers,
    parse_header,
    parse_overrides,
    read_data,
)
from .outcome import Body, Outcome, as_json, print_text

__all__ = ["DEFAULT_MAX_BODY", "add_parser", "run"]

#: Bytes of the response body shown by default (``--max-body``).
DEFAULT_MAX_BODY: Final = 4096


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``mesh-client call``: 0 for a status below 400, 1 for a higher status or an error,
    2 for bad arguments, 3 when the route asked for was not the route taken."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        method = check_method(args.method)
        path = check_path(args.path)
        headers = [parse_header(h) for h in args.header or []]
        overrides = parse_overrides(args.override or [])
        data = read_data(args.data)
        config = load_file(args.registry)
        check_service(config, args.service)
    except ArgumentProblem as exc:
        print(f"mesh-client call: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"mesh-client call: invalid registry: {exc}", file=err)
        return 1
    for note in header_notes(config, headers):
        print(f"mesh-client call: note: {note}", file=err)

    call = Outcome(args.service, method, path)
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
        merged = merge_headers(headers)
        try:
            call.response = session.request(method, f"http://{args.service}{path}", headers=merged, data=data)
            call.info = call_info(call.response)
            content_type = call.response.headers.get("content-type", "")
            call.body = Body.of(call.response.content, content_type, args.max_body)
        except (requests.RequestException, MeshError) as exc:
            call.error = exc
            call.info = getattr(exc, "info", None)
    if args.json:
        print(json.dumps(as_json(call), indent=2), file=out)
    else:
        print_text(out, call, include=args.include)
    if route is not UNSET and call.info is not None and call.info.route is not route:
        why = call.info.route_reason.rsplit("; ", 1)[-1]
        print(
            f"mesh-client call: --route {route.value} was asked for, but the call went via {call.info.route.value} "
            f"({why})",
            file=err,
        )
        return 3
    return 0 if call.ok else 1


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


def add_parser(subparsers: Subparsers) -> None:
    """Register ``call`` on the ``mesh-client`` sub-command parsers."""
    p = command_parser(
        subparsers,
        "call",
        summary="make one call to a service through the mesh and show how it went (route, attempts, timing)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_registry(p)
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
        type=max_body_arg,
        default=DEFAULT_MAX_BODY,
        metavar="BYTES",
        help=f"show at most this many bytes of the body (default {DEFAULT_MAX_BODY}; 0: all)",
    )
    p.add_argument("-i", "--include", action="store_true", help="also print the response headers (text output)")
    p.set_defaults(run=run)
