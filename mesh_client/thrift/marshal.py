"""Thrift structs to and from bytes, so Thrift payloads can also travel over the HTTP clients.

::

    body = serialize(user)                                   # binary protocol
    session.post("http://users/v1/users", data=body, headers={"content-type": CONTENT_TYPE})
    user = deserialize(users_thrift.User, response.content)

``protocol`` is ``"binary"`` (strict binary, the default) or ``"compact"``.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeVar

import thriftpy2.protocol
import thriftpy2.utils

from .reading import binary_reader

__all__ = ["CONTENT_TYPE", "deserialize", "serialize"]

#: The media type for a Thrift payload over HTTP.
CONTENT_TYPE: Final = "application/x-thrift"

Protocol = Literal["binary", "compact"]
T = TypeVar("T")
_protocol: Any = thriftpy2.protocol
_utils: Any = thriftpy2.utils


def _factory(protocol: str) -> Any:
    if protocol == "binary":
        return _protocol.TBinaryProtocolFactory()
    if protocol == "compact":
        return _protocol.TCompactProtocolFactory()
    raise ValueError(f"protocol must be 'binary' or 'compact', got {protocol!r}")


def serialize(struct: Any, protocol: Protocol = "binary") -> bytes:
    """The bytes of a thriftpy2 struct (or exception) in ``protocol``."""
    if not hasattr(struct, "thrift_spec"):
        raise TypeError(f"{struct!r} is not a thriftpy2 struct")
    return bytes(_utils.serialize(struct, _factory(protocol)))


def deserialize(struct: type[T] | T, data: bytes, protocol: Protocol = "binary") -> T:
    """A struct read from ``data``: pass the struct class (a new instance is filled) or an instance.

    Raises ``ValueError`` naming the struct when ``data`` is not a valid encoding of it.
    """
    target: Any = struct() if isinstance(struct, type) else struct
    if not hasattr(target, "thrift_spec"):
        raise TypeError(f"{struct!r} is not a thriftpy2 struct")
    try:
        if protocol == "binary":  # a reader that fails on short input (see mesh_client.thrift.reading)
            target.read(binary_reader(bytes(data)))
            result: T = target
        else:
            result = _utils.deserialize(target, bytes(data), _factory(protocol))
    except Exception as exc:
        raise ValueError(f"not a valid {protocol} {type(target).__name__}: {exc}") from None
    return result
