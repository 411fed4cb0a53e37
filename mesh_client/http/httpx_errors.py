"""The combined exceptions the httpx transports raise: each is a mesh_client error *and* the
exception httpx raised (see :mod:`mesh_client.errors`), defined here by name so that they pickle
by reference and can be imported in any process.

``MeshConnectError_ConnectTimeout`` is both :class:`~mesh_client.MeshConnectError` and
``httpx.ConnectTimeout``, and so on for each pair a failed call can produce.
"""

from __future__ import annotations

import httpx

from ..errors import DeadlineExceeded, MeshConnectError, MeshTimeoutError, MeshTransportError, combined

__all__ = [
    "DeadlineExceeded_TimeoutException",
    "MeshConnectError_ConnectError",
    "MeshConnectError_ConnectTimeout",
    "MeshTimeoutError_PoolTimeout",
    "MeshTimeoutError_ReadTimeout",
    "MeshTimeoutError_TimeoutException",
    "MeshTimeoutError_WriteTimeout",
    "MeshTransportError_CloseError",
    "MeshTransportError_ReadError",
    "MeshTransportError_RemoteProtocolError",
    "MeshTransportError_WriteError",
]


@combined
class MeshConnectError_ConnectError(MeshConnectError, httpx.ConnectError): ...


@combined
class MeshConnectError_ConnectTimeout(MeshConnectError, httpx.ConnectTimeout): ...


@combined
class MeshTimeoutError_ReadTimeout(MeshTimeoutError, httpx.ReadTimeout): ...


@combined
class MeshTimeoutError_WriteTimeout(MeshTimeoutError, httpx.WriteTimeout): ...


@combined
class MeshTimeoutError_PoolTimeout(MeshTimeoutError, httpx.PoolTimeout): ...


@combined
class MeshTimeoutError_TimeoutException(MeshTimeoutError, httpx.TimeoutException): ...


@combined
class DeadlineExceeded_TimeoutException(DeadlineExceeded, httpx.TimeoutException): ...


@combined
class MeshTransportError_ReadError(MeshTransportError, httpx.ReadError): ...


@combined
class MeshTransportError_WriteError(MeshTransportError, httpx.WriteError): ...


@combined
class MeshTransportError_CloseError(MeshTransportError, httpx.CloseError): ...


@combined
class MeshTransportError_RemoteProtocolError(MeshTransportError, httpx.RemoteProtocolError): ...
