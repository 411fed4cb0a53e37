"""requests: a ``Session`` subclass whose calls to registered services go through the mesh.

The seam is the adapter: :class:`MeshSession` hands requests for registered service names to a
:class:`MeshAdapter` (an ``HTTPAdapter``) and everything else to the usual adapters, untouched.
Per attempt the adapter rewrites the URL to the chosen proxy, sets ``Host`` and the policy
headers the core decided, and sends with ``HTTPAdapter.send``. Proxy environment variables are
ignored for mesh calls (the sidecar is local), and the ``timeout=`` argument of requests is
ignored for them too: the registry and :func:`mesh_client.call_options` decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError
from urllib3.util import parse_url

from ..core import Attempt, Broken, Fail, Failure, Responded, drive
from ..errors import MeshTimeoutError, as_mesh_error
from ..info import INFO_KEY
from ..mesh import Mesh
from ..telemetry import no_http_instrumentation

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

        def send_attempt(attempt: Attempt) -> Responded[requests.Response] | Broken:
            prepared = request.copy()
            prepared.url = attempt.base_url + path
            for name in [n for n in prepared.headers if attempt.drops(n)]:
                del prepared.headers[name]
            prepared.headers.update(attempt.set_headers)
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
