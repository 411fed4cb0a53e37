"""Every doctor check, in order, over one :class:`~.context.Context`: :func:`diagnose`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ...errors import ConfigError
from ...registry import MeshConfig, load_file
from .context import DEFAULT_TIMEOUT, Check, Context
from .envoy_checks import check_admin, check_egress, check_thrift, check_vhosts
from .flag_checks import check_flags
from .haproxy_check import check_haproxy
from .header_check import check_headers
from .reporting_check import check_reporting
from .variants_check import check_variants

__all__ = ["check_registry", "diagnose"]


def check_registry(ctx: Context) -> MeshConfig | None:
    """``registry``: the registry loads (None when it does not: nothing else is checked), and a
    ``services`` warning when it has none."""
    try:
        config = load_file(ctx.registry)
    except ConfigError as exc:
        if exc.key is not None:
            fix = f"correct {exc.key} in {ctx.registry} (docs/registry.md lists every key)"
        elif not os.access(ctx.registry, os.R_OK) or not Path(ctx.registry).is_file():
            fix = "pass the path of a registry TOML file this user can read (docs/registry.md)"
        else:
            fix = "correct the file where the message says (docs/registry.md describes the format)"
        ctx.check("registry", "FAIL", str(exc), fix)
        return None
    services = ", ".join(f"{s.name} ({s.protocol})" for s in config.services.values()) or "none"
    flags = config.flags
    source = {"file": f"flag file {flags.path}", "launchdarkly": "LaunchDarkly", "none": "none"}[flags.source]
    ctx.check("registry", "OK", f"{ctx.registry}: caller {config.caller}; services {services}; flag source: {source}")
    if not config.services:
        ctx.check("services", "WARN", "the registry has no [services.NAME] table", "add the services you call")
    return config


def diagnose(
    registry: str | Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    path: str = "/",
    emit: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check on the registry at ``registry``; ``emit`` sees each result as it is made."""
    ctx = Context(str(registry), timeout, path, emit or (lambda check: None))
    config = check_registry(ctx)
    if config is None:
        return ctx.checks
    admin = check_admin(ctx, config)
    source_ip = check_egress(ctx, config)
    routed = check_vhosts(ctx, config, source_ip is not None, admin)
    check_headers(ctx, config, admin, source_ip, routed)
    check_reporting(ctx, config, admin, routed)
    check_variants(ctx, config, admin)
    check_thrift(ctx, config)
    check_haproxy(ctx, config)
    check_flags(ctx, config)
    return ctx.checks
