"""The combined exceptions the Thrift client raises: each is a mesh_client error *and* the
exception a thriftpy2 client raises (see :mod:`mesh_client.errors`), defined here by name so
that they pickle by reference and can be imported in any process.

Timeouts are also the builtin ``TimeoutError`` (as thriftpy2's socket raises them), connection
failures thriftpy2's ``TTransportException``, and Envoy's own replies ``TApplicationException``.
"""

from __future__ import annotations

from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

from ..errors import (
    DeadlineExceeded,
    MeshConnectError,
    MeshTimeoutError,
    MeshTransportError,
    ThriftRoutingError,
    combined,
)

__all__ = [
    "DeadlineExceeded_TimeoutError",
    "MeshConnectError_TTransportException",
    "MeshTimeoutError_TimeoutError",
    "MeshTransportError_TTransportException",
    "ThriftRoutingError_TApplicationException",
]


@combined
class MeshTimeoutError_TimeoutError(MeshTimeoutError, TimeoutError): ...


@combined
class DeadlineExceeded_TimeoutError(DeadlineExceeded, TimeoutError): ...


@combined
class MeshConnectError_TTransportException(MeshConnectError, TTransportException): ...


@combined
class MeshTransportError_TTransportException(MeshTransportError, TTransportException): ...


@combined
class ThriftRoutingError_TApplicationException(ThriftRoutingError, TApplicationException): ...
