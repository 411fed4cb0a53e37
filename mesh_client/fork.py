"""Fork safety: what a child process resets in the mesh objects it inherits, with no user code.

A process that builds a :class:`~mesh_client.Mesh` and its clients and then forks (gunicorn
``--preload``, uWSGI without ``lazy-apps``, ``multiprocessing`` with the fork start method, Celery
prefork) hands the child copies of objects whose threads did not survive the fork and whose pooled
connections the parent goes on using. One ``os.register_at_fork(after_in_child=...)`` hook,
registered when this module is imported, calls the reset registered for each live object with
:func:`reset_in_child` (objects are held weakly: registering keeps nothing alive). Nothing runs
per call.

Each reset runs in the child only, right after the fork, while the child has a single thread. It
replaces the object's locks (another thread of the parent may have held one at the instant of the
fork) and forgets what must not be shared; it never sends anything on an inherited socket (a
socket the parent also holds is only closed in the child, which leaves the parent's copy open).
A reset that fails is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["reset_in_child"]

log = logging.getLogger("mesh_client.fork")

_T = TypeVar("_T")

#: live object -> what the child does to it
_resets: weakref.WeakKeyDictionary[Any, Callable[[Any], None]] = weakref.WeakKeyDictionary()


def reset_in_child(obj: _T, reset: Callable[[_T], None]) -> _T:
    """Have every child forked from now on call ``reset(obj)`` right after the fork (while ``obj``
    lives); returns ``obj``."""
    _resets[obj] = reset
    return obj


def _after_fork_in_child() -> None:
    for obj, reset in list(_resets.items()):
        try:
            reset(obj)
        except Exception:
            log.exception("mesh_client: resetting %r in the forked child failed", obj)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
