"""The combined exceptions the requests wrapper raises: each is a mesh_client error *and* the
exception requests raised (see :mod:`mesh_client.errors`), defined here by name so that they
pickle by reference and can be imported in any process.

``MeshConnectError_ConnectTimeout`` is both :class:`~mesh_client.MeshConnectError` and
``requests.ConnectTimeout``, and so on for each pair a failed call can produce.
"""

from __future__ import annotations

import requests

from ..errors import DeadlineExceeded, MeshConnectError, MeshTimeoutError, MeshTransportError, combined

__all__ = [
    "DeadlineExceeded_Timeout",
    "MeshConnectError_ConnectTimeout",
    "MeshConnectError_ConnectionError",
    "MeshTimeoutError_ReadTimeout",
    "MeshTimeoutError_Timeout",
    "MeshTransportError_ChunkedEncodingError",
    "MeshTransportError_ConnectionError",
]


@combined
class MeshConnectError_ConnectionError(MeshConnectError, requests.ConnectionError): ...


@combined
class MeshConnectError_ConnectTimeout(MeshConnectError, requests.ConnectTimeout): ...


@combined
class MeshTimeoutError_ReadTimeout(MeshTimeoutError, requests.ReadTimeout): ...


@combined
class MeshTimeoutError_Timeout(MeshTimeoutError, requests.Timeout): ...


@combined
class DeadlineExceeded_Timeout(DeadlineExceeded, requests.Timeout): ...


@combined
class MeshTransportError_ConnectionError(MeshTransportError, requests.ConnectionError): ...


@combined
class MeshTransportError_ChunkedEncodingError(MeshTransportError, requests.exceptions.ChunkedEncodingError): ...
