"""requests: a ``Session`` subclass whose calls to registered services go through the mesh.

The seam is the adapter: :class:`MeshSession` hands requests for registered service names to a
:class:`MeshAdapter` (an ``HTTPAdapter``) and everything else to the usual adapters, untouched.
Per attempt the adapter rewrites the URL to the chosen proxy, sets ``Host`` and the policy
headers the core decided, and sends with ``HTTPAdapter.send``. Proxy environment variables are
ignored for mesh calls (the sidecar is local), and the ``timeout=`` argument of requests is
ignored for them too: the registry and :func:`mesh_client.call_options` decide. Unless the caller
streams (``stream=True``), the adapter reads the body within the attempt's time, instead of
``Session.send`` reading it afterwards with a timeout per socket read only (see
:mod:`mesh_client.http._body`).
"""

from __future__ import annotations

import datetime
import functools
import http.client
import io
import operator
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import DecodeError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util import parse_url

from .. import clock as _clock
from .._cache import BoundedCache
from .._compat.requests import attempt_copy, copy_headers, keep_body, lower_dict, note_on, take_from
from ..driving import drive
from ..errors import MeshTimeoutError, MeshTransportError, raise_failure
from ..fork import reset_in_child
from ..info import INFO_KEY
from ..registry import ServiceConfig
from ..shadow.answers import requests_answer
from ..steps import Attempt, Broken, Fail, Failure, Responded
from ..telemetry import instrumentation_loaded, no_http_instrumentation
from ..wire import Wire, WireFailure, WireRequest, current_wire
from ..wrapping import CallStarter
from . import requests_errors  # noqa: F401 - registers the combined exceptions raised here
from ._body import CHUNK, BodyTimer
from ._fork import forget_adapter_pools
from ._headers import kept_names, learn
from ._session_adapter import MeshFirstGetAdapter

__all__ = ["MeshAdapter", "MeshSession"]

#: URLs whose parsing each session or adapter remembers (then it starts over)
_CACHED_URLS: Final = 1024


#: a mesh response's ``elapsed`` as requests defines it ("between sending the first byte of the
#: request and finishing parsing the headers"), noted here by the adapter (Session.send sets
#: ``elapsed`` to the adapter's whole time, retries and the body read within the attempt included)
_ELAPSED: Final = "_mesh_client_elapsed"


def _native_error(
    error: type[MeshTransportError], message: str, *, request: requests.PreparedRequest
) -> requests.RequestException:
    """The requests exception for a failure the core decided (no exception was caught)."""
    native = requests.Timeout if issubclass(error, MeshTimeoutError) else requests.ConnectionError
    return native(message, request=request)


def _failure(exc: requests.RequestException) -> Broken | None:
    """Classify a requests transport error; None for errors that are not transport failures."""
    if isinstance(exc, requests.ConnectTimeout):
        return Broken(Failure.CONNECT, exc, "connect timeout")
    if isinstance(exc, requests.Timeout):
        return Broken(Failure.TIMEOUT, exc, "read timeout")
    if isinstance(exc, requests.ConnectionError):
        reason: Any = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        if isinstance(reason, NewConnectionError):
            return Broken(Failure.CONNECT, exc, "connection refused")
        if isinstance(reason, BaseException):  # urllib3's: its type says what happened
            return Broken(Failure.RESET, exc, type(reason).__name__)
        # raised with a message of its own (a mocking library's): the message, as it is
        return Broken(Failure.RESET, exc, str(exc) or "connection error")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Broken(Failure.RESET, exc, "response cut short")
    return None


def _read_body(response: requests.Response, timer: BodyTimer) -> Broken | None:
    """Read the whole body now, as ``Session.send`` would once the adapter returned, but each read
    within the time the attempt has left; the outcome when that fails, else None."""
    raw: Any = response.raw
    read = getattr(raw, "read1", None) or raw.read  # read1 (urllib3 >= 2.3): one socket read at most
    chunks = []
    try:
        while True:
            left = timer.left()
            if left <= 0:
                return timer.overrun(requests.ReadTimeout(timer.message(), request=response.request))
            # the socket's timeout bounds the next read; only while the response still holds the
            # connection (once complete it is back in the pool, maybe in another thread's hands)
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(left)
            chunk = read(CHUNK, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            timer.received += len(chunk)
    except ReadTimeoutError as exc:
        return timer.overrun(requests.ReadTimeout(exc, request=response.request))
    except ProtocolError as exc:
        return timer.cut(requests.exceptions.ChunkedEncodingError(exc, request=response.request))
    except DecodeError as exc:  # as Session.send would raise it
        raise requests.exceptions.ContentDecodingError(exc, request=response.request) from exc
    keep_body(response, chunks)
    return None


class MeshAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that sends requests for registered services through the mesh.

    It pickles as an ``HTTPAdapter`` does (settings, no pools), with its mesh (see
    :func:`mesh_client.mesh.mesh_for_registry`)."""

    __attrs__ = [*HTTPAdapter.__attrs__, "mesh"]  # noqa: RUF012 - requests' name for what pickles

    def __init__(self, mesh: CallStarter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mesh = mesh
        self._targets: BoundedCache[str, tuple[ServiceConfig | None, str]] = BoundedCache(_CACHED_URLS)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # (not in requests' type stubs)
        self._targets = BoundedCache(_CACHED_URLS)

    def _target(self, url: str) -> tuple[ServiceConfig | None, str]:
        """The registered service a prepared URL addresses (None: another host) and its path and
        query, parsed once per URL (``parse_url`` costs tens of µs): :meth:`send` reads
        ``_targets`` itself first, and calls this when the URL is not there. Raises
        :class:`~mesh_client.InvalidServiceURL` as :meth:`Mesh.http_service` does."""
        target = self._targets.get(url)
        if target is None:
            parts = parse_url(url)
            service = self.mesh.http_service(parts.scheme or "http", parts.host or "", parts.port, bool(parts.auth))
            target = self._targets.put(url, (service, parts.request_uri))
        return target

    def send(  # noqa: PLR0917 - the signature of HTTPAdapter.send
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        service, path = self._targets.get(url) or self._target(url)
        if service is None:
            plain: requests.Response = super().send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            return plain
        body = request.body
        # (positional: extra, replayable, source)
        run = self.mesh.start_call(
            service, request.method or "GET", None, body is None or isinstance(body, (bytes, str)), request
        )
        wire = current_wire()

        def send_attempt(attempt: Attempt) -> Responded[requests.Response] | Broken:
            # the caller's request, to the attempt's proxy, with the caller's headers that may go
            # out and then the attempt's (see mesh_client._compat.requests)
            known = kept_names(attempt)
            try:
                headers = copy_headers(request.headers, known, attempt.set_headers)
            except KeyError:  # a caller's header name not seen yet under these rules
                learn(known, attempt, list(request.headers))
                headers = copy_headers(request.headers, known, attempt.set_headers)
            prepared = attempt_copy(request)
            prepared.url = attempt.address.base_url + path
            prepared.headers = headers
            started = _clock.monotonic()
            if wire is not None:
                sent = self._over_wire(wire, prepared, attempt, service.name, path)
                if isinstance(sent, Broken):
                    return sent
                response = sent
                note_on(response, _ELAPSED, _clock.monotonic() - started)  # (see _ELAPSED)
            else:
                timer = None if stream else BodyTimer(attempt)
                try:
                    response = super(MeshAdapter, self).send(
                        prepared, stream=stream, timeout=attempt.timeout, verify=verify, cert=cert, proxies={}
                    )
                except requests.RequestException as exc:
                    broken = _failure(exc)
                    if broken is None:
                        raise
                    return broken
                note_on(response, _ELAPSED, _clock.monotonic() - started)
                # Session.send would read the body after this returns, bounded per socket read only
                cut = None if timer is None else _read_body(response, timer)
                if cut is not None:
                    response.close()
                    return cut
            response.request = prepared  # (the headers as sent; the caller's URL once answered)
            # (the core looks up lower-case names: a dictionary answers them at once)
            status, lower = response.status_code, lower_dict(response.headers)
            body = response.content if run.wants_body(status, lower) else None
            return Responded(response, status, lower, body)

        result = drive(run, send_attempt, _CLOSE)
        if run.shadow is not None:  # a copy down the other route, compared off this thread
            send = functools.partial(self.send, request, verify=verify, cert=cert)
            run.shadow.submit(result, None if stream else requests_answer, send, path)
        if isinstance(result, Fail):
            raise_failure(result, functools.partial(_native_error, request=request))
        response: requests.Response = result.response
        # the caller sees its own URL (redirects resolve against it, not the proxy's), and as
        # response.request the request as it went out to that URL: the answering attempt's
        # headers (Session.send follows redirects from the caller's request, not this one)
        response.url = request.url or response.url
        shown = attempt_copy(response.request)  # (the attempt's own headers, body and hooks)
        shown.url = response.url
        response.request = shown
        setattr(response, INFO_KEY, result.info)
        return response

    def _over_wire(
        self, wire: Wire, prepared: requests.PreparedRequest, attempt: Attempt, service: str, path: str
    ) -> requests.Response | Broken:
        """Send one attempt over an installed :class:`~mesh_client.wire.Wire` (a fake mesh)."""
        body: Any = prepared.body  # typed bytes | str | None, but may be a file or an iterator
        if body is None:
            data = b""
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode("utf-8")
        else:  # a file or an iterator: what requests would stream
            data = body.read() if hasattr(body, "read") else b"".join(bytes(c) for c in body)
            data = data.encode("utf-8") if isinstance(data, str) else data
        request = WireRequest.of(
            attempt,
            header_prefix=self.mesh.config.header_prefix,
            service=service,
            method=prepared.method or "GET",
            target=path,
            headers=tuple(prepared.headers.items()),
            body=data,
        )
        reply = wire.exchange(request)
        if isinstance(reply, WireFailure):
            return Broken(reply.kind, _WIRE_ERRORS[reply.kind](reply.message, request=prepared), reply.message)
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(reply.body),
            headers=urllib3.HTTPHeaderDict(reply.headers),
            status=reply.status,
            reason=reply.reason or http.client.responses.get(reply.status, ""),
            preload_content=False,
            decode_content=True,
            request_method=prepared.method,
        )
        return self.build_response(prepared, raw)


#: releases a response that is being retried (``response.close()``; one object for every call)
_CLOSE: Final = operator.methodcaller("close")

#: the requests exception for each way an attempt can fail over a wire
_WIRE_ERRORS: Final = {
    Failure.CONNECT: requests.ConnectionError,
    Failure.TIMEOUT: requests.ReadTimeout,
    Failure.RESET: requests.exceptions.ChunkedEncodingError,
}


class MeshSession(requests.Session):
    """A ``requests.Session`` whose calls to registered services go through the mesh.

    Everything else about the session (cookies, auth, hooks, redirects, ``raise_for_status``)
    works as usual; requests to any other host use the normal adapters, untouched.

    In a child forked from the process that made it, the session opens new connections for
    every call, mesh or not: the pools of its mesh adapter and of its ``HTTPAdapter`` mounts are
    dropped in the child (see :mod:`mesh_client.fork`). It pickles as a ``requests.Session``
    does, with its mesh: an unpickled session is bound to the open :class:`~mesh_client.Mesh`
    of the same registry in the process that unpickles it, or to one built from that registry
    (see :func:`mesh_client.mesh.mesh_for_registry`).
    """

    __attrs__ = [*requests.Session.__attrs__, "mesh", "mesh_adapter"]  # noqa: RUF012 - (as above)

    def __init__(self, mesh: CallStarter) -> None:
        super().__init__()
        self.mesh = mesh
        self.mesh_adapter = MeshAdapter(mesh)
        self._mesh_urls: BoundedCache[str, bool] = BoundedCache(_CACHED_URLS)
        reset_in_child(self, MeshSession._after_fork)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # (not in requests' type stubs)
        self._mesh_urls = BoundedCache(_CACHED_URLS)
        self.mesh.track_client(self)
        reset_in_child(self, MeshSession._after_fork)

    def _after_fork(self) -> None:
        forget_adapter_pools([self.mesh_adapter, *self.adapters.values()])

    def _is_mesh_url(self, url: str) -> bool:
        """Whether ``url`` addresses a registered service, worked out once per URL. Asked three
        times per request, so the askers read ``_mesh_urls`` first (True, False, or None: not
        known yet) and call this only for a URL not known yet."""
        known = self._mesh_urls.get(url)
        if known is None:
            try:
                host = urlsplit(url).hostname
            except ValueError:
                host = None
            known = self._mesh_urls.put(url, host is not None and host.rstrip(".") in self.mesh.config.services)
        return known

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        known = self._mesh_urls.get(url) if isinstance(url, str) else False
        if known or (known is None and self._is_mesh_url(url)):  # type: ignore[arg-type]  # (a str)
            # a mesh call is plain HTTP to a local proxy: environment proxies and CA bundles never
            # apply, and reading them (every environment variable, per call) is requests' costliest step
            return {
                "proxies": {},
                "stream": self.stream if stream is None else stream,
                "verify": self.verify if verify is None else verify,
                "cert": self.cert if cert is None else cert,
            }
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    #: mesh URLs to the mesh adapter, also when a mocking library sets ``get_adapter`` on the
    #: session (see mesh_client.http._session_adapter)
    get_adapter = MeshFirstGetAdapter()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = request.url
        known = self._mesh_urls.get(url) if url else False
        if known or (known is None and self._is_mesh_url(url)):  # type: ignore[arg-type]  # (a str)
            # mesh_client makes the call's one CLIENT span; keep opentelemetry-instrumentation-requests
            # (which wraps Session.send) from adding a second one
            response: requests.Response
            if instrumentation_loaded():
                with no_http_instrumentation():
                    response = super().send(request, **kwargs)
            else:  # (nothing instrumented: no with block to run)
                response = super().send(request, **kwargs)
            for each in (*response.history, response):  # r.elapsed as requests defines it
                headers_after = take_from(each, _ELAPSED)
                if headers_after is not None:
                    each.elapsed = datetime.timedelta(seconds=headers_after)
            return response
        plain: requests.Response = super().send(request, **kwargs)
        return plain

    def close(self) -> None:
        super().close()
        self.mesh_adapter.close()
