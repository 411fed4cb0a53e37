"""Running a thriftpy2 processor inside each request's mesh context: :class:`MeshProcessor` reads
the request's THeader headers (through :class:`~mesh_client.thrift.server_transport.THeaderServerTransport`)
and answers an undeclared handler exception with a ``TApplicationException``."""

from __future__ import annotations

import contextvars
import logging
from typing import TYPE_CHECKING, Any

from thriftpy2.thrift import TApplicationException

from ..context import begin_request
from .server_transport import THeaderServerTransport

if TYPE_CHECKING:
    from ..mesh import Mesh

__all__ = ["MeshProcessor"]

#: the log of every part of the Thrift server (the name the docs give)
logger = logging.getLogger("mesh_client.thrift.server")


class MeshProcessor:
    """Wrap a thriftpy2 ``TProcessor`` so each request runs in its inbound mesh context.

    For every message: read the request frame (when the transport is a
    :class:`THeaderServerTransport`; other transports give no headers), enter
    :func:`mesh_client.context.begin_request` with the lower-cased headers (deadline, request id,
    trace context, allowlisted context headers), run the wrapped processor, and leave the
    context afterwards, also when the handler raises.

    A handler exception the IDL does not declare is logged and answered with a
    ``TApplicationException`` INTERNAL_ERROR (thriftpy2's own processor would close the
    connection without a reply), so the caller learns the call reached the server and failed.
    """

    def __init__(self, processor: Any, mesh: Mesh) -> None:
        self.processor = processor
        self.mesh = mesh

    def process(self, iprot: Any, oprot: Any) -> None:
        trans = iprot.trans
        if isinstance(trans, THeaderServerTransport):
            trans.read_frame()
            headers = {key.lower(): value for key, value in trans.headers.items()}
        else:
            headers = {}
        config = self.mesh.config
        ctx = contextvars.copy_context()
        end = ctx.run(
            begin_request,
            headers,
            header_prefix=config.header_prefix,
            context_headers=config.context_headers,
            overrides=config.overrides,
        )
        try:
            ctx.run(self._process, iprot, oprot)
        finally:
            ctx.run(end)

    def _process(self, iprot: Any, oprot: Any) -> None:
        processor = self.processor
        if not hasattr(processor, "process_in"):  # not a thriftpy2 TProcessor: run it as it is
            processor.process(iprot, oprot)
            return
        # TProcessor.process, except that an undeclared exception from the handler is answered
        # with TApplicationException INTERNAL_ERROR (as Apache Thrift servers do) instead of
        # closing the connection without a reply
        api, seqid, result, call = processor.process_in(iprot)
        if isinstance(result, TApplicationException):
            processor.send_exception(oprot, api, result, seqid)
            return
        try:
            result.success = call()
        except TApplicationException as exc:
            processor.send_exception(oprot, api, exc, seqid)
            return
        except Exception as exc:
            if not processor.handle_exception(exc, result):
                logger.exception("the Thrift handler of %r raised", api)
                if not result.oneway:
                    error = TApplicationException(
                        TApplicationException.INTERNAL_ERROR, f"internal error in {api} ({type(exc).__name__})"
                    )
                    processor.send_exception(oprot, api, error, seqid)
                return
        if not result.oneway:
            processor.send_result(oprot, api, result, seqid)
