"""The handlers a test gives ``fake_mesh.add``: :class:`Handler` (which requests it answers, its
replies in turn) and :func:`resolve`, which turns a handler's reply (a :class:`Reply`, a callable, a
Thrift handler object) into the :class:`Reply` for one request; :func:`thrift_result` is the result
struct a Thrift server would send for it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..wire import WireRequest
from .calls import UpstreamRequest
from .replies import Reply

__all__ = ["Handler", "callable_name", "resolve", "thrift_args", "thrift_result"]


@dataclass
class Handler:
    """One ``fake_mesh.add``: the requests it answers (service, variant, method, path) and its
    replies, given in turn (the last repeats)."""

    service: str
    replies: tuple[Any, ...]
    method: str | None
    path: str | re.Pattern[str] | None
    variant: str | None = None
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper() and self.method != method:
            return False
        if self.path is None:
            return True
        if isinstance(self.path, re.Pattern):
            return self.path.fullmatch(path) is not None
        return self.path == path

    def next(self) -> Any:
        handler = self.replies[min(self.used, len(self.replies) - 1)]
        self.used += 1
        return handler

    def describe(self) -> str:
        where = self.service if self.variant is None else f"{self.service} (variant {self.variant})"
        if self.method:
            where += f" {self.method}"
        if self.path is not None:
            where += f" {self.path.pattern if isinstance(self.path, re.Pattern) else self.path}"
        replies = ", ".join(r.describe() if isinstance(r, Reply) else callable_name(r) for r in self.replies)
        return f"{where} -> {replies}"


def callable_name(obj: Any) -> str:
    """How a message names a handler function or object."""
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def resolve(spec: Any, upstream: UpstreamRequest, request: WireRequest) -> Reply:
    """The :class:`Reply` a handler gives for ``upstream``."""
    if isinstance(spec, Reply):
        return spec
    if request.thrift is not None and not callable(spec):  # a Thrift handler object
        method = getattr(spec, request.thrift.method, None)
        if method is None:
            raise AttributeError(
                f"the fake handler {spec!r} for {request.service!r} has no method {request.thrift.method!r}"
            )
        spec = lambda _req, m=method: m(**upstream.args)  # noqa: E731
    if request.thrift is not None:
        try:
            value = spec(upstream)
        except Exception as exc:
            return Reply(raises=exc)
        return value if isinstance(value, Reply) else Reply(value=value)
    value = spec(upstream)
    if not isinstance(value, Reply):
        raise TypeError(
            f"the fake handler {callable_name(spec)} for {request.service!r} returned {value!r}; "
            "return a mesh_client.testing.reply(...)"
        )
    return value


def thrift_args(args: Any) -> dict[str, Any]:
    spec = getattr(args, "thrift_spec", {}) or {}
    return {entry[1]: getattr(args, entry[1], None) for entry in spec.values()}


def thrift_result(request: WireRequest, spec: Reply) -> Any:
    """The result struct (or TApplicationException) a server would send for ``spec``."""
    from thriftpy2.thrift import TApplicationException

    assert request.thrift is not None
    result_cls = getattr(request.thrift.service, request.thrift.method + "_result")
    result = result_cls()
    error = spec.raises
    if error is None:
        if hasattr(result, "success"):
            result.success = spec.value
        return result
    if isinstance(error, TApplicationException):
        return error
    for entry in (result.thrift_spec or {}).values():
        if len(entry) > 2 and isinstance(entry[2], type) and isinstance(error, entry[2]):
            setattr(result, entry[1], error)
            return result
    # an undeclared exception: INTERNAL_ERROR, worded as mesh_client.thrift.server words it
    message = f"internal error in {request.thrift.method} ({type(error).__name__})"
    return TApplicationException(TApplicationException.INTERNAL_ERROR, message)
