"""The flag source as the commands see it: whether it loaded (and why not, in a few words), what
the flag file holds, and keeping the SDK's own log lines out of the commands' output.

Shared by ``route``, ``call`` and ``doctor``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import MeshConfig

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["flag_source_problem", "quiet_flag_logs", "read_flag_file", "rollout_without_kind"]


def read_flag_file(config: MeshConfig) -> tuple[str, str, str]:
    """(problem, summary, warning) about the flag file; an empty problem when it is usable."""
    path = config.flags.path
    assert path is not None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read flag file {path}: {exc.strerror or exc}", "", ""
    except UnicodeDecodeError as exc:
        return f"flag file {path} is not UTF-8 text ({exc})", "", ""
    except ValueError as exc:
        return f"flag file {path} is not valid JSON ({exc})", "", ""
    flags = data.get("flags", {}) if isinstance(data, dict) else None
    values = data.get("flagValues", {}) if isinstance(data, dict) else None
    if not isinstance(flags, dict) or not isinstance(values, dict):
        return f'flag file {path} is not LaunchDarkly flag data (an object with "flags" or "flagValues")', "", ""
    keys = set(flags) | set(values)
    ours = [config.flags.key_for(s) for s in config.services]
    found = [k for k in ours if k in keys]
    summary = (
        f"flag file {path}: valid JSON, {len(keys)} flag(s), route flags for {len(found)} of {len(ours)} service(s)"
    )
    bad = [k for k in found if k in flags and rollout_without_kind(flags[k])]
    warning = (
        f'{", ".join(bad)}: a rollout without "contextKind": "service" (every caller lands in the same bucket)'
        if bad
        else ""
    )
    return "", summary, warning


def rollout_without_kind(flag: object) -> bool:
    """Whether a flag's rollout buckets by something other than the caller service's name."""
    if not isinstance(flag, dict):
        return False
    rollouts = [flag.get("fallthrough", {}).get("rollout")]
    rollouts += [rule.get("rollout") for rule in flag.get("rules", []) if isinstance(rule, dict)]
    return any(isinstance(r, dict) and r.get("contextKind") != "service" for r in rollouts)


def flag_source_problem(config: MeshConfig, mesh: Mesh, said: list[str] | None = None) -> str:
    """Why ``mesh``'s flag source did not load, in a few words ('' when it loaded, or when the
    registry has none); ``said`` holds the SDK's error messages from :func:`quiet_flag_logs`."""
    flags = config.flags
    if flags.source == "none":
        return ""
    if flags.source == "launchdarkly" and not os.environ.get(flags.sdk_key_env):
        return f"flags.source is 'launchdarkly' but ${flags.sdk_key_env} is empty"
    client = mesh.flag_client
    if client is not None and client.is_initialized():
        return ""
    if flags.source == "file":
        problem = read_flag_file(config)[0]
        if problem:
            return problem
    where = f"flag file {flags.path}" if flags.source == "file" else "LaunchDarkly"
    text = f"the LaunchDarkly client did not initialise from {where} within flags.start_wait ({flags.start_wait:g} s)"
    return text + (f" ({said[0]})" if said else "")


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ldclient") and record.levelno >= logging.ERROR:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet_flag_logs() -> Iterator[list[str]]:
    """The commands report flag trouble themselves: keep the library's and the SDK's log lines (and
    the tracebacks the SDK prints) out of their output; yields the SDK's error messages."""
    handler = _Captured()
    saved = []
    for name in ("mesh_client", "ldclient"):
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(handler)
        lg.propagate = False
        if lg.level == logging.NOTSET or lg.level > logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield handler.messages
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
