"""Thrift through the mesh: the client, the THeader transport, server helpers and marshalling.

- :class:`~mesh_client.thrift.client.ThriftClient` (made by ``mesh.thrift_client(...)``);
- :mod:`mesh_client.thrift.theader`: the THeader wire format (thriftpy2 has none);
- :mod:`mesh_client.thrift.server`: thriftpy2 servers that read the mesh context from THeader;
- :mod:`mesh_client.thrift.marshal`: structs to and from bytes (binary, compact).
"""

from .marshal import CONTENT_TYPE, deserialize, serialize
from .server import MeshProcessor, THeaderServerTransportFactory, make_server
from .theader import FrameError, HeaderFrame, decode_header_frame, encode_header_frame

__all__ = [
    "CONTENT_TYPE",
    "FrameError",
    "HeaderFrame",
    "MeshProcessor",
    "THeaderServerTransportFactory",
    "decode_header_frame",
    "deserialize",
    "encode_header_frame",
    "make_server",
    "serialize",
]
