"""``mesh-client doctor MESH.toml``: does this machine's mesh match its registry?

Each check prints one line: a verdict, the check's name, what was found and, when the verdict is
not ``OK``, the fix. In order:

1. ``registry``: the registry loads (else the :class:`~mesh_client.ConfigError` message; nothing
   else is checked).
2. ``envoy admin`` (only with ``mesh.envoy_admin``): the admin endpoint answers; Envoy's version.
3. ``envoy egress``: the HTTP egress address ``mesh.envoy_http`` accepts connections.
4. ``envoy vhost NAME``, per HTTP service: a ``GET`` through Envoy with ``Host: <envoy_host>``
   reaches the service. Envoy's 404 with an empty body (``no_route``) means ``envoy_host`` matches
   none of Envoy's domains.
5. ``envoy headers``: Envoy honours the client's ``x-envoy-*`` headers (see below).
6. ``envoy reporting`` (with HTTP services): the virtual hosts of the HTTP services set
   ``include_attempt_count_in_response`` (without it ``call_info().attempts`` stays 1 and the retry
   budget charges every retryable answer all the retries Envoy was allowed) and
   ``include_request_attempt_count``, and the router filter does not set ``suppress_envoy_headers``;
   read from ``/config_dump`` (RDS route configurations included), else judged by whether Envoy's
   answers in check 4 carried ``x-envoy-attempt-count``. Missing settings are a ``WARN``.
   ``envoy variants`` (only with HTTP services that declare variants, and ``mesh.envoy_admin``):
   each variant's virtual host routes ``x-mesh-variant: VARIANT`` ahead of its default route (else
   calls steered to it by a routing override reach the main deployment: ``FAIL``).
7. ``envoy thrift`` (only with Thrift services): the Thrift listener accepts connections.
8. ``haproxy NAME``, per service: the service's HAProxy port accepts connections (and, for HTTP
   services, answers a ``GET``).
9. ``flags``: the flag source loads (the flag file is readable, valid JSON, and LaunchDarkly's file
   data source loaded it; or the LaunchDarkly client initialised within ``flags.start_wait``).
10. ``route NAME``, per service: what the flags decide now (:meth:`Mesh.route_for`), and why.

Verdicts: ``OK``; ``WARN`` (calls work, but something is off or could not be proven); ``FAIL``
(calls go wrong, or will); ``SKIP`` (not checked because a check it needs failed). The exit code
is 1 when any check failed, else 0. Every network step has a timeout (``--timeout``, default 2 s;
the LaunchDarkly client waits ``flags.start_wait``), so the command never hangs.

How the header check decides
----------------------------

Envoy applies ``x-envoy-*`` request headers only to requests it treats as internal; on other
requests it removes them silently, and calls lose their timeouts and retries without any error.
Two kinds of evidence:

- **The listener config** (with ``mesh.envoy_admin``; decisive): from ``GET /config_dump``, the
  listener bound to ``mesh.envoy_http`` must have an HTTP connection manager with
  ``use_remote_address: true`` and an ``internal_address_config`` whose ``cidr_ranges`` cover the
  address this machine connects from (127.0.0.1 for a loopback sidecar); Envoy's bootstrap
  ``header_prefix`` must equal ``mesh.header_prefix``.
- **Probes** through Envoy to one registered HTTP service (``GET --path``, default ``/``), which
  need no slow path on the service:

  - when the route reports attempt counts (``x-envoy-attempt-count`` in responses, as in the
    rendered bootstrap): ask Envoy to retry the very status the service just answered
    (``retry-on: retriable-status-codes`` with that status, ``max-retries: 1``). An answer after
    2 attempts proves the headers were honoured; after 1 attempt with the same status, that they
    were removed. This sends the ``GET`` to the service twice.
  - otherwise (or when that was inconclusive): up to 3 requests with
    ``upstream-rq-timeout-ms: 1`` and ``upstream-rq-timeout-alt-response: 204``. Envoy's own
    204 with no ``x-envoy-upstream-service-time`` proves both headers were honoured; Envoy's 504
    ``upstream request timeout`` proves the alternative response was ignored (so were the
    others). An answer from the service proves nothing when it took about 1 ms or less (a fast
    service beats the 1 ms timer); a much slower answer means the timeout was probably ignored.

  Limits: a probe proves what Envoy did with *this* request at *this* moment. It cannot tell a
  header removed by Envoy from one removed by a proxy in between, and Envoy versions before 1.36
  treated private addresses as internal even without ``internal_address_config``, so a probe may
  succeed there while the config check warns.

Both kinds together: any probe showing the headers were removed fails the check; a config
problem fails it unless a probe proved the headers honoured (then it warns); without the config
(no ``mesh.envoy_admin``) and without a conclusive probe, the check warns.
Where the code lives, one module per concern: :mod:`.context` (the result type and the run's
shared state), :mod:`.network` (bounded network steps), :mod:`.envoy_config` (reading and searching
Envoy's ``/config_dump``), the checks (:mod:`.envoy_checks`, :mod:`.header_check`,
:mod:`.reporting_check`, :mod:`.variants_check`, :mod:`.haproxy_check`, :mod:`.flag_checks`),
:mod:`.checks` (their order, :func:`diagnose`) and :mod:`.report` (what the command prints).
"""

from __future__ import annotations

import argparse

from .._args import Subparsers, add_registry, command_parser, seconds_arg
from .checks import diagnose
from .context import DEFAULT_TIMEOUT, Check, exit_code
from .report import run

__all__ = ["DEFAULT_TIMEOUT", "Check", "add_parser", "diagnose", "exit_code", "probe_path_arg", "run"]


def probe_path_arg(text: str) -> str:
    """An argparse type for ``--path``: a path starting with '/', without spaces."""
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"must be a path starting with '/' and without spaces, got {text!r}")
    return text


DESCRIPTION = """\
Checks that this machine's mesh matches the registry: the registry loads; Envoy's admin
endpoint answers (with mesh.envoy_admin); Envoy's HTTP egress accepts connections; every HTTP
service's virtual host routes (GET --path with Host: envoy_host); Envoy honours the client's
x-envoy-* headers (the listener config from /config_dump, and probes through Envoy); which
settings that make Envoy report attempts are missing (include_attempt_count_in_response,
include_request_attempt_count); Envoy's Thrift listener accepts connections (with Thrift
services); every service's HAProxy port accepts connections; the flag source loads; and what
each service routes to now.
One line per check: OK, WARN, FAIL or SKIP (not checked because a check it needs failed),
and the fix when it is not OK.
"""

EPILOG = """\
the header probes send GET --path to one HTTP service through Envoy (up to 3 times with a 1 ms
timeout; twice when Envoy reports attempt counts, to ask for one retry): use a path that is
cheap and safe to call.

exit codes:
  0    no check failed (warnings allowed)
  1    at least one check failed (an invalid registry is a failed check)
  2    bad arguments
"""


def add_parser(subparsers: Subparsers) -> None:
    """Register ``doctor`` on the ``mesh-client`` sub-command parsers."""
    p = command_parser(
        subparsers,
        "doctor",
        summary="check that Envoy, HAProxy and the flags on this machine match a registry",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    add_registry(p)
    p.add_argument(
        "--timeout",
        type=seconds_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds each network step may take (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--path",
        type=probe_path_arg,
        default="/",
        help="the path to GET through Envoy and HAProxy (default /); it must be safe to call",
    )
    p.set_defaults(run=run)
