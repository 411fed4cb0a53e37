"""Thrift clients routed through the mesh: Envoy's ``thrift_proxy`` or the service's HAProxy port.

``mesh.thrift_client(users_thrift.Users, "users-thrift")`` returns a :class:`ThriftClient` with the
methods of the thriftpy2 service. Each call:

- is planned by :mod:`mesh_client.core` like an HTTP call (flag, deadline, policy), with the client
  enforcing timeouts and retries on **both** routes: Envoy's thrift_proxy has neither;
- is retried only for ``idempotent_methods`` (or when nothing can have been sent);
- carries ``x-request-id``, the OpenTelemetry fields, ``x-mesh-timeout-ms`` and the registry's
  context headers as THeader headers when the service uses ``transport = "header"`` (plain framed
  Thrift has nowhere to put them);
- checks the sequence id of every reply, and never reuses a connection after a timeout, a
  transport error or an error reply (thriftpy2's own client would return a previous call's reply).

Envoy routes framed calls by a service-name prefix (``users-thrift:get``, stripped before the
server sees it) and header calls by the ``x-mesh-service`` header; see
:func:`mesh_client.sidecar.render.envoy_bootstrap`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TTransportException

from .._compat.thriftpy2 import call_kwargs
from ..context import MESH_SERVICE_HEADER
from ..driving import drive
from ..errors import (
    MeshConnectError,
    MeshTimeoutError,
    MeshTransportError,
    ThriftRoutingError,
    as_mesh_error,
    raise_failure,
)
from ..fork import reset_in_child
from ..policy import Route
from ..registry import Address, ServiceConfig
from ..shadow.answers import shadow_thrift
from ..steps import Attempt, Broken, Done, Fail, Failure, Responded
from ..variants import framed_service_name
from ..wire import ThriftCall, Wire, WireFailure, WireRequest, current_wire
from ..wrapping import CallStarter
from . import errors as _errors  # noqa: F401 - registers the combined exceptions raised here
from .pool import Pool, PoolExhausted
from .theader import FrameError, encode_framed, encode_header_frame, header_frame_parts

if TYPE_CHECKING:
    from ..core import CallRun

__all__ = ["ThriftClient"]

DEFAULT_MAX_CONNECTIONS: Final = 32
_ENVOY: Final = Route.ENVOY
_CALL: Final = TMessageType.CALL
_ONEWAY: Final = TMessageType.ONEWAY
_EXCEPTION: Final = TMessageType.EXCEPTION

#: Envoy thrift_proxy's own error replies: (TApplicationException type, message start, kind,
#: status-like code). The codes only feed the shared retry rules; callers see exceptions.
_ENVOY_REPLIES: Final = (
    (TApplicationException.INTERNAL_ERROR, "no healthy upstream for '", "no_healthy_upstream", 503),
    # also when the server read the call and then closed the connection: ambiguous
    (TApplicationException.INTERNAL_ERROR, "connection failure", "upstream_reset", 503),
    (TApplicationException.UNKNOWN_METHOD, "no route for method '", "no_route", 404),
    (TApplicationException.INTERNAL_ERROR, "unknown cluster '", "no_cluster", 503),
    (TApplicationException.INTERNAL_ERROR, "maintenance mode for cluster '", "overloaded", 503),
    (TApplicationException.INTERNAL_ERROR, "thrift upstream request: too many connections", "overloaded", 503),
)
#: whether an Envoy reply of that kind proves the call never reached the server
_NOT_DELIVERED: Final = {"no_healthy_upstream": True, "no_route": True, "no_cluster": True, "overloaded": True}


class _Method:
    """What every call of one service method shares, worked out on its first call (kept per
    client: the IDL bounds the methods)."""

    __slots__ = ("api", "args_cls", "envoy_name", "oneway", "result_cls", "spec")

    def __init__(self, service: Any, api: str, service_name: str) -> None:
        self.api = api
        self.args_cls = getattr(service, api + "_args")
        self.spec = self.args_cls.thrift_spec
        self.result_cls = getattr(service, api + "_result")
        self.oneway = bool(getattr(self.result_cls, "oneway", False))
        #: the name framed calls send through Envoy: the service as a multiplex prefix, which
        #: Envoy strips
        self.envoy_name = f"{service_name}:{api}"


def _keep(reply: Any) -> None:
    """A Thrift reply holds nothing to release when it is retried."""


class _Reply:
    """A decoded reply: the result struct, or a TApplicationException."""

    __slots__ = ("error", "result")

    def __init__(self, result: Any = None, error: TApplicationException | None = None) -> None:
        self.result = result
        self.error = error


def _classify_envoy_reply(error: TApplicationException) -> tuple[str, int] | None:
    """(kind, code) when ``error`` has the exact shape of one of Envoy's own replies."""
    message = str(getattr(error, "message", "") or "")
    for error_type, start, kind, status in _ENVOY_REPLIES:
        if error.type == error_type and message.startswith(start):
            return kind, status
    return None


def _native_error(error: type[MeshTransportError], message: str) -> BaseException:
    """The class a thriftpy2 client raises: the builtin TimeoutError for timeouts, else a
    TTransportException (the socket error stays visible as the cause)."""
    if issubclass(error, MeshTimeoutError):
        return TimeoutError("timed out")
    if issubclass(error, MeshConnectError):
        return TTransportException(TTransportException.NOT_OPEN, message)
    return TTransportException(TTransportException.END_OF_FILE, message)


class ThriftClient:
    """A thriftpy2-style client for one Thrift service of the mesh. Thread-safe.

    Call the service's methods on it as on ``thriftpy2.rpc.make_client(...)``. ``close()`` (or a
    ``with`` block) closes its connections.
    """

    def __init__(
        self,
        mesh: CallStarter,
        service: Any,
        config: ServiceConfig,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._mesh = mesh
        self._service = service
        self._config = config
        self._header = config.transport == "header"
        self._max_connections = max_connections
        self._pools: dict[Address, Pool] = {}
        #: (address, its pool) of the last attempt: the usual next one goes to the same address
        self._last_pool: tuple[Address, Pool] | None = None
        self._pools_lock = threading.Lock()
        self._methods: dict[str, _Method] = {}
        reset_in_child(self, ThriftClient._after_fork)

    # -- the thriftpy2 client surface --------------------------------------------------------------

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in self._service.thrift_services:
            return functools.partial(self._call, name)
        if name == "tclose":  # thriftpy2's spelling for a service method named "close"
            return functools.partial(self._call, "close")
        raise AttributeError(f"{self._service.__name__} has no method {name!r}")

    def __dir__(self) -> list[str]:
        return [*self._service.thrift_services, "close"]

    def close(self) -> None:
        """Close every pooled connection (calls still in flight finish on theirs)."""
        with self._pools_lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`mesh_client.fork`): new pools and lock; the parent's
        connections are never used here."""
        pools, self._pools = self._pools, {}
        self._last_pool = None
        self._pools_lock = threading.Lock()
        for pool in pools.values():
            pool.forget()

    def __enter__(self) -> ThriftClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- one call ----------------------------------------------------------------------------------

    def _call(self, api: str, *args: Any, **kwargs: Any) -> Any:
        service = self._service
        method = self._methods.get(api)
        if method is None:
            method = self._methods.setdefault(api, _Method(service, api, self._config.name))
        try:
            fields = call_kwargs(method.spec, *args, **kwargs)
        except ValueError as exc:  # as thriftpy2's TClient does
            raise TApplicationException(
                TApplicationException.UNKNOWN_METHOD,
                f"{exc.args[0]} is required argument for {service.__name__}.{api}",
            ) from None
        call_args = method.args_cls(**fields)
        run = self._mesh.start_call(self._config, api, None, True, service)  # (positional: extra, replayable, source)
        wire = current_wire()
        # one attempt: send(attempt) (a partial, not a closure: one Python call an attempt fewer)
        if wire is None:
            send = functools.partial(self._attempt, method, run, call_args)
        else:
            send = functools.partial(self._over_wire, wire, method, run, call_args)
        result = drive(run, send, _keep)
        if run.shadow is not None:  # a copy down the other route, compared off this thread
            oneway = method.oneway
            again = None if oneway else functools.partial(self._call, api, *args, **kwargs)
            return shadow_thrift(run.shadow, result, lambda: self._outcome_of(result, api, oneway), again, api)
        if isinstance(result, Done) and result.response.error is None and not method.oneway:
            success = getattr(result.response.result, "success", None)
            if success is not None:  # (the usual reply: _outcome_of's first answer, inline)
                return success
        return self._outcome_of(result, api, method.oneway)

    def _outcome_of(self, result: Done[_Reply] | Fail, api: str, oneway: bool) -> Any:
        """What the call returns (or raises): its result, or the error."""
        if not isinstance(result, Done):
            raise_failure(result, _native_error, keep_cause=False)
        reply: _Reply = result.response
        if reply.error is not None:
            self._raise_error_reply(reply.error, result.info, api)
        if oneway:
            return None
        success = getattr(reply.result, "success", None)
        if success is not None:  # (the usual reply)
            return success
        return self._unpack(reply.result)

    def _raise_error_reply(self, error: TApplicationException, info: Any, api: str) -> None:
        envoy = _classify_envoy_reply(error) if info.route is _ENVOY else None
        if envoy is None:
            raise error  # the server's own TApplicationException, as thriftpy2 raises it
        kind = envoy[0]
        delivered = not _NOT_DELIVERED.get(kind, False)
        where = "may have reached the server" if delivered else "did not reach the server"
        message = (
            f"{self._config.name}.{api} via Envoy at {self._mesh.config.envoy_thrift}: Envoy answered "
            f"{error.message!r} ({kind}); the call {where}"
        )
        err = as_mesh_error(ThriftRoutingError, error, message, info)
        assert isinstance(err, ThriftRoutingError)
        err.kind = kind
        err.may_have_reached_server = delivered
        setattr(err, "message", message)  # noqa: B010 - TApplicationException prints its message field
        raise err from None

    @staticmethod
    def _unpack(result: Any) -> Any:
        """A result struct's value (its ``success`` field) or the exception it holds."""
        if getattr(result, "success", None) is not None:
            return result.success
        if len(result.thrift_spec) == 0:  # void without throws
            return None
        for name, value in result.__dict__.items():
            if name != "success" and value:
                raise value  # a declared exception, as thriftpy2 raises it
        if hasattr(result, "success"):
            raise TApplicationException(TApplicationException.MISSING_RESULT)
        return None

    def _pool(self, address: Address) -> Pool:
        last = self._last_pool
        if last is not None and last[0] is address:
            return last[1]
        pool = self._pools.get(address)
        if pool is None:
            with self._pools_lock:
                pool = self._pools.setdefault(address, Pool(address, self._max_connections))
        self._last_pool = (address, pool)
        return pool

    def _attempt(
        self, method: _Method, run: CallRun[_Reply], call_args: Any, attempt: Attempt
    ) -> Responded[_Reply] | Broken:
        """One attempt over a pooled connection: send the call, read and check its reply."""
        until = time.monotonic() + attempt.timeout
        address = attempt.address
        last = self._last_pool
        pool = last[1] if last is not None and last[0] is address else self._pool(address)
        try:
            conn = pool.acquire(until)
        except PoolExhausted as exc:
            return Broken(Failure.TIMEOUT, exc, str(exc))
        except TimeoutError as exc:
            return Broken(Failure.CONNECT, exc, "connect timeout")
        except OSError as exc:
            return Broken(Failure.CONNECT, exc, exc.strerror or type(exc).__name__)
        reusable = False
        try:
            seqid = conn.next_seqid()
            oneway = method.oneway
            buf, proto = conn.writer()
            if attempt.route is _ENVOY and not self._header:  # (see _wire_name)
                name = method.envoy_name if run.variant is None else self._wire_name(attempt, method, run.variant)
            else:
                name = method.api
            proto.write_message_begin(name, _ONEWAY if oneway else _CALL, seqid)
            call_args.write(proto)
            proto.write_message_end()
            payload = bytes(buf.getvalue())
            if self._header:
                frame = encode_header_frame(payload, seqid=seqid, headers=self._theader_headers(attempt))
            else:
                frame = encode_framed(payload)
            try:
                body = conn.exchange(frame, until, oneway)
            except TimeoutError as exc:
                return Broken(Failure.TIMEOUT, exc, "no reply in time")
            except FrameError as exc:
                return Broken(Failure.RESET, exc, str(exc))
            except OSError as exc:
                return Broken(Failure.RESET, exc, exc.strerror or str(exc) or type(exc).__name__)
            if body is None:
                reusable = True
                return Responded(_Reply(), 200, {})
            try:
                reply = self._decode_reply(conn.reader, body, seqid, method.result_cls)
            except (FrameError, _StaleReply) as exc:
                return Broken(Failure.RESET, exc, str(exc))
            if reply.error is None:  # (the usual reply)
                reusable = True
                return Responded(reply, 200, {})
            return self._outcome(reply, attempt.route is _ENVOY)
        finally:
            pool.release(conn, reusable)

    def _wire_name(self, attempt: Attempt, method: _Method, variant: str | None) -> str:
        """The method name as sent: framed calls through Envoy carry the service as a multiplex
        prefix, which Envoy strips (``users~canary:get`` for a variant a routing override chose)."""
        if attempt.route is not _ENVOY or self._header:
            return method.api
        if variant is None:
            return method.envoy_name
        return f"{framed_service_name(self._config.name, variant)}:{method.api}"

    def _theader_headers(self, attempt: Attempt) -> list[tuple[str, str]]:
        headers = []
        for key, value in attempt.set_headers:  # (a loop: a comprehension is one call more)
            name = key.lower()
            if name != "host":
                headers.append((name, value))
        if attempt.route is _ENVOY:
            headers.append((MESH_SERVICE_HEADER, self._config.name))
        return headers

    @staticmethod
    def _outcome(reply: _Reply, envoy_route: bool) -> Responded[_Reply]:
        if reply.error is None:
            return Responded(reply, 200, {})
        envoy = _classify_envoy_reply(reply.error) if envoy_route else None
        if envoy is None:
            return Responded(reply, 500, {})
        return Responded(reply, envoy[1], {}, proxy_error=envoy[0])

    def _over_wire(
        self, wire: Wire, method: _Method, run: CallRun[_Reply], call_args: Any, attempt: Attempt
    ) -> Responded[_Reply] | Broken:
        """One attempt over an installed :class:`~mesh_client.wire.Wire` (a fake mesh)."""
        api, oneway = method.api, method.oneway
        sent = WireRequest.of(
            attempt,
            header_prefix=self._mesh.config.header_prefix,
            service=self._config.name,
            method=api,
            target=self._wire_name(attempt, method, run.variant),
            headers=tuple(self._theader_headers(attempt)) if self._header else (),
            thrift=ThriftCall(self._service, api, call_args, oneway),
        )
        reply = wire.exchange(sent)
        if isinstance(reply, WireFailure):
            return Broken(reply.kind, _WIRE_ERRORS[reply.kind](reply.message), reply.message)
        if oneway:
            return Responded(_Reply(), 200, {})
        result = reply.thrift_reply
        if isinstance(result, TApplicationException):
            return self._outcome(_Reply(error=result), attempt.route is _ENVOY)
        return self._outcome(_Reply(result=result), attempt.route is _ENVOY)

    def _decode_reply(self, reader: Callable[[bytes], Any], body: bytes, seqid: int, result_cls: Any) -> _Reply:
        if self._header:
            frame_seqid, _protocol_id, _flags, _headers, body = header_frame_parts(body)
            if frame_seqid != seqid:
                raise _StaleReply(f"THeader frame for call {frame_seqid}, expected {seqid}")
        # the whole frame is in ``body``: a reader that fails at any read past its end
        proto = reader(body)
        try:
            _name, mtype, rseqid = proto.read_message_begin()
        except Exception as exc:
            raise FrameError(f"cannot read the reply's message header: {exc}") from None
        if rseqid != seqid:
            raise _StaleReply(f"reply for call {rseqid}, expected {seqid}: a stale reply, discarded")
        try:
            if mtype == _EXCEPTION:
                error = TApplicationException()
                error.read(proto)
                proto.read_message_end()
                return _Reply(error=error)
            result = result_cls()
            result.read(proto)
            proto.read_message_end()
        except Exception as exc:
            raise FrameError(f"cannot decode the reply: {exc}") from None
        return _Reply(result)


#: the exception a socket would raise for each way an attempt can fail over a wire
_WIRE_ERRORS: Final[dict[Failure, type[OSError]]] = {
    Failure.CONNECT: ConnectionRefusedError,
    Failure.TIMEOUT: TimeoutError,
    Failure.RESET: ConnectionResetError,
}


class _StaleReply(Exception):
    pass
