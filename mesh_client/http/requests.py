"""requests: a ``Session`` subclass whose calls to registered services go through the mesh.

The seam is the adapter: :class:`MeshSession` hands requests for registered service names to a
:class:`MeshAdapter` (an ``HTTPAdapter``) and everything else to the usual adapters, untouched.
Per attempt the adapter rewrites the URL to the chosen proxy, sets ``Host`` and the policy
headers the core decided, and sends with ``HTTPAdapter.send``. Proxy environment variables are
ignored for mesh calls (the sidecar is local), and the ``timeout=`` argument of requests is
ignored for them too: the registry and :func:`mesh_client.call_options` decide.
"""

from __future__ import annotations

import http.client
import io
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util import parse_url

from ..core import Attempt, Broken, Fail, Failure, Responded, drive
from ..errors import MeshTimeoutError, as_mesh_error
from ..info import INFO_KEY
from ..mesh import Mesh
from ..telemetry import no_http_instrumentation
from ..wire import Wire, WireFailure, WireRequest, current_wire

__all__ = ["MeshAdapter", "MeshSession"]


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
        return Broken(Failure.RESET, exc, type(reason).__name__ if reason is not None else "connection error")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Broken(Failure.RESET, exc, "response cut short")
    return None


class MeshAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` that sends requests for registered services through the mesh."""

    def __init__(self, mesh: Mesh, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mesh = mesh

    def send(  # noqa: PLR0917 - the signature of HTTPAdapter.send
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = parse_url(request.url or "")
        service = self.mesh.http_service(url.scheme or "http", url.host or "", url.port, bool(url.auth))
        if service is None:
            plain: requests.Response = super().send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
            return plain
        body = request.body
        run = self.mesh.start_call(
            service, request.method or "GET", replayable=body is None or isinstance(body, (bytes, str))
        )
        path = url.request_uri
        wire = current_wire()

        def send_attempt(attempt: Attempt) -> Responded[requests.Response] | Broken:
            prepared = request.copy()
            prepared.url = attempt.base_url + path
            for name in [n for n in prepared.headers if attempt.drops(n)]:
                del prepared.headers[name]
            prepared.headers.update(attempt.set_headers)
            if wire is not None:
                sent = self._over_wire(wire, prepared, attempt, service.name, path)
                if isinstance(sent, Broken):
                    return sent
                response = sent
            else:
                try:
                    response = super(MeshAdapter, self).send(
                        prepared, stream=stream, timeout=attempt.timeout, verify=verify, cert=cert, proxies={}
                    )
                except requests.RequestException as exc:
                    broken = _failure(exc)
                    if broken is None:
                        raise
                    return broken
            status, headers = response.status_code, response.headers
            body = response.content if run.wants_body(status, headers) else None
            return Responded(response, status, headers, body)

        result = drive(run, send_attempt, lambda response: response.close())
        if isinstance(result, Fail):
            native = result.cause
            if native is None:
                native_cls = (
                    requests.Timeout if issubclass(result.error, MeshTimeoutError) else requests.ConnectionError
                )
                native = native_cls(result.message, request=request)
            raise as_mesh_error(result.error, native, result.message, result.info) from result.cause
        response: requests.Response = result.response
        # the caller sees its own URL and request (redirects resolve against them, not the proxy)
        response.url = request.url or response.url
        response.request = request
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
    """

    def __init__(self, mesh: Mesh) -> None:
        super().__init__()
        self.mesh = mesh
        self.mesh_adapter = MeshAdapter(mesh)

    def _is_mesh_url(self, url: str) -> bool:
        # urlsplit is cached by the standard library: several times cheaper than parse_url here
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return False
        return host is not None and host.rstrip(".") in self.mesh.config.services

    def get_adapter(self, url: str) -> requests.adapters.BaseAdapter:
        if self._is_mesh_url(url):
            return self.mesh_adapter
        return super().get_adapter(url)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.url and self._is_mesh_url(request.url):
            # mesh_client makes the call's one CLIENT span; keep opentelemetry-instrumentation-requests
            # (which wraps Session.send) from adding a second one
            with no_http_instrumentation():
                response: requests.Response = super().send(request, **kwargs)
                return response
        plain: requests.Response = super().send(request, **kwargs)
        return plain

    def close(self) -> None:
        super().close()
        self.mesh_adapter.close()
