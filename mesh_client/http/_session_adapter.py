"""``MeshSession.get_adapter``: mesh URLs always to the session's mesh adapter, whatever is set
on the session instance.

Mocking libraries replace a session's ``get_adapter`` on the instance (requests-mock sets its
own while it sends, then sets ``requests.Session.get_adapter`` back: an instance attribute, which
would hide the class's method for good and take every later mesh call out of the mesh). As a
data descriptor, this one stays in charge: what is set on an instance chooses the adapter of
every other URL, and deleting it (or setting this getter back) restores requests' own choice.
"""

from __future__ import annotations

import types
from typing import Any

import requests

__all__ = ["MeshFirstGetAdapter"]

#: where a session keeps a get_adapter set on it (for URLs that are not mesh calls)
_OTHER: str = "_mesh_client_other_get_adapter"


class MeshFirstGetAdapter:
    """A data descriptor standing for ``get_adapter`` (see the module docs)."""

    owner: type

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner = owner

    def _choose(self, session: Any, url: str) -> requests.adapters.BaseAdapter:
        known = session._mesh_urls.get(url)  # (as MeshSession asks)
        if known or (known is None and session._is_mesh_url(url)):
            mesh_adapter: requests.adapters.BaseAdapter = session.mesh_adapter
            return mesh_adapter
        other = session.__dict__.get(_OTHER)
        if other is not None:
            chosen: requests.adapters.BaseAdapter = other(url)
            return chosen
        owner: Any = self.owner  # requests' own choice, through the class this getter is on
        base: requests.adapters.BaseAdapter = super(owner, session).get_adapter(url)  # type: ignore[misc]
        return base

    def __get__(self, session: Any, owner: type | None = None) -> Any:
        if session is None:
            return self
        return types.MethodType(self._choose, session)

    def __set__(self, session: Any, value: Any) -> None:
        if isinstance(value, types.MethodType) and value.__func__ == self._choose:
            session.__dict__.pop(_OTHER, None)  # (this getter itself, set back)
        else:
            session.__dict__[_OTHER] = value

    def __delete__(self, session: Any) -> None:
        session.__dict__.pop(_OTHER, None)
